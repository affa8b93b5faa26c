"""How close a changed model stays to the base: over the base's own greedy continuation (teacher-forced, not only
the next token), top-1 agreement, top-5 overlap and KL(base || changed) at every continuation position; task
accuracy per family (the answer token ranked first at the last prompt position); perplexity on held-out text.

Every forward here is a plain forward of `model` (the base, a smaller model, a quantized or adapted one) with
left padding and positions counted from each row's first real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ... import tasks
from ...engine.tracing import position_ids
from ...model.subject import Subject


@torch.inference_mode()
def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    dev = next(model.parameters()).device
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids(mask).to(dev),
                use_cache=False)
    return out.logits.float().cpu()


@dataclass
class Reference:
    """The base model's greedy continuations (left-padded prompt + continuation ids) and its log-probs at the
    positions that predict each continuation token (`valid`: up to and including the first EOS)."""

    ids: torch.Tensor
    mask: torch.Tensor
    n_prompt: int
    valid: torch.Tensor
    logprobs: torch.Tensor

    def positions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.n_prompt - 1:-1]


def reference(subject: Subject, prompts: Sequence[str], max_new_tokens: int) -> Reference:
    """Greedy continuations of the base model and its own log-probs along them."""
    enc = subject.encode(list(prompts))
    tok = subject.tokenizer
    with torch.inference_mode():
        g = subject.model.generate(**enc, max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=tok.pad_token_id).cpu()
    P = enc["input_ids"].shape[1]
    new = g[:, P:]
    eos = (new == tok.eos_token_id).int()
    valid = (eos.cumsum(1) - eos) == 0  # up to and including the first EOS
    mask = torch.cat([enc["attention_mask"].cpu(), torch.ones_like(new)], 1)
    ref = Reference(g, mask, P, valid, torch.empty(0))
    ref.logprobs = torch.log_softmax(ref.positions(_logits(subject.model, g, mask)), -1)
    return ref


def agreement(model: torch.nn.Module, ref: Reference, k: int = 5) -> pd.DataFrame:
    """Per prompt: top-1 agreement, top-k overlap and KL(base || model), means over the continuation positions,
    plus `next_top1`/`next_top5` at the first position only (the next token after the prompt)."""
    lp = torch.log_softmax(ref.positions(_logits(model, ref.ids, ref.mask)), -1)
    lq = ref.logprobs
    kl = (lq.exp() * (lq - lp)).sum(-1).clamp_min(0)
    top1 = (lp.argmax(-1) == lq.argmax(-1)).float()
    a, b = lp.topk(k, -1).indices, lq.topk(k, -1).indices
    topk = (a[..., :, None] == b[..., None, :]).any(-1).float().mean(-1)
    v = ref.valid.float()
    mean = lambda x: ((x * v).sum(1) / v.sum(1).clamp_min(1)).double().numpy()  # noqa: E731
    return pd.DataFrame({"prompt": range(len(v)), "top1": mean(top1), "top5": mean(topk), "kl": mean(kl),
                         "next_top1": top1[:, 0].double().numpy(), "next_top5": topk[:, 0].double().numpy()})


def task_items(subject: Subject, families: Sequence[str], n: int, seed: int) -> list:
    """`n` validated short synthetic items per family (sampled with `seed`)."""
    pool, _ = tasks.validate([it for f in families for it in tasks.load_items(f)], subject.tokenizer)
    return [it for f in families for it in tasks.sample([i for i in pool if i.family == f], n, seed)]


def task_accuracy(model: torch.nn.Module, subject: Subject, items: Sequence, batch: int = 32) -> pd.Series:
    """Per family: the fraction of items whose answer token is the model's top-1 next token."""
    hits, fams = [], []
    for s in range(0, len(items), batch):
        its = items[s:s + batch]
        enc = subject.encode([it.prompt for it in its])
        top = _logits(model, enc["input_ids"].cpu(), enc["attention_mask"].cpu())[:, -1].argmax(-1)
        hits += (top == torch.tensor([it.answer_id for it in its])).tolist()
        fams += [it.family for it in its]
    return pd.Series(hits, index=fams, dtype=float).groupby(level=0).mean().rename("accuracy")


def perplexity(model: torch.nn.Module, subject: Subject, texts: Sequence[str], batch: int = 32) -> float:
    """exp(mean next-token NLL) over every real token but each text's first (token-weighted)."""
    tot, cnt = 0.0, 0
    for s in range(0, len(texts), batch):
        enc = subject.encode(list(texts[s:s + batch]))
        ids, mask = enc["input_ids"].cpu(), enc["attention_mask"].cpu()
        lp = torch.log_softmax(_logits(model, ids, mask)[:, :-1], -1)
        nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
        m = (mask[:, 1:] * mask[:, :-1]).float()
        tot += float((nll * m).sum())
        cnt += int(m.sum())
    return float(np.exp(tot / max(cnt, 1)))


@dataclass
class Probe:
    """What every configuration is measured on (all held out from selection): the base's continuations, task
    items and held-out text, with the base model's own accuracy and perplexity."""

    ref: Reference
    items: list
    texts: list[str]
    base_accuracy: pd.Series
    base_ppl: float


def probe(subject: Subject, prompts: Sequence[str], items: Sequence, texts: Sequence[str], max_new_tokens: int) -> Probe:
    """Measure the base model once on the test prompts, items and texts."""
    return Probe(reference(subject, prompts, max_new_tokens), list(items), list(texts),
                 task_accuracy(subject.model, subject, items), perplexity(subject.model, subject, texts))


def measure(model: torch.nn.Module, subject: Subject, pr: Probe) -> dict:
    """One configuration's quality: means of `agreement`, accuracy (mean over families) and perplexity, with the
    per-prompt table under `per_prompt`."""
    ag = agreement(model, pr.ref)
    acc = task_accuracy(model, subject, pr.items)
    return {"top1": float(ag.top1.mean()), "top5": float(ag.top5.mean()), "kl": float(ag.kl.mean()),
            "next_top5": float(ag.next_top5.mean()), "accuracy": float(acc.mean()),
            "ppl": perplexity(model, subject, pr.texts), "per_prompt": ag, "per_family": acc}
