"""Chapter 05's claims: `compare` (atlas minus each other strategy, paired by seed, exact sign-flip test over seeds),
`verdict` ("the atlas wins": it beats every strategy compared, an intersection-union test, Holm across families),
`norm_effect` (per-layer ‖B·A‖ vs adapter-only ablation effect, exact permutation test) and `lora_claims`, whose
statements and evidence come from those tables, `choose_lr` and `targeting` only; `lock_in_claim` (chapter 08's rule
(8): the adapter's layer map at its first checkpoint against its final map, exact permutation test)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd

from ...evidence.claims import Claim
from ...evidence.stats import holm, sign_flip_p, spearman_perm
from .targeting import CONTROLS, PARAM_TOL

MIN_SEEDS = 5  # "the atlas wins" is not graded below this many paired seeds
MIN_LRS = 4  # a learning-rate search over fewer rates caps the verdict
CONTROL_P = 0.05  # the claims grader's control criterion
LOCK_RHO = 0.7  # rule (8), fixed before any run: a checkpoint's layer map is "locked in" at Spearman >= this with the final


def compare(head: pd.DataFrame, ref: str = "atlas", others: Sequence[str] | None = None,
            tol: float = PARAM_TOL) -> pd.DataFrame:
    """`ref` minus each other strategy (default: every other one present but the base model), paired by seed (same
    steps and seed; each at its own learning rate where `lr` varies), per family.

    p_value: exact sign-flip test over seeds, one-sided (ref reaches lower eval loss); min_p = 2^-n_seeds, the
    smallest p that many seeds can give. param_ratio: other / ref trainable parameters (mean over seeds);
    params_matched: within `tol` in every seed (random and depth-matched must be; the others are not meant to)."""
    others = list(others or [s for s in dict.fromkeys(head["strategy"]) if s not in (ref, "none")])
    vals = [c for c in ("eval_loss", "exact_match", "n_trainable", "lr") if c in head]
    rows = []
    for f, g in head[head["strategy"].isin([ref, *others])].groupby("family", sort=False):
        w = g.pivot_table(index="seed", columns="strategy", values=vals)
        basis = str(g.loc[g["strategy"] == ref, "basis"].iloc[0]) if "basis" in g and (g["strategy"] == ref).any() else ""
        for o in others:
            if ref not in w["eval_loss"] or o not in w["eval_loss"]:
                continue
            both = w.dropna(subset=[("eval_loss", ref), ("eval_loss", o)])
            d = (both["eval_loss"][ref] - both["eval_loss"][o]).to_numpy()
            ratio = (both["n_trainable"][o] / both["n_trainable"][ref]).to_numpy()
            rows.append({"family": f, "vs": o, "basis": basis, "n_seeds": d.size, "d_eval_loss": float(d.mean()),
                         "p_value": sign_flip_p(d, "less"), "min_p": 0.5 ** d.size, "seeds_better": int((d < 0).sum()),
                         "d_exact_match": float((both["exact_match"][ref] - both["exact_match"][o]).mean()),
                         "param_ratio": float(ratio.mean()), "params_matched": bool(np.all(np.abs(ratio - 1) <= tol)),
                         **({"lr_ref": float(both["lr"][ref].mean()), "lr_vs": float(both["lr"][o].mean())}
                            if "lr" in vals else {})})
    return pd.DataFrame(rows)


def verdict(cmp: pd.DataFrame, required: Sequence[str] = CONTROLS,
            matched: Sequence[str] = ("random", "depth-matched")) -> pd.DataFrame:
    """Per family of a `compare` table, "the atlas wins": lower eval loss than every strategy it was compared with.

    An intersection-union test (Berger 1982): the family's p is the largest of its comparisons' exact sign-flip
    p's, a level-0.05 test of "beats every one" with no correction across them (each must pass by itself; Holm
    across them would only add a condition no 5-seed run could meet); Holm then corrects across the graded
    families. A family is not graded where a `required` control is missing or a `matched` one does not match the
    atlas's trainable parameters (`why`). `weakest`: the comparison with the largest p."""
    rows = []
    for f, g in cmp.groupby("family", sort=False):
        missing = [c for c in required if c not in set(g["vs"])]
        unmatched = [c for c in matched if c in set(g["vs"]) and not g.loc[g["vs"] == c, "params_matched"].all()]
        w = g.loc[g["p_value"].idxmax()]
        why = "; ".join([f"the {' and '.join(missing)} control{'s are' if len(missing) > 1 else ' is'} missing"] * bool(missing)
                        + [f"no {' or '.join(unmatched)} layer set matches the atlas's trainable parameters within "
                           f"{PARAM_TOL:.0%}"] * bool(unmatched))
        rows.append({"family": f, "basis": g["basis"].iloc[0], "n_seeds": int(g["n_seeds"].min()),
                     "min_p": float(g["min_p"].max()), "n_compared": len(g), "vs": ", ".join(g["vs"]),
                     "all_lower": bool((g["d_eval_loss"] < 0).all()), "weakest": w["vs"],
                     "d_weakest": float(w["d_eval_loss"]), "p_value": float(w["p_value"]), "graded": not why, "why": why})
    out = pd.DataFrame(rows, columns=["family", "basis", "n_seeds", "min_p", "n_compared", "vs", "all_lower", "weakest",
                                      "d_weakest", "p_value", "graded", "why"])
    out["p_holm"] = np.nan
    ok = out["graded"].to_numpy(bool)
    out.loc[ok, "p_holm"] = holm(out.loc[ok, "p_value"].to_numpy())
    out["wins"] = out["graded"] & out["all_lower"] & (out["p_holm"] <= CONTROL_P)
    return out


