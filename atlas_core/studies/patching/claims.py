"""Chapter 03's claims: per gated family, where the decision reaches the last position and the strongest
last-token write (chosen on half the prompts, tested on the other half); then where a fine-tune's change lives.
A family the model does not solve is "not testable here"."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import tasks
from ...evidence.claims import Claim
from .cross import cross_localize
from .localize import crossover, top_write
from .sites import METRIC, MIN_GAP, site_name


def untestable(solved: pd.DataFrame, family: str) -> dict:
    """Evidence of a family that fails the flip gate: not testable, with its flip count and bound."""
    r = solved.set_index("family").loc[family]
    return {"testable": False, "untestable_why": f"{family} fails the flip gate: {r['n_flipped']}/{r['n_items']} prompts "
            f"flipped (clean LD > 0 > corrupt LD), 95% lower bound {r['flip_lo']:.2f} < {tasks.FLIP_GATE}"}


def patching_claims(rows: pd.DataFrame, solved: pd.DataFrame, n_layers: int, cross: pd.DataFrame | None = None,
                    cross_family: str | None = None, *, seed: int = 0, theta: float = 0.5, **meta) -> list[Claim]:
    """Chapter 03's claims, statements and evidence from the measurements: per gated family, where the decision
    reaches the last position (`crossover`) and the strongest last-token write (`top_write`); then the
    cross-model localization of a fine-tune's change (`cross_claim`). `meta` = chapter, model, profile."""
    testable = sorted(solved.loc[solved["testable"], "family"])
    moves = {f: crossover(rows, f, n_layers, seed, theta) for f in testable}
    writes = {f: top_write(rows, f, seed) for f in testable}
    moved = {f for f, m in moves.items() if m["p"] <= 0.05}
    confirmed = {f: w["component"] for f, w in writes.items() if w["p"] <= 0.05}
    last = n_layers - 1
    held = "on held-out prompts"
    claims = []
    for f in solved["family"]:
        m, w = moves.get(f), writes.get(f)
        if m is None:
            text = f"In {f}, where the decision reaches the last position: not testable here"
            ev = untestable(solved, f)
        elif m["layer"] is None:
            text = (f"In {f}, no last-token residual before the final layer restores at least {theta:g} of the decision "
                    + (f"(best: layer {m['best_layer']}, {m['select_recovery']:.2f})" if m.get("best_layer") is not None else "")
                    + f": it reaches the last position only in layer {last}, which is sufficient by construction")
            ev = {"ci_excludes_control": False}
        else:
            ok = m["p"] <= 0.05
            text = (f"In {f}, the decision reaches the last position by layer {m['layer']} of 0–{last}: {held} its "
                    f"last-token residual restores {m['recovery']:.2f} (95% CI {m['recovery_lo']:.2f}–{m['recovery_hi']:.2f}, "
                    f"above {theta:g}), the changed tokens' residual there {m['span_recovery']:.2f}" if ok else
                    f"In {f}, that the decision reaches the last position by layer {m['layer']} of 0–{last} is not "
                    f"confirmed: chosen for restoring {m['select_recovery']:.2f} on half the prompts, its last-token "
                    f"residual restores {m['recovery']:.2f} {held}, not clearly above {theta:g}")
            ev = {"p_value": m["p"], "n_candidates": m["n_candidates"], "selection": "held-out", "n_methods": 2,
                  "methods_agreeing": int(ok) + int(m["noise_p"] <= 0.05)}
        if m is not None:
            ev |= {"n_families": len(testable), "families_agreeing": len(moved) if f in moved else len(testable) - len(moved)}
        claims.append(Claim(text, metric=METRIC + ", exact sign-flip test on held-out prompts",
                            counterfactual="clean residual stream at one layer, last position, in the corrupt prompt",
                            control=f"recovery {theta:g} (half of the clean − corrupt gap)", evidence=ev, **meta))
        if w is None:
            text, ev = f"In {f}, the strongest single write at the last token: not testable here", untestable(solved, f)
        elif w["component"] is None:
            text, ev = f"In {f}, no single write at the last token has a defined recovery", {"ci_excludes_control": False}
        else:
            ok = w["p"] <= 0.05
            noise = "noising it was not measured" if np.isnan(w["noise_score"]) else f"noising it removes {w['noise_score']:.2f}"
            text = (f"In {f}, the strongest single write at the last token is {site_name(w)} (best of {w['n_candidates']} "
                    f"on half the prompts): {held} patching it into the corrupt run restores {w['recovery']:.2f} "
                    f"(95% CI {w['recovery_lo']:.2f}–{w['recovery_hi']:.2f}){'' if ok else ', not clearly above 0'}; {noise}")
            n_m = 1 if np.isnan(w["noise_score"]) else 2
            ev = {"p_value": w["p"], "n_candidates": w["n_candidates"], "selection": "held-out", "n_methods": n_m,
                  "methods_agreeing": int(ok) + int(w["noise_p"] <= 0.05), "n_families": len(testable),
                  "families_agreeing": sum(c == w["component"] for c in confirmed.values()) if ok else len(testable) - len(confirmed)}
        claims.append(Claim(text, metric=METRIC + ", exact sign-flip test on held-out prompts",
                            counterfactual="clean write of one component at the last position in the corrupt prompt",
                            control="unpatched corrupt run (recovery 0)", evidence=ev, **meta))
    claims.append(cross_claim(cross, cross_family, solved, seed=seed, **meta))
    return claims


