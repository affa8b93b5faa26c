"""Chapter 05's claims: `compare` (atlas minus each other strategy, paired by seed, exact sign-flip test over seeds),
`verdict` ("the atlas wins": it beats every strategy compared, an intersection-union test, Holm across families),
`norm_effect` (per-layer ‖B·A‖ vs adapter-only ablation effect, exact permutation test) and `lora_claims`, whose
statements and evidence come from those tables, `choose_lr` and `targeting` only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ...evidence.claims import Claim
from ...evidence.stats import holm, sign_flip_p, spearman_perm
from .targeting import CONTROLS, PARAM_TOL

MIN_SEEDS = 5  # "the atlas wins" is not graded below this many paired seeds
MIN_LRS = 4  # a learning-rate search over fewer rates caps the verdict
CONTROL_P = 0.05  # the claims grader's control criterion


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
    exact permutation p (two-sided), the smallest p the number of layers allows, and that number."""
    rho, p, min_p = spearman_perm(final["norm"], final["effect"])
    return {"rho": rho, "p_value": p, "min_p": min_p, "n_layers": len(final)}


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
        if fell:
            claims.append(Claim(f"{r.family}: atlas-guided LoRA ({tg['metric']}) against its controls is not "
                                f"testable here", evidence={"testable": False, "untestable_why": tg["why"]}, **common))
        if not r.graded:
            claims.append(Claim(f"{r.family}: whether {who} beats its controls is not graded: {r.why}",
                                evidence={"testable": False, "untestable_why": r.why}, **common))
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
                                                "p_value": float(r.p_holm)}, **common))
            continue
        # the seeds are the replicates of the test itself, so they are not counted again; breadth counts the families
        # that pass the corrected test. A disruption-targeted or capped verdict is graded by its control alone
        ev = {"p_value": float(r.p_holm), "selection": "holm"}
        if not (fell or cap):
            ev |= {"n_families": n_graded, "families_agreeing": passed if r.wins else n_graded - passed}
        claims.append(Claim(stmt + (f"; capped at low: {cap}" if cap else ""), evidence=ev, **common))
    rho, p = norm["rho"], norm["p_value"]
    word = ("cannot be related (a constant per-layer map)" if not np.isfinite(rho)
            else ("rises" if rho > 0 else "falls") if p <= CONTROL_P else "shows no clear association")
    claims.append(Claim(
        f"Per layer, the all-linear adapter's update norm ‖B·A‖ {word} with the harm of disabling it there "
        f"(Spearman {rho:.2f}, exact permutation p = {p:.3g} over {norm['n_layers']} layers"
        f"{_cannot(norm['n_layers'], 'layers', norm['min_p'])})",
        metric="Spearman(per-layer update norm, adapter-only ablation effect)",
        counterfactual="adapter disabled in one layer", control="no association (rho = 0, layers permuted)",
        evidence={"p_value": float(p) if np.isfinite(p) else 1.0}, **meta))
    return claims
