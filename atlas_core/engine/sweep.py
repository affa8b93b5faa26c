"""Sweep engine: many units over a prompt set, batched, cached by content, resumable, tidy rows out.

Every (prompt batch, unit) result is stored in a SQLite cache under a content key: model fingerprint
+ the batch's items + seed + unit + engine code version. Results of one start-layer group are
committed in one transaction, so a killed sweep loses at most the group in flight and never leaves
a partial record; a rerun recomputes only missing keys.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..evidence import metrics
from ..model.subject import Subject
from ..paths import cache_path, content_key
from ..progress import bar as progress_bar
from ..tasks.core import by_family
from . import batch
from .interventions import Unit


def code_version() -> str:
    """Version of the code that determines a unit's numbers (batch.ENGINE_VERSION, bumped by hand whenever
    a change to engine/interventions/metrics could alter any result): part of every cache key."""
    return f"engine-{batch.ENGINE_VERSION}"


class Cache:
    """Content-addressed result store (SQLite, one row per key, atomic transactions)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, payload TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            q = f"SELECT key, payload FROM results WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({k: json.loads(p) for k, p in self.db.execute(q, chunk)})
        return out

    def put_many(self, items: dict[str, dict]) -> None:
        with self.db:  # one transaction: all or nothing
            self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in items.items()])

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]


_key = content_key


def _round(a: np.ndarray) -> list[float]:
    return [float(f"{x:.7g}") for x in np.asarray(a, dtype=float)]


def sweep(
    subject: Subject,
    items: Sequence,
    units: Sequence[Unit],
    *,
    seed: int = 0,
    batch_size: int = 16,
    cache: Cache | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    desc: str = "sweep",
) -> pd.DataFrame:
    """Run every unit on every item; return one tidy row per (item, unit).

    Items need: id, family, prompt, corrupt, answer_id, distractor_id, diff_pos (validated task items).
    Batches hold items of one family (resample donors and mean references stay within a family).
    `df.attrs` reports how many (batch, unit) results were computed vs. read from the cache."""
    cache = cache if cache is not None else Cache()
    max_tokens = max_tokens or _default_max_tokens(subject)
    emit = list(dict.fromkeys((u, u.labels) for u in units))  # rows: every distinct (unit, labels)
    units = list(dict.fromkeys(units))  # compute: every distinct unit once
    groups = batches(items, batch_size)
    ver = code_version()
    counts = {"computed": 0, "cached": 0, "seconds_compute": 0.0}
    frames = []
    bar = progress_bar(len(groups) * len(units), desc, enabled=progress)
    for its in groups:
        bkey = _key(subject.fingerprint, ver, seed, [
            (it.id, it.prompt, it.corrupt, it.answer_id, it.distractor_id, it.diff_pos) for it in its])
        keys = {u: _key(bkey, u.key) for u in units}
        have = cache.get_many([bkey, *keys.values()])
        todo = [u for u in units if keys[u] not in have]
        counts["cached"] += len(units) - len(todo)
        bar.update(len(units) - len(todo))
        if todo:
            t0 = time.perf_counter()
            b = batch.Batch.of_items(subject, its, seed=seed)
            base = {}
            for run in ("clean", "corrupt"):
                m = metrics.next_token(b.logits(run), b.logits("clean"), b.answer_ids, b.distractor_ids)
                base[run] = {k: _round(v) for k, v in m.items()}
            have[bkey] = base
            new = {bkey: base}
            by_layer: dict[int, list[Unit]] = {}
            for u in todo:
                by_layer.setdefault(u.start_layer, []).append(u)
            for layer in sorted(by_layer):  # one committed group per start layer
                group = by_layer[layer]
                for u, lg in zip(group, b.run(group, max_tokens=max_tokens)):
                    m = metrics.next_token(lg, b.logits("clean"), b.answer_ids, b.distractor_ids)
                    new[keys[u]] = {k: _round(v) for k, v in m.items()}
                cache.put_many(new)
                have.update(new)
                counts["computed"] += len(group)
                bar.update(len(group))
                new = {}
            counts["seconds_compute"] += time.perf_counter() - t0
        frames.append(_rows(its, [u for u, _ in emit], keys, have, have[bkey], seed))
    bar.close()
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs.update(counts)
    return df


def _rows(its, units, keys, have, base, seed) -> pd.DataFrame:
    n = len(its)
    ld_clean = np.array(base["clean"]["logit_diff"]) if "logit_diff" in base["clean"] else np.full(n, np.nan)
    ld_corrupt = np.array(base["corrupt"]["logit_diff"]) if "logit_diff" in base["corrupt"] else np.full(n, np.nan)
    p_clean = np.array(base["clean"].get("p_answer", [np.nan] * n))
    cols: dict[str, list] = {}
    for u in units:
        m = have[keys[u]]
        desc = u.describe()
        for k, v in desc.items():
            cols.setdefault(k, []).extend([v] * n)
        for k in ("kl", "logit_diff", "p_answer", "top5_overlap"):
            cols.setdefault(k, []).extend(m.get(k, [np.nan] * n))
    reps = len(units)
    df = pd.DataFrame(cols)
    df.insert(0, "seed", seed)
    df.insert(1, "family", [it.family for it in its] * reps)
    df.insert(2, "item_id", [it.id for it in its] * reps)
    df.insert(3, "bucket", [getattr(it, "bucket", "") for it in its] * reps)
    df.insert(4, "variant", [getattr(it, "variant", "") for it in its] * reps)
    df["ld_clean"] = np.tile(ld_clean, reps)
    df["ld_corrupt"] = np.tile(ld_corrupt, reps)
    df["p_clean"] = np.tile(p_clean, reps)
    df["ld_drop"] = df["ld_clean"] - df["logit_diff"]
    df["recovery"] = metrics.recovery(df["logit_diff"].to_numpy(), df["ld_clean"].to_numpy(), df["ld_corrupt"].to_numpy())
    return df


def batches(items, batch_size: int) -> list[list]:
    """One family per batch, each family split into chunks of near-equal size (18 items, batch_size 16 -> 9 + 9).

    A chunk never holds 1 prompt unless its family does (mean/resample need >= 2), even if that makes a chunk
    exceed batch_size (3 items, batch_size 2 -> one batch of 3)."""
    out = []
    for its in by_family(items).values():
        k = max(1, min(-(-len(its) // batch_size), len(its) // 2))
        q, r = divmod(len(its), k)
        ends = [(i + 1) * q + min(i + 1, r) for i in range(k)]
        out.extend(its[a:b] for a, b in zip([0, *ends], ends))
    return out


def _default_max_tokens(subject: Subject) -> int:
    """Tokens per packed forward: sized from free memory on GPU, a cache-friendly constant on CPU; remote
    (NDIF) requests pack many units per call, since every call pays a round trip."""
    if subject.remote:
        return 65536
    if subject.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(subject.device)
        per_token = subject.arch.d_model * 4 * 40  # activations held per token per layer, generous
        return int(max(4096, min(262144, free * 0.3 // per_token)))
    return 8192