def cross_claim(cross: pd.DataFrame | None, family: str | None, solved: pd.DataFrame, *, seed: int = 0,
                **meta) -> Claim:
    """Where a fine-tune's change of a family's logit difference lives (`cross_localize`). Not testable when the family
    fails the flip gate, when no cross-model run was made, or when the models do not clearly differ on it (a model
    patched with itself or an identical copy can therefore never earn this claim)."""
    kw = dict(metric=METRIC.replace("over flipped prompts", "toward the source model") + ", exact sign-flip test on "
              "held-out prompts", counterfactual="one write of the fine-tune (all positions) in the base, and the "
              "reverse", control="recovery 0 (the unpatched destination)", **{"tag": "03.finetune_site", **meta})
    subject = f"Where the fine-tune changes {family or 'a family'}"
    if family is None or cross is None or not len(cross):
        why = "cross-model patching was not run" if solved["testable"].any() else tasks.untestable_why(solved)
        return Claim(f"{subject}: not testable here", evidence={"testable": False, "untestable_why": why}, **kw)
    if family not in set(solved.loc[solved["testable"], "family"]):
        return Claim(f"{subject}: not testable here", evidence=untestable(solved, family) if family in set(
            solved["family"]) else {"testable": False, "untestable_why": f"{family} was not gated"}, **kw)
    m = cross_localize(cross, seed)
    if not m["testable"]:
        return Claim(f"{subject}: not testable here, the fine-tune does not clearly change its logit difference "
                     f"(mean change {m['change']:+.2f})", evidence={"testable": False, "untestable_why":
                     f"mean LD_tuned − LD_base {m['change']:+.2f} over {m['n_prompts']} prompts: needs >= {MIN_GAP} "
                     "in size and > 2 SE, else there is no difference to localize"}, **kw)
    if m["component"] is None:
        return Claim(f"In {family}, no single write has a defined recovery toward the fine-tune",
                     evidence={"ci_excludes_control": False}, **kw)
    ok = m["p"] <= 0.05
    site = site_name(m)
    local = ok and m["recovery_lo"] >= 0.5
    back = "" if np.isnan(m["back_recovery"]) else f"; the base's value written into the fine-tune undoes {m['back_recovery']:.2f}"
    text = (f"In {family}, the fine-tune's change of the logit difference ({m['change']:+.2f} on average) "
            + (f"is {'localized in' if local else 'carried most by'} {site} (best of {m['n_candidates']} single writes on "
               f"half the prompts): on held-out prompts the fine-tune's value written into the base recovers "
               f"{m['recovery']:.2f} of it (95% CI {m['recovery_lo']:.2f}–{m['recovery_hi']:.2f}){back}" if ok else
               f"is not confirmed in any single write: {site}, chosen for recovering {m['select_recovery']:.2f} on half the "
               f"prompts, recovers {m['recovery']:.2f} on held-out prompts, not clearly above 0"))
    ev = {"p_value": m["p"], "n_candidates": m["n_candidates"], "selection": "held-out",
          "n_methods": 2 if np.isfinite(m["back_p"]) else 1, "methods_agreeing": int(ok) + int(m["back_p"] <= 0.05),
          "component": str(m["component"]), "layer": int(m["layer"]), "recovery": float(m["recovery"])}
    return Claim(text, evidence=ev, **kw)
