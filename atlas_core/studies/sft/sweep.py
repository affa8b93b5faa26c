"""Chapter 06's runs: the sweep grid (one dimension at a time around a base configuration) and the measurement of
every run: train and validation / held-out loss, drift, trainable parameters, time and peak memory per step, and
the judged quality of greedy answers to validation and held-out prompts.

Training is `adapters.train` (its cache under ``results/lora/``, deterministic given the seed); a run's peak memory
is measured while it trains (the CUDA allocator's peak on a GPU; on a CPU the peak resident set sampled every
5 ms, minus the resident set before training, freed heap handed back first) and kept beside the adapter. `measure` generates once per run and
reads eval loss, validation loss and drift with the adapters' own functions (`completion_loss`, `last_logprobs`,
`kl_rows`, `generate`); its results are cached beside the adapter (the base model's under ``results/sft/``).
Drift = mean KL(base || adapted) of the next token at the last position of neutral sentences (`tasks.neutral`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...evidence.judges import Judge
from ...model.subject import Subject
from ...paths import content_key, read_json, results_dir, write_json_atomic
from ..adapters import (
    ALL_LINEAR,
    MODULE_SETS,
    Adapter,
    EvalSet,
    Target,
    TrainConfig,
    attach,
    completion_loss,
    data_hash,
    generate,
    kl_rows,
    last_logprobs,
    train,
    train_tokenizer,
)

DIMENSIONS = ("dataset", "optimizer", "rank", "modules", "lr", "steps", "volume")
MODULES = ("hub", "o", "attn", "mlp", "all-linear")  # "hub": every linear module of the layers around the atlas hub
BASE_LP: dict[tuple[str, str], torch.Tensor] = {}


@contextmanager
def peak_memory() -> Iterator[dict]:
    """Yields a dict that holds, after the block, `peak_mb`: the CUDA allocator's peak when CUDA is in use, else the
    peak resident set sampled every 5 ms minus the resident set at entry, after handing freed heap pages back to
    the OS (glibc `malloc_trim`; NaN where /proc is missing)."""
    out = {"peak_mb": float("nan")}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        yield out
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return

    def rss() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return float("nan")

    gc.collect()
    try:  # hand freed heap pages back to the OS first, so the resident set before training is what is in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    start, peak, stop = rss(), [rss()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], rss())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield out
    finally:
        stop.set()
        th.join()
        out["peak_mb"] = max(peak[0], rss()) - start


def sweep_configs(P: dict) -> list[dict]:
    """The base configuration (`P["base"]`) and, for each dimension of `P["sweep"]`, one configuration per other
    value with everything else at base: {config, dim, value, dataset, volume, optimizer, rank, modules, lr, steps}.
    `dim` is "base" for the base row; each dimension's effect compares its rows with the base row."""
    base = dict(P["base"])
    out = [{"config": "base", "dim": "base", "value": "base", **base}]
    for dim in DIMENSIONS:
        for v in P["sweep"].get(dim, []):
            if v != base[dim]:
                out.append({"config": f"{dim}={v}", "dim": dim, "value": str(v), **{**base, dim: v}})
    return out


def target_of(modules: str, r: int, hub_layers: Sequence[int]) -> Target:
    """The LoRA target of a sweep `modules` value (`MODULES`) at rank r (alpha = 2r)."""
    if modules == "hub":
        return Target("sft-hub", tuple(hub_layers), ALL_LINEAR, r, 2.0 * r)
    mods = ALL_LINEAR if modules == "all-linear" else MODULE_SETS[modules]
    return Target(f"sft-{modules}", None, mods, r, 2.0 * r)


def sweep_runs(configs: Sequence[dict], seeds: Sequence[int], hub_layers: Sequence[int], P: dict,
               batch: int) -> list[tuple[dict, Target, TrainConfig]]:
    """Every configuration x seed as (labels, target, train config); labels' family is `dataset@volume` (the key of
    its training data), plus config, dim, value and seed."""
    return [({"family": f"{c['dataset']}@{c['volume']}", "config": c["config"], "dim": c["dim"], "value": c["value"]},
             target_of(c["modules"], int(c["rank"]), hub_layers),
             TrainConfig(int(c["steps"]), float(c["lr"]), batch, c["optimizer"], int(s), P.get("max_len")))
            for c in configs for s in seeds]


def hub_layers(hub: int, n_layers: int, k: int) -> tuple[int, ...]:
    """The k layers nearest the hub (ties to the later layer), sorted."""
    return tuple(sorted(sorted(range(n_layers), key=lambda i: (abs(i - hub), -i))[:k]))


@dataclass
class Task:
    """What a run is measured on: the eval set (held-out examples, drift prompts, generation cap, max length; its
    `val` are the validation examples) and the judge's view of each example (question text and reference)."""

    ev: EvalSet

    @property
    def key(self) -> str:
        """Cache key of everything `measure` reads."""
        return content_key(self.ev.key, data_hash(self.ev.val), [e.get("question", e["prompt"]) for e in self.items],
                           digest_size=8)

    @property
    def items(self) -> list[dict]:
        return list(self.ev.val) + list(self.ev.examples)


