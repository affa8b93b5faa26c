"""The steering sweep and its units: labelled steering, multi-layer and knockout units, one sweep call that
returns the tidy effects frame (`sweep_units`), grading against the controls, and the best-layer rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ...engine.interventions import Edit, Op, Site, Unit
from ...engine.sweep import Cache, sweep
from ...evidence import stats
from ...model.subject import Subject
from .directions import Directions


def steer_unit(dirs: Directions, kind: str, i: int, layer: int, alpha: float, position: str = "last") -> Unit:
    """One steering unit: direction `kind` #i at `layer`, strength α, labelled with target, kind, idx, layer, α."""
    return Unit.of(Site("resid", layer, position=position), Op.add(dirs.vector(kind, layer, i), alpha),
                   target=dirs.target, kind=kind, idx=i, layer=layer, alpha=alpha)


def units(dirs: Directions, layers: Sequence[int], alphas: Sequence[float], kinds: Sequence[str] = ("real",),
          position: str = "last", count: int | None = None) -> list[Unit]:
    """Labelled steering units for every (kind, index, layer, α), at most `count` directions of each control kind."""
    out = []
    for kind in kinds:
        k = 1 if kind == "real" else getattr(dirs, kind).shape[1]
        for i in range(k if count is None else min(k, count)):
            out += [steer_unit(dirs, kind, i, layer, a, position) for layer in layers for a in alphas]
    return out


def multi_layer(dirs: Directions, layers: Sequence[int], alpha: float, position: str = "last") -> Unit:
    """One unit steering several layers at once, α split evenly (each in its own layer's norm); labelled target."""
    return Unit(tuple(Edit(Site("resid", layer, position=position), Op.add(dirs.vector("real", layer), alpha / len(layers)))
                      for layer in layers), (("target", dirs.target),))


def knockout_unit(dirs: Directions, layer: int, n_layers: int) -> Unit:
    """Directional ablation (Arditi et al. 2024): the direction fit at `layer` projected out of the residual stream
    after every layer, at every position (`Op.project`); labelled as a real direction at `layer`, α = 0."""
    op = Op.project(dirs.real[layer])
    return Unit(tuple(Edit(Site("resid", i, position="all"), op) for i in range(n_layers)),
                (("target", dirs.target), ("kind", "real"), ("idx", 0), ("layer", layer), ("alpha", 0.0)))


def distinct(us: Sequence[Unit]) -> list[Unit]:
    """Units with distinct keys, the first of each kept (a unit's numbers do not depend on its labels)."""
    out: dict[str, Unit] = {}
    for u in us:
        out.setdefault(u.key, u)
    return list(out.values())


def sweep_units(subject: Subject, items: Sequence, us: Sequence[Unit], sign: int = 1, *, seed: int = 0,
                cache: Cache | None = None, progress: bool = False, desc: str = "steer") -> pd.DataFrame:
    """Every labelled unit on every item through the cached sweep: one tidy row per (item, unit), the units' labels
    as columns (target, kind, idx, layer, α for `steer_unit`), with `effect` = sign · (LD_clean − LD_steered)."""
    df = sweep(subject, items, distinct(us), seed=seed, cache=cache, progress=progress, desc=desc)
    return df.assign(effect=sign * df["ld_drop"], sign=sign)


def effects(df: pd.DataFrame, meta: pd.DataFrame, sign: int) -> pd.DataFrame:
    """Sweep rows of unlabelled units joined to a table of their labels (`unit` = the unit key), with `effect` as
    `sweep_units` computes it (for rows built elsewhere, e.g. the simulated nulls)."""
    out = df.drop(columns=["layer", "alpha"]).merge(meta.drop_duplicates("unit"), on="unit")
    return out.assign(effect=sign * out["ld_drop"], sign=sign)


