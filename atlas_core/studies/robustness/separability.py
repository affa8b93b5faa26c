"""A skill separability score per family, from three measured quantities (the chapter's method page repeats this):

- **L, localization sharpness**: the share of the family's positive block zero-ablation effect (`ld_frac`, short
  prompts) that its top layer carries, per seed of chapter 02's atlas: 1 = one layer carries it all, 1/n_layers = flat.
- **I, insertion gain**: the fraction of the family's clean - corrupt logit-difference gap that steering along its
  contrastive direction (+alpha at its chosen layer, chapter 04's study) moves on held-out short prompts, clipped to [0, 1].
- **C, collateral damage**: directional ablation of that direction (chapter 04's knockout) removes a fraction of
  the other families' gaps; C = mean |off-target fraction| / target fraction, clipped to [0, 1] (1 when the
  knockout removes nothing of its own family's gap).

separability = (L * I * (1 - C)) ** (1/3), a geometric mean, so a skill must be localized, movable AND
removable without collateral to score high. Spread over seeds: L per seed (I and C are one seed, with their
prompt CIs shown beside). The original study reported code_semantics 0.361 > json_schema 0.221 > factual_recall
0.218 on a 0.5B model with its own definition: a hypothesis here, compared only where those families are testable."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..atlas import Atlas


def localization(atlas: Atlas, component: str = "block", method: str = "zero") -> pd.DataFrame:
    """Per testable family and seed: the top layer and its share of the positive per-layer effect (L)."""
    e = atlas.effects
    e = e[(e["component"] == component) & (e["method"] == method) & (e["head"] == -1) & (e["position"] == "all")
          & e["family"].isin(atlas.testable_families)]
    rows = []
    for (f, s), g in e.groupby(["family", "seed"]):
        prof = g.groupby("layer")["ld_frac"].mean().clip(lower=0)
        if prof.sum() > 0:
            rows.append({"family": f, "seed": int(s), "top_layer": int(prof.idxmax()), "L": float(prof.max() / prof.sum()),
                         "flat": 1 / atlas.n_layers})
    return pd.DataFrame(rows, columns=["family", "seed", "top_layer", "L", "flat"])


def score(loc: pd.DataFrame, insertion: pd.DataFrame, knockout: pd.DataFrame) -> pd.DataFrame:
    """Per family and seed: L, I, C and separability (module docstring). `insertion`: family, gap_removed (and
    effect CI) from `steering.length_buckets` on the short bucket; `knockout`: chapter 04's directional-ablation
    table (target, target_effect, off_target_effect, selectivity_lo/hi)."""
    ins = insertion.set_index("family")
    ko = knockout.set_index("target")
    rows = []
    for r in loc.itertuples():
        if r.family not in ins.index or r.family not in ko.index:
            continue
        i = float(np.clip(ins.loc[r.family, "gap_removed"], 0, 1))
        t, off = float(ko.loc[r.family, "target_effect"]), float(ko.loc[r.family, "off_target_effect"])
        if not np.isfinite(off):  # no other family with a defined gap: collateral cannot be measured
            continue
        c = float(np.clip(abs(off) / t, 0, 1)) if t > 0 else 1.0
        rows.append({"family": r.family, "seed": r.seed, "L": r.L, "I": i, "C": c,
                     "separability": float((r.L * i * (1 - c)) ** (1 / 3))})
    return pd.DataFrame(rows, columns=["family", "seed", "L", "I", "C", "separability"])


def ranking(scores: pd.DataFrame) -> pd.DataFrame:
    """Per family: separability mean and range over seeds, and in how many seeds it ranks first alone (ties count
    for no one)."""
    if scores.empty:
        return pd.DataFrame(columns=["family", "separability", "lo", "hi", "n_seeds", "first_in"])
    scores = scores.dropna(subset=["separability"])
    if scores.empty:
        return pd.DataFrame(columns=["family", "separability", "lo", "hi", "n_seeds", "first_in"])
    best = scores.groupby("seed")["separability"].transform("max")
    top = scores[scores["separability"] == best]
    alone = top.groupby("seed")["family"].transform("size") == 1  # a tie for first is no one's first place
    first = top.loc[alone, "family"].value_counts()
    g = scores.groupby("family")
    out = pd.DataFrame({"separability": g["separability"].mean(), "lo": g["separability"].min(),
                        "hi": g["separability"].max(), "L": g["L"].mean(), "I": g["I"].first(), "C": g["C"].first(),
                        "n_seeds": g.size()})
    out["first_in"] = first.reindex(out.index).fillna(0).astype(int)
    return out.sort_values("separability", ascending=False).reset_index()
