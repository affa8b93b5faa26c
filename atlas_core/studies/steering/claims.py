"""Chapter 04's claims: wording, direction and confidence of each steering and knockout claim come from the
measured tables (`summary`, `knockout`, `versus_prompting`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...evidence.claims import Claim


def _toward(kind: str, sign: int) -> str:
    if kind == "concept":
        return "the positive word" if sign > 0 else "the negative word"
    return "the corrupt answer" if sign > 0 else "the clean answer"


def _p(r) -> float:
    """A steering row's p-value: the larger of the paired sign-flip p against the strongest screened control and the
    empirical p against the shuffled-label draws at its own cell (never below 1/(n_shuffled + 1))."""
    ps = getattr(r, "p_shuffled", np.nan)
    return float(max(r.p_control, ps)) if np.isfinite(ps) else float(r.p_control)


def _versus_text(b, r, level: float) -> str:
    """The prompting and fluency clause of a steering claim from its `versus_prompting` row."""
    cost = b.get("nll_cost", np.nan)
    if b["beats_prompting"]:
        verdict = f"steering beats prompting (p = {b['p_prompt']:.2g}) within the {b['fluency_budget']:g} nats/token fluency budget"
    elif b["p_prompt"] <= level:
        verdict = (f"steering beats prompting (p = {b['p_prompt']:.2g}) but not within the {b['fluency_budget']:g} "
                   "nats/token fluency budget")
    elif b["p_prompt_better"] <= level:
        verdict = f"prompting beats steering (p = {b['p_prompt_better']:.2g})"
    else:
        verdict = f"steering does not beat prompting (p = {b['p_prompt']:.2g})"
    out = (f". Against prompting on the same held-out prompts the better prompt ({b['prompt']}) moves it "
           f"{b['prompt_effect']:+.2f}: {verdict}; ")
    out += (f"added at every position it costs {cost:+.3f} nats/token (95% CI {b['nll_cost_lo']:+.3f} to "
            f"{b['nll_cost_hi']:+.3f}) on {int(b['n_sentences'])} unrelated sentences" if np.isfinite(cost)
            else "its fluency cost was not measured")
    if np.isfinite(b.get("gen_n", np.nan)):
        n = int(b["gen_n"])
        aim = f"the {'positive' if r.sign > 0 else 'negative'} polarity" if r.kind == "concept" else _toward(r.kind, r.sign)
        out += (f"; greedy generations reach {aim} in {int(b['gen_steering'])}/{n} steered, "
                f"{int(b['gen_prompt'])}/{n} prompted ({b['gen_prompt_kind']}), {int(b['gen_none'])}/{n} unsteered"
                + (" (a small scored set, < 50)" if n < 50 else ""))
    return out


def steering_claims(summary: pd.DataFrame, knockout: pd.DataFrame | None = None, *, model: str, profile: str,
                    chapter: str = "04", level: float = 0.05, baselines: pd.DataFrame | None = None) -> list[Claim]:
    """Claims from `summary` (one row per target), a `knockout` table and `baselines` (`versus_prompting`). Wording
    (direction, whether the effect beats its controls, how many candidates a best was chosen from, whether steering
    beats prompting at its fluency cost) and evidence all come from the measured rows: control = the larger of the
    paired sign-flip p against the strongest screened control and the empirical p against the shuffled-label draws
    (steering; too few draws cannot pass), or a selectivity CI above 0 (knockout); breadth = testable targets that
    pass it; selection = held-out when the target's splits share nothing. The prompting comparison is stated, not
    graded. Targets the model does not solve give claims that say "not testable here"."""
    def beats(r) -> bool:
        return bool(_p(r) <= level and r.sign * (r.effect - r.control_effect) > 0)

    vs = {} if baselines is None or baselines.empty else baselines.set_index("family").to_dict("index")
    ok = [r.testable and beats(r) for r in summary.itertuples()]
    n_t, n_ok = int(summary["testable"].sum()), int(sum(ok))
    out = []
    for r in summary.itertuples():
        cf = f"add α·‖h_L‖·v̂ to the residual stream after layer {r.layer}, last token"
        ctl = (f"{int(r.n_controls)} random (covariance-matched) and shuffled-label directions of the same norm and |α|, "
               "each at its own best layer and sign on the selection prompts (the direction's candidates, at the control "
               "strength), and the shuffled-label draws at the direction's own cell; prompting (instruction, one-shot)")
        common = dict(counterfactual=cf, control=ctl, chapter=chapter, model=model, profile=profile,
                      tag=f"04.steer.{r.family}")
        metric = ("logit-difference shift toward the target, held-out prompts; paired sign-flip test vs the strongest "
                  "control and empirical p vs the shuffled-label draws; NLL per token on unrelated text")
        if not r.testable:
            out.append(Claim(f"Steering {r.family}: not testable here ({r.untestable_why})", metric=metric,
                             evidence={"testable": False, "untestable_why": r.untestable_why}, **common))
            continue
        aligned = r.sign * r.effect
        verdict = ("beyond" if beats(r) else "but not reliably beyond" if r.sign * (r.effect - r.control_effect) > 0
                   else "no more than")
        ns = getattr(r, "n_shuffled", np.nan)
        shuf = ""
        if np.isfinite(getattr(r, "p_shuffled", np.nan)):
            shuf = f", and of {int(ns)} shuffled-label draws at its cell (empirical p = {r.p_shuffled:.2g}"
            shuf += (f"; {int(ns)} draws cannot reach p ≤ {level:g})" if 1 / (ns + 1) > level else ")")
        b = vs.get(r.family)
        ev = {"p_value": _p(r), "p_control": float(r.p_control), "n_candidates": int(r.n_candidates),
              "selection": "held-out" if r.held_out else "none", "families_agreeing": n_ok, "n_families": n_t,
              "n_prompts": int(r.n)}
        if b is not None:
            ev |= {k: (v.item() if hasattr(v, "item") else v) for k, v in b.items()
                   if k in ("beats_prompting", "prompt", "prompt_effect", "p_prompt", "p_prompt_better", "nll_cost",
                            "fluency_budget", "n_sentences", "gen_n", "gen_steering", "gen_prompt", "gen_none")}
        out.append(Claim(
            f"Steering {r.family} along its contrastive direction at layer {r.layer} "
            f"({'+' if r.sign > 0 else '−'}α = {abs(r.alpha):g}·‖h‖; layer and sign chosen out of {r.n_candidates} "
            f"candidates on selection prompts) moves the logit difference {abs(r.effect):.2f} "
            f"{'toward' if aligned > 0 else 'away from'} {_toward(r.kind, r.sign)} (effect {r.effect:+.2f}, 95% CI "
            f"{r.effect_lo:+.2f} to {r.effect_hi:+.2f}, {r.n} held-out prompts), {verdict} the strongest of {int(r.n_controls)} controls "
            f"screened the same way ({r.control} {r.control_effect:+.2f}; paired sign-flip p = {r.p_control:.2g}){shuf}"
            + (_versus_text(b, r, level) if b is not None else "; no prompting baseline or fluency cost measured"),
            metric=metric, evidence=ev, **common))
    if knockout is None or knockout.empty:
        return out
    ok = knockout["testable"] & (knockout["selectivity_lo"] > 0)
    n_t, n_ok = int(knockout["testable"].sum()), int(ok.sum())
    for r in knockout.itertuples():
        push = getattr(r, "mode", "push") == "push"
        how = (f"+{r.alpha:g}·‖h‖ along the family's direction at layer {r.layer}, last token" if push else
               f"the family's layer-{r.layer} direction projected out of the residual stream after every layer, at every "
               "position (directional ablation, Arditi et al. 2024)")
        common = dict(metric="fraction of each family's clean − corrupt gap removed: target − mean |off-target|",
                      counterfactual=how,
                      control="the same edit on the other families' held-out prompts (0 = as much collateral as effect)",
                      chapter=chapter, model=model, profile=profile, tag=f"04.knockout.{r.target}")
        name = "Pushing" if push else "Ablating the direction of"
        if not r.testable:
            out.append(Claim(f"{name} {r.target}: not testable here ({r.untestable_why})",
                             evidence={"testable": False, "untestable_why": r.untestable_why}, **common))
            continue
        verdict = ("selective" if r.selectivity_lo > 0 else "less selective than its collateral" if r.selectivity_hi < 0
                   else "not distinguishable from non-selective")
        what = (f"+{r.alpha:g}·‖h‖ at layer {r.layer}, last token" if push
                else f"its layer-{r.layer} direction projected out after every layer, every position")
        out.append(Claim(
            f"{name} {r.target} ({what}; layer chosen out of {r.n_candidates} on selection prompts) removes "
            f"{r.target_effect:.2f} of its gap vs {r.off_target_effect:.2f} of {r.n_off} other families' gaps: {verdict} "
            f"(difference {r.selectivity:+.2f}, 95% CI {r.selectivity_lo:+.2f} to {r.selectivity_hi:+.2f}; off-target KL "
            f"{r.off_target_kl:.3f})",
            evidence={"ci_excludes_control": bool(r.selectivity_lo > 0), "n_candidates": int(r.n_candidates),
                      "selection": "held-out" if r.held_out else "none", "families_agreeing": n_ok, "n_families": n_t},
            **common))
    return out


def _layers(t: pd.DataFrame, col: str) -> str:
    got = [int(x) for x in t.loc[t[col], "layer"]]
    return f" (layers {', '.join(map(str, got))})" if got else ""


def layer_sign_claims(signs: pd.DataFrame, *, model: str, profile: str, chapter: str = "04",
                      level: float = 0.05) -> list[Claim]:
    """One claim per target of a `layer_signs` table (tag "04.layer_signs.<target>"): at how many screened layers the
    +α push moves significantly toward the target and at how many significantly away (exact one-sided sign-flip p
    over the selection prompts, Holm over the layers). Evidence p_value: the larger of the smallest Holm p toward
    and the smallest Holm p away (both must pass: "works at some layer and reverses at another"); the counts,
    layers and p's as extra keys. Descriptive of where: no layer is chosen, the screen's prompts are used as is."""
    out = []
    for name, t in signs.groupby("family", sort=False):
        t = t.sort_values("layer")
        kind, alpha, n, L = t["kind"].iloc[0], float(t["alpha"].iloc[0]), int(t["n"].min()), len(t)
        aim = _toward(kind, 1)
        common = dict(metric="logit-difference shift toward the target per layer (real direction, +α), selection "
                             "prompts; exact one-sided sign-flip test over prompts per layer, Holm over layers",
                      counterfactual=f"add +{alpha:g}·‖h_L‖·v̂ to the residual stream after each screened layer L, last token",
                      control="no shift (effects symmetric about 0 over prompts)", chapter=chapter, model=model,
                      profile=profile, tag=f"04.layer_signs.{name}")
        if not bool(t["testable"].iloc[0]):
            why = str(t["untestable_why"].iloc[0])
            out.append(Claim(f"Where steering {name} works and whether its sign reverses: not testable here ({why})",
                             evidence={"testable": False, "untestable_why": why}, **common))
            continue
        k, m = int(t["toward"].sum()), int(t["away"].sum())
        pt, pa = float(t["holm_toward"].min()), float(t["holm_away"].min())
        floor = float(t["min_p"].max())
        cannot = (f"; with {n} prompts and Holm over {L} layers no p can go below {min(1.0, L * floor):.3g}"
                  if L * floor > level else "")
        pos = int((t["effect"] > 0).sum())
        ev = {"p_value": max(pt, pa), "n_candidates": L, "selection": "holm", "n_layers": L, "n_toward": k,
              "n_away": m, "layers_toward": [int(x) for x in t.loc[t["toward"], "layer"]],
              "layers_away": [int(x) for x in t.loc[t["away"], "layer"]], "p_toward": pt, "p_away": pa,
              "n_positive": pos, "alpha": alpha, "n_prompts": n, "min_p": floor}
        out.append(Claim(
            f"Steering {name} with +{alpha:g}·‖h‖ on its {n} selection prompts (every screened layer, none chosen): "
            f"the push moves significantly toward {aim} at {k}/{L} layers{_layers(t, 'toward')} and significantly away "
            f"at {m}/{L}{_layers(t, 'away')} (mean effect positive at {pos}/{L}; smallest Holm p toward {pt:.3g}, "
            f"away {pa:.3g}{cannot})", evidence=ev, **common))
    return out
