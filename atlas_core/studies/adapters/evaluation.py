"""Evaluate an adapter: eval loss (completion tokens only), exact match of greedy completions
(`atlas_core.tasks.exact_match`) and drift, the mean KL(base || adapted) of the next token at the last prompt
position on other families' prompts. Last-position log-probs come from the engine's forward (`last_logits`, which
counts positions from each row's first real token), so left padding does not shift an absolute-position model.
Results are cached beside the adapter; validation loss (`val_loss`) chooses hyperparameters, never the eval set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...engine.batch import last_logits
from ...model.subject import Subject
from ...paths import read_json, write_json_atomic
from .data import collate, completion_logits, data_hash, train_tokenizer
from .training import Adapter, attach, cache_key


@torch.no_grad()
def completion_loss(model, tok, examples: Sequence[dict], max_len: int | None = None, batch: int = 16,
                    per_example: bool = False) -> float | np.ndarray:
    """Mean next-token loss over completion tokens (token-weighted), or one mean per example."""
    tot, n, each = 0.0, 0, []
    for i in range(0, len(examples), batch):
        b = collate(tok, examples[i:i + batch], max_len)
        logits, targets, rows = completion_logits(model, b)
        lp = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        tot += float(lp.sum())
        n += int(lp.numel())
        rows_n = len(b["labels"])
        sums = torch.zeros(rows_n, dtype=lp.dtype, device=lp.device).index_add_(0, rows, lp)
        each.extend((sums / torch.bincount(rows, minlength=rows_n).clamp_min(1)).tolist())
    return np.asarray(each) if per_example else tot / max(n, 1)


@torch.no_grad()
def generate(subject: Subject, prompts: Sequence[str], max_new_tokens: int, batch: int = 16) -> list[str]:
    """Greedy completions of the subject as it is (an attached adapter included), batched with left padding (the
    model's own `generate` derives positions from the mask), stopping at the tokenizer's EOS: the token training
    appends to every completion, which a model's generation config may not name."""
    tok = subject.tokenizer
    out: list[str] = []
    for i in range(0, len(prompts), batch):
        enc = subject.encode(list(prompts[i:i + batch]))
        g = subject.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.extend(tok.batch_decode(g[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


@torch.no_grad()
def last_logprobs(subject: Subject, prompts: Sequence[str], batch: int = 16) -> torch.Tensor:
    """Log-probabilities of the next token at the last prompt position of the subject as it is (an attached adapter
    included), by the engine's forward: left padding, positions counted from each row's first real token, so a
    batch gives each prompt's own values even on an absolute-position model."""
    out = []
    for i in range(0, len(prompts), batch):
        enc = subject.encode(list(prompts[i:i + batch]))
        out.append(torch.log_softmax(last_logits(subject, enc["input_ids"], enc["attention_mask"]), -1))
    return torch.cat(out)


def kl_rows(base_lp: torch.Tensor, lp: torch.Tensor) -> np.ndarray:
    """KL(base || adapted) per row."""
    return (base_lp.exp() * (base_lp - lp)).sum(-1).clamp_min(0).double().numpy()


@dataclass
class EvalSet:
    """What an evaluation runs on: eval examples of the trained family, drift prompts of the others; `val`: the
    validation examples that choose hyperparameters (`val_loss`), never the eval ones."""

    family: str
    examples: list[dict]
    drift_prompts: list[str]
    exact_match: Callable[[str, dict], bool]
    max_new_tokens: int
    max_len: int | None = None
    val: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Cache key of what the evaluation reads (its results are cached beside the adapter under it)."""
        return cache_key(data_hash(self.examples), self.drift_prompts, self.max_new_tokens, self.max_len)


_BASE_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def evaluate(subject: Subject, ev: EvalSet, adapter: Adapter | None = None) -> dict:
    """eval loss, exact match, drift (mean KL base||adapted on other families); cached beside the adapter."""
    cache = (adapter.path / f"eval-{ev.key}.json") if adapter is not None else None
    if cache is not None and (hit := read_json(cache)):
        return hit
    ck = (subject.fingerprint, cache_key(ev.drift_prompts))
    if ck not in _BASE_CACHE:
        _BASE_CACHE[ck] = last_logprobs(subject, ev.drift_prompts)
    t0 = time.perf_counter()
    if adapter is None:
        res = _measure(subject, ev, _BASE_CACHE[ck])
    else:
        with attach(subject, adapter):
            res = _measure(subject, ev, _BASE_CACHE[ck])
    res["eval_seconds"] = time.perf_counter() - t0
    if cache is not None:
        write_json_atomic(cache, res)
    return res


def _measure(subject: Subject, ev: EvalSet, base_lp: torch.Tensor) -> dict:
    """Eval loss, exact match and drift (against the base model's `base_lp`) of the subject as it is now."""
    texts = generate(subject, [e["prompt"] for e in ev.examples], ev.max_new_tokens)
    em = [bool(ev.exact_match(t, e)) for t, e in zip(texts, ev.examples, strict=True)]
    kl = kl_rows(base_lp, last_logprobs(subject, ev.drift_prompts))
    return {"eval_loss": completion_loss(subject.model, train_tokenizer(subject), ev.examples, ev.max_len),
            "exact_match": float(np.mean(em)), "drift": float(kl.mean()), "n_eval": len(em), "n_drift": len(kl),
            "samples": texts[:3]}


def val_loss(subject: Subject, ev: EvalSet, adapter: Adapter) -> float:
    """Completion loss on the validation examples (`ev.val`, not the eval ones); cached beside the adapter."""
    if not ev.val:
        raise ValueError(f"{ev.family}: no validation examples to choose on")
    cache = adapter.path / f"val-{cache_key(data_hash(ev.val), ev.max_len)}.json"
    if (hit := read_json(cache)):
        return hit["val_loss"]
    with attach(subject, adapter) as pm:
        loss = completion_loss(pm, train_tokenizer(subject), ev.val, ev.max_len)
    write_json_atomic(cache, {"val_loss": loss, "n_val": len(ev.val)})
    return loss