def grade(per_prompt: pd.DataFrame, n_boot: int = 1000, control_best: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (family, layer, α): the real effect with a 95% CI over prompts and, where controls ran (same prompts),
    the strongest control, its mean effect and `p_control` — the exact paired sign-flip p of (real − strongest
    control) over prompts, effects read in the direction of each one's α. With `control_best` (each screened
    control's own best (layer, sign), `choose`), the controls are those screened ones, each at its own best cell
    and at |α| (`control_effect` in the real α's sign): they had the selection the real direction had. Without
    it, the controls at the same layer and α (for a cell nobody chose). z / empirical p against the random and
    the shuffled-label draws at the same layer and α are descriptive: with k draws an empirical p cannot go
    below 1/(k + 1)."""
    rows = []
    ctl_rows = per_prompt[per_prompt["kind"] != "real"]
    for (fam, layer, a), g in per_prompt.groupby(["family", "layer", "alpha"]):
        real = g[g["kind"] == "real"]
        if real.empty:
            continue
        est, lo, hi = stats.bootstrap_ci(real["effect"], n_boot=n_boot)
        s = 1.0 if a >= 0 else -1.0
        r = {"family": fam, "layer": layer, "alpha": a, "effect": est, "effect_lo": lo, "effect_hi": hi,
             "kl": real["kl"].mean(), "n": len(real)}
        if control_best is None:
            ctl = g[g["kind"] != "real"]
        else:
            cb = control_best[control_best["family"] == fam]
            ctl = ctl_rows[ctl_rows["family"] == fam].merge(
                cb.assign(alpha=cb["sign"] * abs(a))[["kind", "idx", "layer", "alpha"]], on=["kind", "idx", "layer", "alpha"])
        if len(ctl) and a != 0:
            per = (ctl.assign(signed=ctl["effect"] * np.sign(ctl["alpha"]))
                   .pivot_table(index="item_id", columns=["kind", "idx", "layer", "alpha"], values="signed"))
            k = per.mean().idxmax()
            d = (s * real.set_index("item_id")["effect"] - per[k]).dropna().to_numpy()
            cell = "" if control_best is None else f" (layer {k[2]}, {'+' if k[3] > 0 else '−'}α)"
            r |= {"control": f"{k[0]} #{k[1]}{cell}", "control_effect": s * float(per[k].mean()),
                  "n_controls": per.shape[1], "p_control": stats.sign_flip_p(d, "greater")}
        for kind in ("random", "shuffled"):
            null = g[g["kind"] == kind].groupby("idx")["effect"].mean().to_numpy()
            if null.size and a != 0:
                r |= {f"{kind}_mean": null.mean(), f"{kind}_sd": null.std(ddof=1) if null.size > 1 else np.nan,
                      f"{kind}_max": (s * null).max() * s, f"z_{kind}": stats.zscore(s * est, s * null),
                      f"p_{kind}": stats.empirical_p(s * est, s * null), f"n_{kind}": null.size}
        rows.append(r)
    return pd.DataFrame(rows)


def best_layers(screen: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Per direction (`by`: a target, or a target's control `kind` and `idx`) and sign of α: the layer with the
    largest mean signed effect over that sign's strengths (`signed`), and how many (layer, sign) cells it was
    chosen from (`n_candidates`)."""
    by = list(by)
    d = screen.assign(sign=np.sign(screen["alpha"]).astype(int))
    d = d[d["sign"] != 0]
    m = d.assign(signed=d["effect"] * d["sign"]).groupby([*by, "sign", "layer"])["signed"].mean().reset_index()
    k = m.groupby(by).size().rename("n_candidates").reset_index()
    return m.loc[m.groupby([*by, "sign"])["signed"].idxmax()].merge(k, on=by).reset_index(drop=True)


def choose(best: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Per direction, the (layer, sign) of `best_layers` with the larger mean signed effect: the one it is graded at."""
    return best.loc[best.groupby(list(by))["signed"].idxmax()].reset_index(drop=True)
