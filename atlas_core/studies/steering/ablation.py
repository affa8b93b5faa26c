"""Knockout and selectivity: a family's direction ablated (or pushed) on every family's held-out prompts, effects
as fractions of each family's clean − corrupt gap, selectivity = target − mean |off-target| with a bootstrap CI,
and a concept's off-target KL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ...engine.sweep import Cache
from ...evidence import metrics, stats
from ...model.subject import Subject
from .pipeline import Study
from .units import knockout_unit, steer_unit, sweep_units


def gap_defined(gap: np.ndarray) -> bool:
    """Whether a family's clean−corrupt gap can normalize an effect: its 95% CI (over prompts) excludes 0."""
    _, lo, hi = stats.bootstrap_ci(gap)
    return bool(lo > 0 or hi < 0)


def gap_removed(ld_drop: np.ndarray, gap: np.ndarray) -> float:
    """Fraction of the clean−corrupt gap removed, mean(ld_drop) / mean(gap) (NaN for a zero mean gap): the
    `metrics.mean_recovery` of the drop from 0 toward the gap, i.e. 1 − the recovery of the steered LD."""
    gap = np.asarray(gap, dtype=float)
    return metrics.mean_recovery(ld_drop, gap, np.zeros_like(gap), positive_gap=False)


def normalized(ld_drop: np.ndarray, gap: np.ndarray) -> float:
    """`gap_removed`, NaN ("undefined") unless the gap's 95% CI excludes 0, so a near-zero gap never inflates the
    effect."""
    return gap_removed(ld_drop, gap) if gap_defined(gap) else float("nan")


def selectivity(target: tuple[np.ndarray, np.ndarray], off: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 1000,
                seed: int = 0) -> tuple[float, float, float]:
    """(estimate, lo, hi) of target effect − mean |off-target effect|, each the `gap_removed` (ld_drop, gap) of one
    family: 0 = as much collateral as target effect, bounded by the effects themselves (no ratio to explode).
    Off-target families with an undefined gap are left out; NaN when the target's or every off-target gap is
    undefined. Percentile bootstrap CI (`stats.resample_ci`), prompts resampled within every family."""
    offs = [x for x in off.values() if gap_defined(x[1])]
    if not gap_defined(target[1]) or not offs:
        return (float("nan"),) * 3

    def diff(t: tuple, *o: tuple) -> float:
        return gap_removed(*t) - float(np.mean([abs(gap_removed(*x)) for x in o]))

    return stats.resample_ci(diff, target, *offs, n_boot=n_boot, seed=seed)


def knockout_table(per_prompt: pd.DataFrame, n_boot: int = 500) -> pd.DataFrame:
    """Per knockout unit (aimed at `target`): target effect, mean |off-target effect| over the `n_off` families with
    a defined gap, KL (collateral), selectivity (a difference) + CI. `per_prompt` holds the units' sweep rows
    on every family's prompts (columns target, family, ld_drop, ld_clean, ld_corrupt, kl, ...)."""
    rows = []
    for (tgt, layer, a), g in per_prompt.groupby(["target", "layer", "alpha"]):
        fam = {f: (x["ld_drop"].to_numpy(), (x["ld_clean"] - x["ld_corrupt"]).to_numpy()) for f, x in g.groupby("family")}
        if tgt not in fam:
            continue
        off = {f: v for f, v in fam.items() if f != tgt}
        sel, lo, hi = selectivity(fam[tgt], off, n_boot=n_boot)
        offn = [abs(v) for v in (normalized(*x) for x in off.values()) if np.isfinite(v)]
        rows.append({"target": tgt, "layer": layer, "alpha": a, "target_effect": normalized(*fam[tgt]),
                     "off_target_effect": float(np.mean(offn)) if offn else np.nan, "n_off": len(offn),
                     "off_target_kl": g[g["family"] != tgt]["kl"].mean(), "target_kl": g[g["family"] == tgt]["kl"].mean(),
                     "selectivity": sel, "selectivity_lo": lo, "selectivity_hi": hi, "n": len(fam[tgt][0])})
    return pd.DataFrame(rows)


def gap_matrix(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Per (knockout target, family): the fraction of the family's gap the target's knockout removes (`normalized`)."""
    rows = [{"target": t, "family": f, "gap_removed": normalized(g["ld_drop"].to_numpy(),
                                                                 (g["ld_clean"] - g["ld_corrupt"]).to_numpy())}
            for (t, f), g in per_prompt.groupby(["target", "family"])]
    return pd.DataFrame(rows, columns=["target", "family", "gap_removed"])


def knockout(subject: Subject, st: Study, alpha: float = 0.4, families: Sequence[str] | None = None, seed: int = 0,
             cache: Cache | None = None, progress: bool = False, n_boot: int = 500,
             mode: str = "project") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Knock out each family's direction (its best layer of the +α sign, chosen on the selection prompts) and run it
    on every family's held-out prompts: (selectivity table with `mode`, testability and `n_candidates`, per-prompt
    rows). mode "project": directional ablation at every layer and position (`knockout_unit`: necessity of the
    direction); "push": +α along it at that layer, last token (sufficiency of a push toward the corrupt answer)."""
    if mode not in ("project", "push"):
        raise ValueError(f"knockout mode {mode!r}: use 'project' (directional ablation) or 'push' (+α addition)")
    fams = [f for f in (families or st.dirs) if st.sign[f] == 1]
    n_layers = subject.arch.n_layers
    us = [steer_unit(st.dirs[f], "real", 0, st.best_layer(f), alpha) if mode == "push"
          else knockout_unit(st.dirs[f], st.best_layer(f), n_layers) for f in fams]
    items = [it for f in fams for it in st.items[f]]
    rows = sweep_units(subject, items, us, seed=seed, cache=cache, progress=progress, desc=f"knockout ({mode})")
    ko = knockout_table(rows, n_boot=n_boot)
    if ko.empty:
        return ko, rows
    why = {r.target: st.untestable(r.target) or ("" if r.n_off else "no other family's clean−corrupt gap has a 95% "
                                                 "CI excluding 0, so selectivity is undefined") for r in ko.itertuples()}
    pos = st.screen[st.screen["alpha"] > 0]
    ko["mode"] = mode
    ko["n_candidates"] = ko["target"].map(pos.groupby("family")["layer"].nunique())
    ko["testable"] = [not why[t] for t in ko["target"]]
    ko["untestable_why"] = ko["target"].map(why)
    ko["held_out"] = [not st.splits[t].leaks() for t in ko["target"]]
    return ko, rows


def concept_kl(subject: Subject, st: Study, concept: str, alpha: float, seed: int = 0,
               cache: Cache | None = None) -> pd.DataFrame:
    """Off-target effect of a concept direction: mean KL(clean ‖ steered) on every family's held-out prompts."""
    u = steer_unit(st.dirs[concept], "real", 0, st.best_layer(concept, int(np.sign(alpha))), alpha)
    items = [it for f, its in st.items.items() if st.sign[f] == 1 for it in its]
    df = sweep_units(subject, items, [u], seed=seed, cache=cache)
    return df.groupby("family").agg(kl=("kl", "mean"), ld_drop=("ld_drop", "mean")).reset_index()
