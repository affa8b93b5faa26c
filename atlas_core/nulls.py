"""Graders run on simulated nulls: how often does a claim reach medium or high when nothing is there?

`python -m atlas_core.nulls [--reps 200]` prints the table the method page quotes. Each null keeps what a
real run has (item-level noise shared across layers, skewed effects, several families, seeds and methods)
and removes the one thing the claim asserts; a planted effect beside it shows the grader can still pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import pandas as pd

from .atlas import Atlas, agreement_claim, hub_claim
from .claims import Claim
from .stats import bootstrap_ci, sign_flip_p

RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}


def null_rows(seed: int, n_layers: int = 8, n_families: int = 4, seeds=(42, 137, 256), n_items: int = 16,
              methods=("zero", "mean", "resample"), hub: int | None = None, effect: float = 0.0,
              shared_profile: bool = False) -> pd.DataFrame:
    """Per-item sweep rows of a model that flips every item and whose layers are exchangeable.

    hub/effect: add `effect` (a fraction of the clean logit difference) at one layer, for every method.
    shared_profile: every method sees the same random layer profile (methods agree, no layer special)."""
    rng = np.random.default_rng(seed)
    profile = rng.normal(0, 0.05, n_layers)
    recs = []
    for f in range(n_families):
        for s in seeds:
            for i in rng.choice(400, n_items, replace=False):
                clean = 1.0 + rng.lognormal(0, 0.5)
                item = rng.lognormal(-2.5, 0.5)  # how fragile this prompt is, under every ablation
                for m in methods:
                    own = profile if shared_profile else rng.normal(0, 0.05, n_layers)
                    for layer in range(n_layers):
                        frac = item * rng.lognormal(0, 0.5) + (own[layer] if shared_profile else 0.0)
                        frac += effect if layer == hub else 0.0
                        recs.append((s, f"fam{f}", f"fam{f}-{i}", m, layer, clean, -1.0, clean * frac,
                                     rng.lognormal(-2, 1)))
    df = pd.DataFrame(recs, columns=["seed", "family", "item_id", "method", "layer", "ld_clean", "ld_corrupt",
                                     "ld_drop", "kl"])
    return df.assign(component="block", head=-1, position="all", p_answer=0.0, top5_overlap=1.0)


def _atlas(rows: pd.DataFrame, n_layers: int) -> Atlas:
    return Atlas.from_rows(rows, "null", "null", n_layers, 1, n_boot=0)


def rates(grade_one: Callable[[int], str], reps: int) -> dict:
    """Share of repetitions graded >= medium and high."""
    levels = np.array([RANK[grade_one(r)] for r in range(reps)])
    return {"reps": reps, "medium_or_high": float((levels >= 2).mean()), "high": float((levels >= 3).mean())}


def hub_null(reps: int = 200, effect: float = 0.0, n_layers: int = 8) -> dict:
    """The hub claim when every layer is drawn from one distribution (effect > 0: one planted hub)."""
    return rates(lambda r: hub_claim(_atlas(null_rows(r, n_layers, hub=3, effect=effect), n_layers), "block").confidence, reps)


def agreement_null(reps: int = 200, shared: bool = False, n_layers: int = 8) -> dict:
    """The method-agreement claim when each method's layer profile is independent noise (shared: one profile)."""
    return rates(lambda r: agreement_claim(_atlas(null_rows(r, n_layers, shared_profile=shared), n_layers),
                                           "block").confidence, reps)


def comparison_null(reps: int = 200, n: int = 3, effect: float = 0.0, test: str = "sign-flip") -> dict:
    """A paired comparison over n replicates (seeds): "A beats B" graded from an exact sign-flip p-value, or,
    for contrast, from a bootstrap CI (what chapter 05 did before: its 3-seed CI is [min, max])."""
    def one(r: int) -> str:
        d = np.random.default_rng(r).normal(effect, 1.0, n)
        if test == "sign-flip":
            ev = {"p_value": sign_flip_p(d), "n_seeds": n, "seeds_replicated": int((d > 0).sum())}
        else:
            ev = {"ci_excludes_control": bool(bootstrap_ci(d, seed=r)[1] > 0), "n_seeds": n,
                  "seeds_replicated": int((d > 0).sum())}
        return Claim("A beats B", "metric", "A vs B", "B", ev).confidence

    out = rates(one, reps)
    rng = np.random.default_rng(0)
    if test == "sign-flip":
        out["control_passed"] = float(np.mean([sign_flip_p(rng.normal(effect, 1, n)) <= 0.05 for _ in range(reps)]))
    else:
        out["control_passed"] = float(np.mean([bootstrap_ci(rng.normal(effect, 1, n), seed=i)[1] > 0 for i in range(reps)]))
    return out


def table(reps: int = 200) -> pd.DataFrame:
    """Every grader on its null (and one planted effect each), one row per case."""
    rows = [
        ("hub (ch 02)", "all layers exchangeable", hub_null(reps)),
        ("hub (ch 02)", "planted hub, +0.1 of clean LD", hub_null(reps, effect=0.1)),
        ("method agreement (ch 02)", "independent method profiles", agreement_null(reps)),
        ("method agreement (ch 02)", "one shared profile", agreement_null(reps, shared=True)),
        ("paired comparison, 3 seeds (ch 04/05)", "no difference, sign-flip test", comparison_null(reps, 3)),
        ("paired comparison, 3 seeds (old)", "no difference, bootstrap CI", comparison_null(reps, 3, test="bootstrap")),
        ("paired comparison, 8 seeds", "no difference, sign-flip test", comparison_null(reps, 8)),
        ("paired comparison, 8 seeds", "planted +1 sd, sign-flip test", comparison_null(reps, 8, effect=1.0)),
    ]
    return pd.DataFrame([{"grader": g, "null": n, **r} for g, n, r in rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200)
    a = p.parse_args(argv)
    print(table(a.reps).to_string(index=False))


if __name__ == "__main__":
    main()
