"""Does the map replicate across model families? The same block/MLP atlas on each model, layers put on a common
depth axis (layer / (n_layers - 1)), profiles normalized to their own maximum and interpolated to a common grid,
and the hub's depth per model with the hub test of chapter 02 (`Atlas.hub_evidence`). The book's model uses
chapter 02's stored atlas (3 seeds) where it holds what the replication reads, else the chapter's own (`book_atlas`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from ..atlas import Atlas


def source(atlas: Atlas, stored: bool) -> str:
    """Where an atlas comes from, for the claims: "chapter 02 (k seeds)" or "own (k seed(s))"."""
    k = len(atlas.seeds)
    return f"{'chapter 02' if stored else 'own'} ({k} seed{'s' if k != 1 else ''})"


def book_atlas(stored: Atlas | None, own: Atlas, components: Sequence[str], method: str = "zero") -> tuple[Atlas, str]:
    """(atlas, source): chapter 02's stored atlas, cut to `own`'s families (the ones the other models are mapped
    on), where it holds whole-component `method` effects (all positions) of every component in `components` for
    each of them on both hub-test splits (select, test), else `own` (this chapter's); `source` says which, with
    its number of seeds."""
    if stored is not None:
        fams = set(own.families)
        e = stored.effects
        e = e[(e["head"] == -1) & (e["position"] == "all") & (e["method"] == method) & e["family"].isin(fams)]
        if all({"select", "test"} <= set(e.loc[(e["component"] == c) & (e["family"] == f), "split"])
               for c in components for f in fams):
            cut = replace(stored, effects=stored.effects[stored.effects["family"].isin(fams)].reset_index(drop=True),
                          solved=stored.solved[stored.solved["family"].isin(fams)].reset_index(drop=True)
                          if "family" in stored.solved else stored.solved)
            return cut, source(cut, True)
    return own, source(own, False)


def depth_profiles(atlases: dict[str, Atlas], components: Sequence[str], method: str = "zero",
                   grid: int = 21) -> pd.DataFrame:
    """Tidy: model, component, metric, depth (0..1 on `grid` points), value (the family-averaged per-layer effect
    divided by its maximum, linearly interpolated in depth). Metric: each atlas's own headline (`ld_frac` where
    it has a testable family, else KL), named per row."""
    xs = np.linspace(0, 1, grid)
    rows = []
    for name, a in atlases.items():
        metric = a.primary_metric if a.testable else "kl"
        for c in components:
            s = a.layer_scores(None, c, method, metric=metric).dropna()
            if s.empty or s.max() <= 0:
                continue
            d = s.index.to_numpy(float) / max(1, a.n_layers - 1)
            v = np.interp(xs, d, (s / s.max()).to_numpy())
            rows += [{"model": name, "component": c, "metric": metric, "depth": float(x), "value": float(y)}
                     for x, y in zip(xs, v, strict=True)]
    return pd.DataFrame(rows, columns=["model", "component", "metric", "depth", "value"])


def depth_diff(prof: pd.DataFrame, ref: str) -> pd.DataFrame:
    """Each other model's normalized depth profile minus `ref`'s, per component and depth (same metric only)."""
    w = prof.pivot_table(index=["component", "metric", "depth"], columns="model", values="value")
    if ref not in w:
        return pd.DataFrame(columns=["component", "metric", "depth", "model", "diff"])
    d = w.drop(columns=ref).sub(w[ref], axis=0)
    return d.stack().rename("diff").reset_index()[["component", "metric", "depth", "model", "diff"]]


def hub_depths(atlases: dict[str, Atlas], components: Sequence[str], method: str = "zero",
               sources: dict[str, str] | None = None) -> pd.DataFrame:
    """Per model and component: the hub (chosen on select prompts, tested on held-out ones against the median layer:
    `hub_evidence`), its depth, the test's p and effect minus control, or why it is not testable; `atlas_source`
    (also in the evidence): `sources[model]`, else "own (k seeds)"."""
    rows = []
    for name, a in atlases.items():
        src = (sources or {}).get(name) or source(a, False)
        for c in components:
            ev = {**a.hub_evidence(c, method), "atlas_source": src}
            rows.append({"model": name, "component": c, "atlas_source": src, "n_layers": a.n_layers, "hub": ev["hub"],
                         "depth": ev["hub"] / max(1, a.n_layers - 1), "metric": ev["metric"],
                         "testable": ev["testable"], "p_value": ev.get("p_value", np.nan),
                         "effect_minus_control": ev.get("effect_minus_control", np.nan),
                         "n_candidates": ev["n_candidates"], "evidence": ev})
    return pd.DataFrame(rows)