def norm_effect(final: pd.DataFrame) -> dict:
    """Per-layer update norm vs adapter-only ablation effect of one adapter (`effect_map` rows): Spearman rho,
    exact permutation p (two-sided), the smallest p the number of layers allows, and that number; and
    `last_share` (`late_share`: the share of the positive effect in the last ~10% of layers, with its exact p)."""
    rho, p, min_p = spearman_perm(final["norm"], final["effect"])
    return {"rho": rho, "p_value": p, "min_p": min_p, "n_layers": len(final), **late_share(final)}


def late_share(final: pd.DataFrame, frac: float = 0.1) -> dict:
    """Share of the summed positive adapter-only ablation effect in the last ceil(frac·n) layers, and an exact
    p: the fraction of all equally sized layer sets whose share is at least as large (a set of layers at random).
    NaN when no layer has a positive effect. Rows are in layer order (sorted by `layer` when there is one)."""
    eff = (final.sort_values("layer") if "layer" in final else final)["effect"].clip(lower=0).to_numpy(float)
    n = eff.size
    k = max(1, int(np.ceil(frac * n)))
    total = eff.sum()
    if n == 0 or total <= 0:
        return {"late_layers": k, "late_share": float("nan"), "late_p": float("nan")}
    obs = eff[-k:].sum() / total
    rng = np.random.default_rng(0)
    sets = (np.array(list(combinations(range(n), k))) if comb(n, k) <= 100_000  # exact; else 20000 seeded random sets
            else np.argsort(rng.random((20_000, n)), axis=1)[:, :k])
    sums = eff[sets].sum(axis=1) / total
    return {"late_layers": k, "late_share": float(obs), "late_p": float(np.mean(sums >= obs - 1e-12))}


def _cannot(n: int, what: str, min_p: float) -> str:
    return (f"; {n} {what} cannot give p below {min_p:.3g}, so this cannot pass the control criterion (p ≤ {CONTROL_P})"
            if min_p > CONTROL_P else "")


NAMES = {"random": "random-matched", "depth-matched": "depth-matched", "wrong-family": "wrong-family"}


def _lr_note(lrs: pd.DataFrame | None, family: str) -> tuple[str, str]:
    """(how the learning rates were chosen, why that caps the verdict; "" = no cap) from a `choose_lr` table."""
    if lrs is None or not len(lrs):
        return ("every strategy at one learning rate", "one learning rate for every strategy, which can flip "
                "rankings at short budgets (Biderman et al. 2024)")
    own = lrs[lrs["family"] == family]
    rows = own if len(own) else lrs
    n_lrs, m, src = int(rows["n_lrs"].min()), int(rows["n_search_seeds"].min()), rows["family"].iloc[0]
    edge = sorted(rows.loc[rows["at_edge"].astype(bool), "strategy"]) if "at_edge" in rows else []
    note = (f"each strategy at its own learning rate (validation-loss argmin of {n_lrs} rates on {m} seed"
            f"{'s' if m > 1 else ''}{'' if len(own) else f' of {src}'}"
            f"{'; at the grid edge for ' + ', '.join(edge) if edge else ''})")
    cap = (f"learning rates chosen on {src}'s validation split, not {family}'s" if not len(own) else
           f"learning rates searched over {n_lrs} < {MIN_LRS} values" if n_lrs < MIN_LRS else "")
    return note, cap


