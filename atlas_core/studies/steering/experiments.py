"""Chapter 04's further experiments on a finished `Study`: the same α spread over several layers, the effect on
other prompt-length buckets, and a direction transferred to another model."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ...engine.sweep import Cache
from ...evidence import stats
from ...model.subject import Subject
from .ablation import normalized
from .directions import transfer
from .pipeline import Study, bucket_items
from .units import grade, multi_layer, steer_unit, sweep_units, units


def multi_layer_effects(subject: Subject, st: Study, alpha: float, widths: Sequence[int] = (1, 3, 5), seed: int = 0,
                        cache: Cache | None = None) -> pd.DataFrame:
    """Per target and width: mean effect and KL on its held-out prompts of α spread over `width` consecutive layers
    centred on its best +α layer (`center`; clipped to the model, `width` counts the layers kept)."""
    n = subject.arch.n_layers
    frames = []
    for b in st.best[st.best["sign"] == 1].itertuples():
        us = []
        for w in widths:
            lay = [x for x in range(b.layer - w // 2, b.layer + w // 2 + 1) if 0 <= x < n]
            us.append(multi_layer(st.dirs[b.family], lay, alpha).label(width=len(lay), center=b.layer))
        frames.append(sweep_units(subject, st.items[b.family], us, st.sign[b.family], seed=seed, cache=cache))
    return pd.concat(frames).groupby(["target", "center", "width"]).agg(effect=("effect", "mean"), kl=("kl", "mean"))


def length_buckets(subject: Subject, st: Study, buckets: Sequence[str], n: int, alpha: float, seed: int = 0,
                   item_seed: int = 1, cache: Cache | None = None) -> tuple[pd.DataFrame, dict[str, tuple[str, list]]]:
    """Each family's direction at +α on its best layer, on up to `n` items of each length bucket that share no
    template or text with its fit or select prompts (`bucket_items`, sampled with `item_seed`): (per family and
    bucket: effect with a 95% CI and the fraction of the gap removed; the item sets, name -> (family, items), as
    `audit` takes them)."""
    rows, sets = [], {}
    for f, d in st.dirs.items():
        if st.sign[f] != 1:
            continue
        u = steer_unit(d, "real", 0, st.best_layer(f), alpha)
        for bucket in buckets:
            its = bucket_items(subject, st, f, bucket, n, item_seed)
            sets[f"{f} {bucket}"] = (f, its)
            if not its:
                continue
            e = sweep_units(subject, its, [u], seed=seed, cache=cache)
            est, lo, hi = stats.bootstrap_ci(e["effect"])
            gap = normalized(e["ld_drop"].to_numpy(), (e["ld_clean"] - e["ld_corrupt"]).to_numpy())
            rows.append({"family": f, "bucket": bucket, "n": len(its), "effect": est, "effect_lo": lo, "effect_hi": hi,
                         "gap_removed": gap})
    return pd.DataFrame(rows), sets


def transfer_effects(st: Study, family: str, subject: Subject, other: Subject, alphas: Sequence[float] = (0.2, 0.4),
                     seed: int = 0, cache: Cache | None = None) -> pd.DataFrame:
    """A family's direction at its best +α layer graded (`grade`, against every random direction at that cell) on
    its held-out prompts in `subject` and, `transfer`red, in `other`: one block of rows per model (`model`)."""
    d = st.dirs[family]
    out = []
    for subj, dirs in ((subject, d), (other, transfer(d, subject, other))):
        us = units(dirs, [st.best_layer(family)], alphas, kinds=("real", "random"))
        out.append(grade(sweep_units(subj, st.items[family], us, seed=seed, cache=cache)).assign(model=subj.name))
    return pd.concat(out)
