"""The training grid: train and evaluate (labels, target, train config) runs into tidy rows, optionally sharing the
work with a helper process that trains the grid from the other end into the same adapter cache; mean ± sd."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...model.subject import Subject, load
from ...progress import bar as progress_bar
from . import evaluation
from .data import TrainConfig
from .evaluation import EvalSet, val_loss
from .targeting import Target
from .training import Adapter, train


def summarize(df: pd.DataFrame, by: Sequence[str], cols: Sequence[str] = ("n_trainable", "train_loss", "eval_loss",
              "exact_match", "drift")) -> pd.DataFrame:
    """mean ± sd over seeds, one row per group."""
    g = df.groupby(list(by), sort=False)[list(cols)]
    out = g.mean().join(g.std(ddof=1), rsuffix="_sd").join(g.size().rename("n_seeds"))
    return out.reset_index()


def fmt_pm(df: pd.DataFrame, cols: Sequence[str] = ("train_loss", "eval_loss", "exact_match", "drift"),
           digits: int = 3) -> pd.DataFrame:
    """Replace `c` and `c_sd` columns by 'mean ± sd' strings (for the report)."""
    out = df.copy()
    for c in cols:
        out[c] = [f"{m:.{digits}f} ± {s:.{digits}f}" if pd.notna(s) else f"{m:.{digits}f}"
                  for m, s in zip(out[c], out[f"{c}_sd"], strict=True)]
        out = out.drop(columns=f"{c}_sd")
    if "n_trainable_sd" in out:
        out = out.drop(columns="n_trainable_sd")
    return out


def split_threads(n: int) -> tuple[int, int]:
    """(this process's, the helper's) compute threads when two processes share `n`: each at least 1, n in all
    where n >= 2 (a process whose OpenMP team outnumbers its free cores waits at every barrier: oversubscribed, a
    2-thread kernel beside a 1-thread helper on 2 cores ran its trainings ~7x slower)."""
    return max(1, n - n // 2), max(1, n // 2)


def start_helper(subject: Subject, runs: Sequence, data: dict[str, list[dict]], threads: int = 1,
                 evalsets: dict[str, EvalSet] | None = None, score: str = "eval") -> tuple[subprocess.Popen, str] | None:
    """Start a second process that trains `runs` in reverse order into the shared adapter cache (it reloads the
    model by name and gives up unless its fingerprint matches), with `threads` compute threads, and scores each run
    it trains (`score`, cached beside the adapter) where `evalsets` can be sent to it (their exact-match function
    pickles); (process, job file), or None where that cannot work."""
    todo = [(t, tc, labels["family"], labels.get("checkpoints", ())) for labels, t, tc in runs if t.strategy != "none"]
    if len(todo) < 2:
        return None
    fams = {fam for _, _, fam, _ in todo}
    try:
        sets = pickle.dumps({f: evalsets[f] for f in fams}) if evalsets is not None else None
    except (pickle.PicklingError, AttributeError, TypeError, KeyError):
        sets = None  # e.g. a lambda as exact match: the helper only trains, this process scores everything
    fd, job = tempfile.mkstemp(prefix="atlas-lora-grid-", suffix=".pkl")
    with os.fdopen(fd, "wb") as f:
        pickle.dump({"model": subject.name, "dtype": str(subject.dtype).replace("torch.", ""),
                     "fingerprint": subject.fingerprint, "runs": todo[::-1],
                     "data": {fam: data[fam] for fam in fams}, "evalsets": sets, "score": score}, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "atlas_core.studies.adapters", job], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), job


def helper_main(job: str) -> None:
    """The helper process (`python -m atlas_core.studies.adapters JOB`): train the job's runs into the cache and
    score each one (when the job carries its eval sets), as `_grid` would."""
    spec = pickle.loads(Path(job).read_bytes())
    subject = load(spec["model"], dtype=spec["dtype"])
    if subject.fingerprint != spec["fingerprint"]:
        return
    sets = pickle.loads(spec["evalsets"]) if spec.get("evalsets") else None
    for t, tc, fam, ck in spec["runs"]:
        ad = train(subject, fam, spec["data"][fam], t, tc, checkpoints=ck)
        if sets is not None:
            score_run(subject, sets[fam], ad, spec["score"])


def score_run(subject: Subject, ev: EvalSet, adapter: Adapter, how: str = "eval") -> dict:
    """A trained run's scores: `evaluate` on the held-out eval set ("eval") or the validation loss ("val");
    both are cached beside the adapter."""
    return {"val_loss": val_loss(subject, ev, adapter)} if how == "val" else evaluation.evaluate(subject, ev, adapter)


def run_grid(subject: Subject, runs: Sequence[tuple[dict, Target, TrainConfig]], data: dict[str, list[dict]],
             evalsets: dict[str, EvalSet], progress: bool = True, workers: int = 1, score: str = "eval") -> pd.DataFrame:
    """Train + evaluate each (labels, target, train config); labels must hold 'family' and may hold 'checkpoints'
    (steps to save). Tidy rows out. score="eval": `evaluate` (held-out eval set); "val": `val_loss` only.

    workers=2 starts a helper process that trains the grid from the other end into the same adapter cache
    (so two cores share it); this process meets it in the middle, evaluates everything, then stops it. While the
    helper runs, the two split this process's compute threads (`split_threads`), and this one gets its own back."""
    own = torch.get_num_threads()
    mine, theirs = split_threads(own)
    helper = start_helper(subject, runs, data, theirs, evalsets, score) if workers > 1 else None
    if helper is not None:
        torch.set_num_threads(mine)
    try:
        rows = _grid(subject, runs, data, evalsets, progress, score)
    finally:
        torch.set_num_threads(own)
        if helper is not None:
            proc, job = helper
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # interrupts a duplicate training; its temp directory is removed
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            os.unlink(job)
    return rows


def _grid(subject, runs, data, evalsets, progress, score="eval") -> pd.DataFrame:
    rows = []
    bar = progress_bar(len(runs), "training grid", unit="run", enabled=progress)  # runs/s and ETA, to the log
    for labels, t, tc in runs:
        fam, ev = labels["family"], evalsets[labels["family"]]
        if t.strategy == "none":
            res, n, tl, secs, cached = evaluation.evaluate(subject, ev), 0, np.nan, 0.0, True
        else:
            ad = train(subject, fam, data[fam], t, tc, labels.get("checkpoints", ()), progress=progress)
            res = score_run(subject, ev, ad, score)
            n, tl, secs, cached = ad.n_trainable, ad.final_loss, ad.seconds, ad.cached
        rows.append({**{k: v for k, v in labels.items() if k != "checkpoints"}, "strategy": t.strategy,
                     "basis": t.basis, "layers": "all" if t.layers is None else list(t.layers),
                     "modules": "+".join(t.modules), "r": t.r, "optimizer": tc.optimizer, "lr": tc.lr, "seed": tc.seed,
                     "steps": tc.steps, "n_trainable": n, "train_loss": tl, "train_seconds": secs, "cached": cached,
                     **{k: v for k, v in res.items() if k != "samples"}})
        if progress:
            r = rows[-1]
            got = (f"val_loss {r['val_loss']:.3f}" if score == "val" else
                   f"eval_loss {r['eval_loss']:.3f} EM {r['exact_match']:.2f} drift {r['drift']:.4f}")
            print(f"{fam:15s} {t.strategy:13s} lr {tc.lr:.0e} seed {tc.seed} params {n:>9,} {got} "
                  f"({secs:.0f}s train{', cached' if cached else ''})", flush=True)
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows)