def lora_claims(cmp: pd.DataFrame, norm: dict, targets: pd.DataFrame, k: int, chapter: str = "05",
                model: str = "", profile: str = "", lrs: pd.DataFrame | None = None) -> list[Claim]:
    """Chapter 05's claims from `compare` (atlas vs every other strategy; `verdict` reads it), `norm_effect`,
    `targeting` and `choose_lr` (None: one learning rate for all); every statement, direction and piece of
    evidence is read off those tables.

    Per family: "the atlas wins" only where it beats every strategy compared, the three `CONTROLS` among them
    (`verdict`). Not graded (testable False) with a control missing or unmatched in parameters, or with fewer
    than `MIN_SEEDS` paired seeds; capped at low (no breadth) where the learning rates were not searched on the
    family's own validation split over >= `MIN_LRS` rates. Where the atlas metric could not target (the model
    does not solve the family), a "not testable here" claim plus a "disruption-targeted" one for the KL fallback,
    graded by its control alone."""
    meta = {"chapter": chapter, "model": model, "profile": profile}
    v = verdict(cmp)
    n_graded, passed = int(v["graded"].sum()), int(v["wins"].sum())
    claims = []
    for r in v.itertuples():
        tg = targets.loc[r.family]
        fell = tg["basis"] != tg["metric"]
        by = {"kl": "KL"}.get(tg["basis"], tg["basis"])
        who = (f"disruption-targeted LoRA ({k} layers ranked by ablation {by}, not by the behaviour)" if fell
               else f"atlas-guided LoRA ({k} layers ranked by {by})")
        n_of = int(tg.get("wrong_of", 0) or 0)
        wrong = (f" ({tg['wrong_family']}, {'the only other family mapped' if n_of == 1 else f'least correlated of {n_of}'})"
                 if tg.get("wrong_family") else "")
        common = {"metric": "eval loss on held-out completions",
                  "counterfactual": f"layers chosen by {'the KL map' if fell else 'the atlas'}; same steps and seeds",
                  "control": f"random layers with the same trainable parameters (±{PARAM_TOL:.0%}), depth-matched "
                             "random layers, another family's atlas layers, and every other strategy run", **meta}
        lin = cmp[(cmp["family"] == r.family) & (cmp["vs"] == "all-linear")]
        extra = {"basis": str(tg["basis"])} | ({"vs_all_linear": {
            k: float(lin[k].iloc[0]) for k in ("d_exact_match", "param_ratio", "d_eval_loss", "p_value", "n_seeds")}}
            if len(lin) else {})
        tag = f"05.lora.{r.family}"
        if fell:
            claims.append(Claim(f"{r.family}: atlas-guided LoRA ({tg['metric']}) against its controls is not "
                                f"testable here", evidence={"testable": False, "untestable_why": tg["why"]},
                                tag=f"05.atlas_untestable.{r.family}", **common))
        if not r.graded:
            claims.append(Claim(f"{r.family}: whether {who} beats its controls is not graded: {r.why}",
                                evidence={"testable": False, "untestable_why": r.why, **extra}, tag=tag, **common))
            continue
        note, cap = _lr_note(lrs, r.family)
        rows = cmp[cmp["family"] == r.family]
        each = ", ".join(f"{NAMES.get(c.vs, c.vs)}{wrong if c.vs == 'wrong-family' else ''} {c.d_eval_loss:+.3f} "
                         f"(p {c.p_value:.3g})" for c in rows.itertuples())
        verb = ("beats every strategy it was compared with" if r.wins
                else "has lower eval loss than every other strategy, but not significantly" if r.all_lower
                else f"does not beat every strategy it was compared with (weakest: {NAMES.get(r.weakest, r.weakest)})")
        what = "seeds" if n_graded == 1 else f"seeds (Holm over {n_graded} families)"
        stmt = (f"{r.family}: {who}, {note}, {verb} on held-out eval loss (Δ vs {each}; intersection-union p = "
                f"{r.p_value:.3g} over {r.n_seeds} seeds, Holm {r.p_holm:.3g} over {n_graded} families"
                f"{_cannot(r.n_seeds, what, min(1.0, n_graded * r.min_p))})")
        if r.n_seeds < MIN_SEEDS:
            why = (f"{r.n_seeds} paired seeds: 'the atlas wins' is graded from {MIN_SEEDS} (this profile's budget "
                   f"runs {r.n_seeds}; the full profile runs more)")
            claims.append(Claim(stmt, evidence={"testable": False, "untestable_why": why,
                                                "p_value": float(r.p_holm), **extra}, tag=tag, **common))
            continue
        # the seeds are the replicates of the test itself, so they are not counted again; breadth counts the families
        # that pass the corrected test. A disruption-targeted or capped verdict is graded by its control alone
        ev = {"p_value": float(r.p_holm), "selection": "holm"}
        if not (fell or cap):
            ev |= {"n_families": n_graded, "families_agreeing": passed if r.wins else n_graded - passed}
        claims.append(Claim(stmt + (f"; capped at low: {cap}" if cap else ""), evidence=ev | extra, tag=tag, **common))
    rho, p = norm["rho"], norm["p_value"]
    word = ("cannot be related (a constant per-layer map)" if not np.isfinite(rho)
            else ("rises" if rho > 0 else "falls") if p <= CONTROL_P else "shows no clear association")
    claims.append(Claim(
        f"Per layer, the all-linear adapter's update norm ‖B·A‖ {word} with the harm of disabling it there "
        f"(Spearman {rho:.2f}, exact permutation p = {p:.3g} over {norm['n_layers']} layers"
        f"{_cannot(norm['n_layers'], 'layers', norm['min_p'])})",
        metric="Spearman(per-layer update norm, adapter-only ablation effect)",
        counterfactual="adapter disabled in one layer", control="no association (rho = 0, layers permuted)",
        evidence={"p_value": float(p) if np.isfinite(p) else 1.0,
                  **{k: norm[k] for k in ("late_layers", "late_share", "late_p", "n_layers") if k in norm}},
        tag="05.norm_effect", **meta))
    return claims


