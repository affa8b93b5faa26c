"""Heal a removal with LoRA on held-out general text (`studies.adapters.train`, all linear modules of the smaller
model), and measure the smaller model's speed against the base.

Healing data are neutral sentences that neither chose the layers nor test the result: each becomes a (prompt,
completion) pair, its first words the prompt, the rest the completion (the loss is on the completion).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ...model.subject import Subject
from ..adapters import ALL_LINEAR, Target, TrainConfig, attach, completion_loss, train, train_tokenizer
from .quality import Probe, measure
from .skipping import smaller, tag


def heal_examples(texts: Sequence[str], prompt_words: int = 3) -> list[dict]:
    """(prompt, completion) pairs from sentences: the first `prompt_words` words, then the rest."""
    out = []
    for t in texts:
        w = t.split()
        if len(w) > prompt_words:
            out.append({"prompt": " ".join(w[:prompt_words]), "completion": " " + " ".join(w[prompt_words:])})
    return out


def heal(small: Subject, examples: Sequence[dict], P: dict, seed: int):
    """A LoRA (rank P['heal_r'], every linear module, every layer) trained on `examples` for P['heal_steps'] steps;
    cached by content under results/lora/ like chapter 05's adapters."""
    t = Target("heal", None, ALL_LINEAR, r=P["heal_r"], alpha=2.0 * P["heal_r"])
    tc = TrainConfig(steps=P["heal_steps"], lr=P["heal_lr"], batch=P["heal_batch"], seed=seed)
    return train(small, "general-text", list(examples), t, tc)


def recovery(subject: Subject, sets: pd.DataFrame, pr: Probe, train_ex: Sequence[dict], val_ex: Sequence[dict],
             P: dict, seeds: Sequence[int]) -> pd.DataFrame:
    """For each skip set (rows of `sets`: criterion, depth, layers): the unhealed smaller model, then one healed
    adapter per seed, each measured on the probe (top-1/top-5/KL, accuracy, perplexity) and on held-out healing
    text (`heal_loss`); a `base` row gives the unchanged model's numbers."""
    tok = train_tokenizer(subject)
    rows = [{"criterion": "base", "depth": 0, "skipped": "", "state": "base", "seed": -1,
             **_scalars(measure(subject.model, subject, pr)), "heal_loss": completion_loss(subject.model, tok, val_ex)}]
    done: dict[str, list[dict]] = {}  # two criteria may pick the same set: measure it once
    for r in sets.itertuples():
        head = {"criterion": r.criterion, "depth": r.depth, "skipped": tag(r.layers)}
        if head["skipped"] in done:
            rows += [{**x, **head} for x in done[head["skipped"]]]
            continue
        start = len(rows)
        small = smaller(subject, r.layers)
        rows.append({**head, "state": "unhealed", "seed": -1, **_scalars(measure(small.model, small, pr)),
                     "heal_loss": completion_loss(small.model, tok, val_ex)})
        for seed in seeds:
            ad = heal(small, train_ex, P, seed)
            with attach(small, ad) as pm:
                rows.append({**head, "state": "healed", "seed": seed, **_scalars(measure(pm, small, pr)),
                             "heal_loss": completion_loss(pm, tok, val_ex), "train_seconds": ad.seconds})
        done[head["skipped"]] = rows[start:]
        del small
    return pd.DataFrame(rows)


def _scalars(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, float)} | {"per_prompt_top5": m["per_prompt"].top5.tolist()}


def restored(rec: pd.DataFrame, metric: str = "top5") -> pd.DataFrame:
    """Per skip set: base, unhealed and healed (mean over seeds) values of a metric and the fraction of the gap
    healing closed, (healed - unhealed) / (base - unhealed); `gain_by_seed` lists healed - unhealed per seed."""
    base = float(rec.loc[rec.state == "base", metric].iloc[0])
    out = []
    for (crit, depth, sk), g in rec[rec.state != "base"].groupby(["criterion", "depth", "skipped"], sort=False):
        un = float(g.loc[g.state == "unhealed", metric].iloc[0])
        he = g.loc[g.state == "healed", metric].to_numpy()
        gap = base - un
        out.append({"criterion": crit, "depth": depth, "skipped": sk, "metric": metric, "base": base, "unhealed": un,
                    "healed": float(he.mean()) if he.size else np.nan,
                    "closed": float((he.mean() - un) / gap) if he.size and abs(gap) > 1e-12 else np.nan,
                    "gain_by_seed": [round(float(x - un), 4) for x in he]})
    return pd.DataFrame(out)


@torch.inference_mode()
def tokens_per_second(model: torch.nn.Module, subject: Subject, prompts: Sequence[str], new_tokens: int) -> float:
    """Generated tokens per second of one greedy generate call (exactly `new_tokens` per prompt)."""
    enc = subject.encode(list(prompts))
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    model.generate(**{k: v.to(dev) for k, v in enc.items()}, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=subject.tokenizer.pad_token_id)
    return len(prompts) * new_tokens / (time.perf_counter() - t0)


def speedup(subject: Subject, layers: Sequence[int], prompts: Sequence[str], new_tokens: int, reps: int = 3) -> dict:
    """Generation speed of the smaller model vs the base in one run (alternating, median of `reps`), and parameters."""
    small = smaller(subject, layers)
    tokens_per_second(subject.model, subject, prompts[:1], 2)  # warm-up
    base, fast = [], []
    for _ in range(reps):
        base.append(tokens_per_second(subject.model, subject, prompts, new_tokens))
        fast.append(tokens_per_second(small.model, small, prompts, new_tokens))
    b, f = float(np.median(base)), float(np.median(fast))
    return {"skipped": tag(layers), "layers_kept": small.arch.n_layers, "params_base": subject.n_params,
            "params_small": small.n_params, "tok_s_base": b, "tok_s_small": f, "speedup": f / b,
            "batch": len(prompts), "new_tokens": new_tokens, "reps": reps}
