"""Where steering works and where its sign reverses (rule (9) of chapter 08): the real direction's +α push at every
screened layer on the selection prompts, tested per layer with exact sign-flip tests over prompts, Holm over layers.

Descriptive of *where*: the screen's prompts are used as they are (every screened layer, no layer chosen), so
selecting the best layer on them does not bias this table; it says nothing about held-out prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...engine.sweep import Cache
from ...evidence.stats import holm, sign_flip_p
from ...model.subject import Subject
from .pipeline import Study
from .units import sweep_units, units

LEVEL = 0.05  # a layer pushes toward (or away from) the target when its Holm-corrected one-sided p is at most this


def layer_signs(subject: Subject, st: Study, seed: int = 0, cache: Cache | None = None) -> pd.DataFrame:
    """Per target and screened layer: the real direction at the largest +α of the screen on the selection prompts
    (the screen's own per-prompt rows, `Study.screen_rows`; re-swept through the cache with `seed` only where the
    study lacks them), its mean effect toward the target, exact one-sided sign-flip p's over prompts toward
    (`p_toward`) and away (`p_away`), each Holm-corrected over the target's layers (`holm_toward`, `holm_away`),
    `toward` / `away` at `LEVEL`, the smallest p the prompts allow (`min_p`), and whether the target is testable
    on this model (`untestable_why`)."""
    rows = []
    for name, d in st.dirs.items():
        sc = st.screen[st.screen["family"] == name]
        alpha = float(sc["alpha"].max()) if len(sc) else float("nan")
        if not np.isfinite(alpha) or alpha <= 0:
            continue
        layers = sorted(int(x) for x in sc["layer"].unique())
        if len(st.screen_rows):
            per = st.screen_rows[(st.screen_rows["family"] == name) & (st.screen_rows["alpha"] == alpha)]
        else:
            per = sweep_units(subject, st.splits[name].select, units(d, layers, [alpha]), st.sign[name], seed=seed,
                              cache=cache, desc=f"signs {name}")
        per = per[per["kind"] == "real"] if "kind" in per else per
        why = st.untestable(name) or ""
        part = []
        for layer in layers:
            e = per.loc[per["layer"] == layer, "effect"].to_numpy(float)
            part.append({"family": name, "kind": "concept" if st.sign[name] == -1 else "family", "layer": layer,
                         "alpha": alpha, "n": int(e.size), "effect": float(e.mean()) if e.size else np.nan,
                         "p_toward": sign_flip_p(e, "greater"), "p_away": sign_flip_p(e, "less"),
                         "min_p": 0.5 ** e.size if e.size else np.nan, "testable": not why, "untestable_why": why})
        t = pd.DataFrame(part)
        t["holm_toward"], t["holm_away"] = holm(t["p_toward"]), holm(t["p_away"])
        t["toward"], t["away"] = t["holm_toward"] <= LEVEL, t["holm_away"] <= LEVEL
        rows.append(t)
    cols = ["family", "kind", "layer", "alpha", "n", "effect", "p_toward", "p_away", "holm_toward", "holm_away",
            "toward", "away", "min_p", "testable", "untestable_why"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)
