"""What the rules read: chapter 02's stored atlas for a model and profile, its per-cell effects, the latest tagged
claims of chapters 02-07, and `cap` (a rule's evidence never grades above the claim it reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...evidence import registry
from ...evidence.claims import Claim, grade
from ...paths import results_dir
from ..atlas import Atlas

LEVELS = ("none", "low", "medium", "high")
# evidence keys dropped, in this order, until a grade is at most its ceiling: breadth, methods, seeds, control
DROP_ORDER = (("n_families", "families_agreeing"), ("n_methods", "methods_agreeing"), ("n_seeds", "seeds_replicated"),
              ("p_value", "ci_excludes_control"))


def atlas_path(model: str, profile: str) -> Path | None:
    """Chapter 02's atlas.json for this model and profile: results/atlas-<model>-<profile>/, else the newest
    registry "atlas" record of the model whose saved atlas sits in a folder of that name; None when neither."""
    own = results_dir() / f"atlas-{model}-{profile}" / "atlas.json"
    if own.exists():
        return own
    for rec in reversed(registry.read(kind="atlas", model=model)):
        p = Path(rec.get("outputs", {}).get("atlas", ""))
        if p.name == "atlas.json" and p.parent.name == f"atlas-{model}-{profile}" and p.exists():
            return p
    return None


def load_atlas(model: str, profile: str) -> Atlas | None:
    """The stored atlas (gated as chapter 02 saved it), or None when chapter 02 has not run."""
    p = atlas_path(model, profile)
    return Atlas.load(p) if p is not None else None


def metric_of(atlas: Atlas) -> tuple[str, list[str]]:
    """(metric, families) the atlas can speak with: its primary metric on the testable families, or KL on every
    family when the model solves none (disruption, not behaviour)."""
    if atlas.testable:
        return atlas.primary_metric, (atlas.testable_families if atlas.primary_metric == "ld_frac" else atlas.families)
    return "kl", atlas.families


def cells(atlas: Atlas, component: str, method: str, position: str = "all", split: str | None = None,
          families: list[str] | None = None, metric: str | None = None) -> pd.DataFrame:
    """Whole-component effects as a (family, seed, split) x layer table of `metric` (default: `metric_of`)."""
    m, fams = metric_of(atlas)
    metric, fams = metric or m, families if families is not None else fams
    e = atlas.effects
    e = e[(e["head"] == -1) & (e["component"] == component) & (e["method"] == method) & (e["position"] == position)
          & e["family"].isin(fams)]
    if split is not None:
        e = e[e["split"] == split]
    if e.empty or metric not in e:
        return pd.DataFrame()
    return e.pivot_table(index=["family", "seed", "split"], columns="layer", values=metric)


def scores(t: pd.DataFrame) -> pd.Series:
    """Per layer: mean over seeds and splits per family, then over families equally (the atlas's layer score)."""
    return t.groupby(level="family").mean().mean()


def seed_scores(t: pd.DataFrame) -> pd.DataFrame:
    """Per seed and layer, families weighted equally."""
    return t.groupby(level=["seed", "family"]).mean().groupby(level="seed").mean()


def top(s: pd.Series, k: int = 1, exclude: tuple[int, ...] = ()) -> list[int]:
    """The k best layers of a score series (ties: the lower layer)."""
    s = s.drop(list(exclude), errors="ignore").dropna()
    return [int(x) for x in s.sort_values(ascending=False, kind="stable").index[:k]]


def tagged(claims: list[Claim], tag: str) -> list[Claim]:
    """Claims whose tag is `tag`, or starts with `tag` + "." (e.g. "04.steer" finds "04.steer.ioi")."""
    return [c for c in claims if c.tag == tag or c.tag.startswith(tag + ".")]


def missing(claims: list[Claim], chapter: str, tag: str, model: str, profile: str) -> str | None:
    """Why no claim tagged `tag` can be read: the chapter has not run, or its latest run predates tags; None if found."""
    if tagged(claims, tag):
        return None
    if not any(c.chapter == chapter for c in claims):
        return f"chapter {chapter} has not run for {model}/{profile}"
    if not any(c.tag for c in claims if c.chapter == chapter):
        return f"chapter {chapter}'s latest run for {model}/{profile} predates claim tags (re-run chapter {chapter})"
    return f"chapter {chapter}'s latest run for {model}/{profile} records no claim tagged {tag}"


def lowest(claims: list[Claim]) -> str | None:
    """The lowest confidence among `claims` (the ceiling of a rule that reads all of them); None if there are none."""
    return min((c.confidence for c in claims), key=LEVELS.index) if claims else None


def lowest_of(a: str | None, b: str) -> str:
    """The lower of two confidences (a None: b)."""
    return b if a is None else min(a, b, key=LEVELS.index)


def cap(evidence: dict, ceiling: str | None) -> tuple[dict, bool]:
    """(evidence, capped): criteria dropped (breadth, methods, seeds, then the control) until the grade is at most
    `ceiling`, so a rule never grades above the claim it reads; unchanged when ceiling is None."""
    ev = dict(evidence)
    if ceiling is None:
        return ev, False
    capped = False
    for keys in DROP_ORDER:
        if LEVELS.index(grade(ev)[0]) <= LEVELS.index(ceiling):
            break
        for k in keys:
            ev.pop(k, None)
        capped = True
    return ev, capped


def clean(x):
    """JSON-safe evidence values (numpy scalars to Python, NaN kept as float)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