def lock_in_stats(maps: pd.DataFrame, col: str = "effect") -> pd.DataFrame:
    """Per checkpoint after step 0 and before the end (`lock_in` rows): Spearman of its per-layer map with the final
    map, the exact / seeded permutation p (two-sided) and the smallest p the layers allow, and the fraction of the
    training steps done (`frac`). Empty when there is no such checkpoint."""
    wide = maps.pivot(index="layer", columns="step", values=col).sort_index()
    steps = sorted(wide.columns)
    rows = []
    for s in steps[:-1]:
        if s <= 0:
            continue
        rho, p, min_p = spearman_perm(wide[s], wide[steps[-1]])
        rows.append({"step": int(s), "steps": int(steps[-1]), "frac": s / steps[-1], "rho": rho, "p_value": p,
                     "min_p": min_p, "n_layers": len(wide)})
    return pd.DataFrame(rows, columns=["step", "steps", "frac", "rho", "p_value", "min_p", "n_layers"])


def lock_in_claim(maps: pd.DataFrame, chapter: str = "05", model: str = "", profile: str = "") -> Claim:
    """Rule (8)'s measurement (tag "05.lock_in"): does the adapter's per-layer adapter-only ablation map at the first
    checkpoint after step 0 already match its final map? Spearman with its exact permutation p (the control);
    every checkpoint's rho, the first checkpoint at rho >= `LOCK_RHO` with p <= 0.05, and the step counts as extra
    keys. One adapter, one seed: what it says is about fine-tuning this adapter, not pre-training."""
    t = lock_in_stats(maps)
    common = dict(metric="Spearman(per-layer adapter-only ablation effect at a checkpoint, at the end of training)",
                  counterfactual="the adapter switched off in one layer, at each training checkpoint",
                  control="no association with the final map (layers permuted)", chapter=chapter, model=model,
                  profile=profile, tag="05.lock_in")
    first = t.dropna(subset=["rho"])
    if first.empty:
        why = ("no checkpoint between step 0 and the end" if t.empty else
               "the layer maps are constant (no layer's adapter-only ablation effect differs), so they cannot be ranked")
        return Claim(f"When the adapter's layer map locks in: not testable here ({why})",
                     evidence={"testable": False, "untestable_why": why}, **common)
    r = first.iloc[0]
    locked = t[(t["rho"] >= LOCK_RHO) & (t["p_value"] <= CONTROL_P)]
    word = ("already matches its final map" if r.rho >= LOCK_RHO and r.p_value <= CONTROL_P else
            "correlates positively with its final map, but not clearly" if r.rho > 0 else "does not match its final map")
    each = ", ".join(f"step {int(x.step)}: {x.rho:+.2f}" for x in t.itertuples())
    ev = {"p_value": float(r.p_value), "rho": float(r.rho), "lock_step": int(r.step), "steps": int(r.steps),
          "lock_frac": float(r.frac), "min_p": float(r.min_p), "n_layers": int(r.n_layers),
          "rhos": {str(int(x.step)): float(x.rho) for x in t.itertuples()},
          "first_locked": int(locked["step"].iloc[0]) if len(locked) else None,
          "first_locked_frac": float(locked["frac"].iloc[0]) if len(locked) else None}
    return Claim(
        f"The adapter's per-layer adapter-only ablation map at step {int(r.step)} of {int(r.steps)} ({r.frac:.0%} of "
        f"training, the first checkpoint after 0) {word}: Spearman {r.rho:+.2f}, exact permutation p = "
        f"{r.p_value:.3g} over {int(r.n_layers)} layers{_cannot(int(r.n_layers), 'layers', r.min_p)} (every checkpoint: "
        f"{each}; one adapter, one seed)", evidence=ev, **common)