def measure(subject: Subject, task: Task, adapter: Adapter | None = None) -> dict:
    """Greedy answers to the validation and eval prompts, eval loss, validation loss and drift of the subject with
    the adapter attached (None: the base model); cached beside the adapter (the base's under results/sft/)."""
    ev = task.ev
    cache = (adapter.path if adapter is not None else results_dir() / "sft" / "base" / subject.fingerprint[:12]) \
        / f"sft-{task.key}.json"
    if (hit := read_json(cache)):
        return hit
    ck = (subject.fingerprint, content_key(ev.drift_prompts))
    if ck not in BASE_LP:
        BASE_LP[ck] = last_logprobs(subject, ev.drift_prompts)
    t0 = time.perf_counter()
    tok = train_tokenizer(subject)
    if adapter is None:
        res = _measure(subject, task, subject.model, tok, BASE_LP[ck])
    else:
        with attach(subject, adapter) as pm:
            res = _measure(subject, task, pm, tok, BASE_LP[ck])
    res["measure_seconds"] = time.perf_counter() - t0
    write_json_atomic(cache, res)
    return res


def _measure(subject: Subject, task: Task, model, tok, base_lp: torch.Tensor) -> dict:
    ev = task.ev
    texts = generate(subject, [e["prompt"] for e in task.items], ev.max_new_tokens)
    kl = kl_rows(base_lp, last_logprobs(subject, ev.drift_prompts))
    return {"eval_loss": completion_loss(model, tok, ev.examples, ev.max_len),
            "val_loss": completion_loss(model, tok, ev.val, ev.max_len) if ev.val else float("nan"),
            "drift": float(kl.mean()), "val_answers": texts[:len(ev.val)], "eval_answers": texts[len(ev.val):]}


def judged(judge: Judge, task: Task, answers: Sequence[str], split: str) -> list[float]:
    """The judge's scores of answers to a split ("val" or "eval") of the task: the question each example shows a
    judge (its format-neutral `question`, else its prompt) and its reference."""
    exs = task.ev.val if split == "val" else task.ev.examples
    return judge.score_batch([(e.get("question", e["prompt"]), a, e["reference"])
                              for e, a in zip(exs, answers, strict=True)])


def train_record(ad: Adapter, mem: dict) -> dict:
    """Peak memory and seconds per step of a training: measured now (kept beside the adapter) or, for a cached
    adapter, read back (NaN peak memory where it was trained elsewhere)."""
    path = ad.path / "sft-train.json"
    if not ad.cached:
        write_json_atomic(path, {"peak_mb": mem["peak_mb"]})
    rec = read_json(path)
    return {"peak_mb": float(rec.get("peak_mb", np.nan)), "s_per_step": ad.seconds / max(ad.train.steps, 1)}


def run(subject: Subject, runs: Sequence[tuple[dict, Target, TrainConfig]], data: dict[str, list[dict]],
        tasks: dict[str, Task], judges: dict[str, Judge], progress: bool = False) -> pd.DataFrame:
    """Train (or reuse) and measure each (labels, target, train config); a target with strategy "none" is the base
    model. One row per run: labels, target, training, losses, drift, time and memory, and per judge its mean
    validation and eval score (`<judge>_val`, `<judge>_eval`) and per-prompt eval scores (`<judge>_scores`)."""
    rows = []
    for labels, t, tc in runs:
        fam = labels["family"]
        ad, rec = None, {"peak_mb": np.nan, "s_per_step": np.nan}
        if t.strategy != "none":
            with peak_memory() as mem:
                ad = train(subject, fam, data[fam], t, tc)
            rec = train_record(ad, mem)
        m = measure(subject, tasks[fam], ad)
        row = {**labels, "strategy": t.strategy, "modules": "+".join(t.modules),
               "layers": "all" if t.layers is None else "-".join(map(str, t.layers)), "r": t.r,
               "optimizer": tc.optimizer, "lr": tc.lr, "steps": tc.steps, "seed": tc.seed,
               "n_train": len(data.get(fam, [])), "n_trainable": ad.n_trainable if ad else 0,
               "train_loss": ad.final_loss if ad else np.nan, **rec,
               **{k: m[k] for k in ("eval_loss", "val_loss", "drift")}, "cached": bool(ad.cached) if ad else True}
        for name, j in judges.items():
            ev_s, val_s = judged(j, tasks[fam], m["eval_answers"], "eval"), judged(j, tasks[fam], m["val_answers"], "val")
            row |= {f"{name}_val": float(np.nanmean(val_s)) if len(val_s) else np.nan,
                    f"{name}_eval": float(np.nanmean(ev_s)), f"{name}_scores": ev_s}
        row["sample"] = m["eval_answers"][0] if m["eval_answers"] else ""
        rows.append(row)
        if progress:
            print(f"{fam:14s} {labels.get('config', labels.get('format', '')):18s} seed {tc.seed} "
                  f"eval_loss {row['eval_loss']:.3f} drift {row['drift']:.4f}", flush=True)
    return pd.DataFrame(rows)
