"""Rules (5)-(10) and (12)-(15), read from the tagged claims of chapters 04-07 (their latest run for the model and
profile): each verdict follows the measured numbers the claim carries, at no more than that claim's confidence."""

from __future__ import annotations

import numpy as np

from ...evidence.claims import Claim
from ..adapters.claims import LOCK_RHO
from ..sft.claims import RANK_POINT, REL_MARGIN
from .catalog import FAILS, HOLDS, Finding, inconclusive, untestable
from .readers import lowest, lowest_of, missing, tagged

ALPHA = 0.05
FATAL = 0.5  # rule 14: "fatal" = the most removable layer keeps under half of the top-5 next tokens
EM_MARGIN = 0.05  # rule 6: "matches" = exact match at most this far below all-linear
FAR_FEWER = 3.0  # rule 6: "far fewer" = all-linear trains at least this many times the parameters
EARLY_FRAC = 0.5  # rule 8: "early" = the first checkpoint after step 0 lies within the first half of training


def _need(claims: list[Claim], chapter: str, tag: str, model: str, profile: str) -> Finding | None:
    why = missing(claims, chapter, tag, model, profile)
    return untestable(why, (chapter,)) if why else None


def _paired_verdict(ev: dict, measured: str, what: str) -> tuple[str, dict, str]:
    """(verdict, graded evidence, why) of a chapter-06 sweep claim tested by seed: holds at an intersection-union
    p <= ALPHA, fails where a comparison goes significantly the other way (Holm), else not testable here."""
    keep = {k: ev[k] for k in ("n_seeds", "seeds_replicated") if k in ev}
    if ev["p_value"] <= ALPHA:
        return HOLDS, {"p_value": ev["p_value"]} | keep, f"{what} in every comparison (p <= {ALPHA})"
    if ev.get("p_reverse", 1.0) <= ALPHA:
        return FAILS, {"p_value": ev["p_reverse"]} | keep, f"a comparison goes significantly against it (Holm p <= {ALPHA})"
    seeds = f"{ev['seeds_replicated']}/{ev['n_seeds']} seeds go its way"
    if ev["min_p"] > ALPHA:
        return "", {}, f"{ev['n_seeds']} seeds cannot give an exact p below {ev['min_p']:.3g} ({seeds})"
    return "", {}, f"no significant direction ({seeds})"


def _sweep_rule(claims: list[Claim], tag: str, model: str, profile: str, what: str, meth: dict) -> Finding:
    if (f := _need(claims, "06", tag, model, profile)) is not None:
        return f
    c = tagged(claims, tag)[0]
    if c.evidence.get("testable") is False:
        return untestable(f"chapter 06: {c.evidence.get('untestable_why', '')}", ("06",), c.statement)
    verdict, ev, why = _paired_verdict(c.evidence, c.statement, what)
    if not verdict:
        return inconclusive(c.statement, why, ("06",), c.confidence)
    return Finding(verdict, c.statement, ev, why, ("06",), c.confidence, meth)


def rule5(claims: list[Claim], model: str, profile: str) -> Finding:
    """o_proj's eval-loss gain per trainable parameter against every other module set of chapter 06's sweep."""
    return _sweep_rule(claims, "06.modules", model, profile, "o_proj has the larger gain per parameter",
                       {"metric": "eval-loss gain over the base model per million trainable parameters",
                        "counterfactual": "LoRA on one module set", "control": "every other module set swept"})


def rule6(claims: list[Claim], model: str, profile: str) -> Finding:
    """Atlas-guided (behaviour-targeted) families against all-linear: exact match and parameter ratio."""
    if (f := _need(claims, "05", "05.lora", model, profile)) is not None:
        return f
    fams = [c for c in tagged(claims, "05.lora") if c.evidence.get("basis") == "ld_frac"]
    if not fams:
        why = [c.evidence.get("untestable_why", "") for c in tagged(claims, "05.atlas_untestable")]
        return untestable("chapter 05 could not target any family by the atlas's behaviour map"
                          + (f" ({why[0]})" if why and why[0] else ""), ("05",))
    graded = [c for c in fams if c.evidence.get("testable") is not False and "vs_all_linear" in c.evidence]
    if not graded:
        c = fams[0]
        return untestable(f"chapter 05's atlas-guided comparison is not graded: {c.evidence.get('untestable_why', 'no all-linear run')}",
                          ("05",))
    rows = [(c.tag.split(".", 2)[-1], c.evidence["vs_all_linear"]) for c in graded]
    ok = [f for f, v in rows if v["d_exact_match"] >= -EM_MARGIN and v["param_ratio"] >= FAR_FEWER]
    measured = "; ".join(f"{f}: exact match {v['d_exact_match']:+.3f} vs all-linear with {v['param_ratio']:.1f}x fewer "
                         f"parameters ({int(v['n_seeds'])} seeds)" for f, v in rows)
    holds = len(ok) == len(rows)
    ev = {"n_families": len(rows), "families_agreeing": len(ok) if holds else len(rows) - len(ok)}
    return Finding(HOLDS if holds else FAILS, measured, ev,
                   f"{len(ok)}/{len(rows)} families within {EM_MARGIN:g} exact match at >= {FAR_FEWER:g}x fewer "
                   "parameters (exact-match differences are means over seeds, untested: no control)", ("05",),
                   lowest(graded), {"metric": "exact match and trainable parameters", "counterfactual":
                                    "atlas-guided layers vs every linear layer", "control": "all-linear LoRA"})


def rule7(claims: list[Claim], model: str, profile: str) -> Finding:
    """Share of the all-linear adapter's per-layer ablation effect in the last ~10% of layers (chapter 05)."""
    if (f := _need(claims, "05", "05.norm_effect", model, profile)) is not None:
        return f
    c = tagged(claims, "05.norm_effect")[0]
    ev = c.evidence
    if "late_share" not in ev or not np.isfinite(ev["late_share"]):
        return untestable("chapter 05's adapter has no layer with a positive adapter-only ablation effect", ("05",))
    k, n, share, p = int(ev["late_layers"]), int(ev["n_layers"]), ev["late_share"], ev["late_p"]
    measured = (f"the last {k} of {n} layers carry {share:.0%} of the all-linear adapter's positive adapter-only "
                f"ablation effect ({k / n:.0%} of the layers; exact p = {p:.3g} against equally many layers at random)")
    meth = {"metric": "share of the adapter-only ablation effect in the last ~10% of layers", "counterfactual":
            "the adapter switched off in one layer", "control": "a random set of as many layers"}
    if p <= ALPHA and share >= 0.5:
        return Finding(HOLDS, measured, {"p_value": p}, "most of the effect sits in the last layers, more than "
                       "in a random set of as many", ("05",), c.confidence, meth)
    if share <= k / n:
        return Finding(FAILS, measured, {}, "the last layers carry no more than their share of the layers "
                       "(descriptive: one adapter, no test of the reverse direction)", ("05",), c.confidence, meth)
    return inconclusive(measured, "the last layers carry more than their share, but not most of the effect "
                        "or not beyond random sets", ("05",), c.confidence)


def rule8(claims: list[Claim], model: str, profile: str) -> Finding:
    """Chapter 05's adapter: does its layer map at the first checkpoint after step 0 already match the final one?"""
    if (f := _need(claims, "05", "05.lock_in", model, profile)) is not None:
        return f
    c = tagged(claims, "05.lock_in")[0]
    ev = c.evidence
    if ev.get("testable") is False:
        return untestable(f"chapter 05: {ev.get('untestable_why', '')}", ("05",))
    rho, p, frac = ev["rho"], ev["p_value"], ev["lock_frac"]
    measured = (f"the adapter's layer map at step {ev['lock_step']} of {ev['steps']} ({frac:.0%} of training) vs its "
                f"final map: Spearman {rho:+.2f}, exact permutation p = {p:.3g} over {ev['n_layers']} layers")
    meth = {"metric": "Spearman(layer map at a checkpoint, final layer map)", "counterfactual":
            "the adapter switched off in one layer, at a checkpoint", "control": "no association (layers permuted)"}
    rule = (f"'early' = the first checkpoint after step 0, within the first {EARLY_FRAC:.0%} of training; 'locked in' "
            f"= Spearman >= {LOCK_RHO:g} with the final map at p <= {ALPHA} (fine-tuning an adapter, not pre-training)")
    if frac > EARLY_FRAC:
        return untestable(f"the first checkpoint after step 0 is at {frac:.0%} of training ({rule})", ("05",), measured)
    if rho >= LOCK_RHO and p <= ALPHA:
        return Finding(HOLDS, measured, {"p_value": p}, f"locked in early: {rule}", ("05",), c.confidence, meth)
    if ev["min_p"] > ALPHA:
        return inconclusive(measured, f"{ev['n_layers']} layers cannot give an exact p below {ev['min_p']:.3g} ({rule})",
                            ("05",), c.confidence)
    if rho < LOCK_RHO:
        return Finding(FAILS, measured, {}, f"not yet locked in at the first checkpoint (descriptive: one adapter, one "
                       f"seed; {rule})", ("05",), c.confidence, meth)
    return inconclusive(measured, f"rho at least {LOCK_RHO:g} but p above {ALPHA} ({rule})", ("05",), c.confidence)


def _at(layers: list[int]) -> str:
    return f" (L{', L'.join(map(str, layers))})" if layers else ""


def rule9(claims: list[Claim], model: str, profile: str) -> Finding:
    """Per steered target (chapter 04's screen, every layer): a layer pushes significantly toward the target and
    another significantly away (Holm over layers); holds in at least half the testable targets."""
    if (f := _need(claims, "04", "04.layer_signs", model, profile)) is not None:
        return f
    got = [c for c in tagged(claims, "04.layer_signs") if c.evidence.get("testable") is not False]
    if not got:
        return untestable("chapter 04 steers no target the model solves", ("04",))
    rows = [(c.tag.split(".", 2)[-1], c.evidence) for c in got]
    both = [c for c in got if c.evidence["n_toward"] >= 1 and c.evidence["n_away"] >= 1]
    every = [c for c in got if c.evidence["n_toward"] == c.evidence["n_layers"]]
    measured = "; ".join(f"{f}: toward the target at {v['n_toward']}/{v['n_layers']} layers{_at(v['layers_toward'])}, "
                         f"away at {v['n_away']}{_at(v['layers_away'])} (+{v['alpha']:g}·‖h‖, {v['n_prompts']} prompts)"
                         for f, v in rows)
    meth = {"metric": "logit-difference shift per layer (+α), selection prompts", "counterfactual":
            "the real direction added at each screened layer", "control": "no shift (sign-flip test, Holm over layers)"}
    how = (f"each layer's push tested by an exact sign-flip test over the screen's selection prompts, Holm over "
           f"layers, p <= {ALPHA}; descriptive of where (every screened layer, none chosen), not held out")
    n = len(got)
    if 2 * len(both) >= n:
        ev = {"p_value": max(c.evidence["p_value"] for c in both), "n_families": n, "families_agreeing": len(both)}
        return Finding(HOLDS, measured, ev, f"in {len(both)}/{n} targets some layer pushes toward the target and "
                       f"another away ({how})", ("04",), lowest(both), meth)
    if 2 * len(every) >= n:
        return Finding(FAILS, measured, {"n_families": n, "families_agreeing": len(every)}, f"steering works at "
                       f"every screened layer in {len(every)}/{n} targets ({how})", ("04",), lowest(every), meth)
    works = sum(1 for c in got if c.evidence["n_toward"] >= 1)
    floor = max(min(1.0, v["min_p"] * v["n_layers"]) for _, v in rows)
    why = (f"no layer pushes significantly either way in any target (the smallest Holm p these prompts allow is "
           f"{floor:.3g})" if not works and not any(c.evidence["n_away"] for c in got) else
           f"steering works at some layer in {works}/{n} targets, but a sign reversal shows in only {len(both)}")
    return inconclusive(measured, f"{why}; {how}", ("04",), lowest(got))


def rule10(claims: list[Claim], model: str, profile: str) -> Finding:
    """NF4's steering amplification ratio vs fp32 (chapter 07), bootstrap CI against 1."""
    if (f := _need(claims, "07", "07.precision.nf4", model, profile)) is not None:
        if not missing(claims, "07", "07.single_layer", model, profile):
            return untestable("chapter 07 did not measure NF4 here (its backend does not load or run on this "
                              "machine, or the profile leaves it out)", ("07",))
        return f
    c = tagged(claims, "07.precision.nf4")[0]
    ev = c.evidence
    measured = f"NF4 / fp32 steering sensitivity (KL) ratio {ev['ratio']:.3f}x (95% CI {ev['lo']:.3f}-{ev['hi']:.3f})"
    meth = {"metric": "KL(unsteered || steered), NF4 / fp32", "counterfactual": "the model loaded in NF4",
            "control": "ratio 1 (fp32)"}
    if ev["lo"] > 1:
        return Finding(HOLDS, measured, {"ci_excludes_control": True}, "the CI lies above 1", ("07",), c.confidence, meth)
    if ev["hi"] < 1:
        return Finding(FAILS, measured, {"ci_excludes_control": True}, "the CI lies below 1: NF4 damps",
                       ("07",), c.confidence, meth)
    return inconclusive(measured, "the CI includes 1", ("07",), c.confidence)


def rule12(claims: list[Claim], model: str, profile: str) -> Finding:
    """Both halves from chapter 06's sweep: rank 8 as the efficiency point, Adafactor within the margin of the other
    optimizers (each paired by seed); holds when both hold, fails when either fails."""
    rank = _sweep_rule(claims, "06.rank", model, profile, f"rank {RANK_POINT} is within {REL_MARGIN:.0%} of every "
                       f"higher rank and every lower rank is more than {REL_MARGIN:.0%} worse",
                       {"metric": "held-out eval loss", "counterfactual": "LoRA rank changed", "control": "other ranks"})
    opt = _sweep_rule(claims, "06.optimizer", model, profile, f"Adafactor is within {REL_MARGIN:.0%} of every "
                      "other optimizer's eval loss", {"metric": "held-out eval loss", "counterfactual":
                                                      "optimizer changed", "control": "the other optimizers"})
    measured = f"rank: {rank.measured} | optimizer: {opt.measured}"
    why = "; ".join(f"{k}: " + f.why.replace("not testable here (inconclusive at this run's size): ", "inconclusive, ")
                    .replace("not testable here: ", "not testable, ") for k, f in (("rank", rank), ("optimizer", opt)))
    for f in (rank, opt):
        if f.verdict == FAILS:
            return Finding(FAILS, measured, f.evidence, why, ("06",), f.ceiling, f.method)
    if rank.verdict == opt.verdict == HOLDS:
        ev = {"p_value": max(rank.evidence["p_value"], opt.evidence["p_value"])}
        return Finding(HOLDS, measured, ev, why, ("06",), lowest_of(rank.ceiling, opt.ceiling or "none"), rank.method)
    f = inconclusive(measured, why, ("06",), lowest_of(rank.ceiling, opt.ceiling) if opt.ceiling else rank.ceiling)
    f.why = f"not testable here: {why}"
    return f


def rule13(claims: list[Claim], model: str, profile: str) -> Finding:
    """Spearman(eval loss, judged quality) over chapter 06's formats: > 0 means lower loss, worse answers."""
    if (f := _need(claims, "06", "06.loss_quality", model, profile)) is not None:
        return f
    c = tagged(claims, "06.loss_quality")[0]
    ev = c.evidence
    rho, p = ev.get("spearman", float("nan")), ev["p_value"]
    measured = f"Spearman(eval loss, judged quality) over {ev.get('n_formats', '?')} formats {rho:+.2f}, p = {p:.3g}"
    meth = {"metric": "Spearman(eval loss, judge score)", "counterfactual": "another data format",
            "control": "no association"}
    keep = {k: ev[k] for k in ("p_value", "n_seeds", "seeds_replicated") if k in ev}
    if p <= ALPHA and rho > 0:
        return Finding(HOLDS, measured, keep, "lower loss goes with lower judged quality", ("06",), c.confidence, meth)
    if p <= ALPHA and rho < 0:
        return Finding(FAILS, measured, keep, "lower loss goes with better judged quality", ("06",), c.confidence, meth)
    return inconclusive(measured, "no clear association", ("06",), c.confidence)


def rule14(claims: list[Claim], model: str, profile: str) -> Finding:
    """The most removable single layer's top-5 overlap (chapter 07) against the FATAL line."""
    if (f := _need(claims, "07", "07.single_layer", model, profile)) is not None:
        return f
    c = tagged(claims, "07.single_layer")[0]
    ev = c.evidence
    measured = (f"removing the most removable single layer ({ev.get('best_layer', '?')}) keeps top-5 overlap "
                f"{ev['best_top5']:.2f} (95% CI {ev['best_lo']:.2f}-{ev['best_hi']:.2f}); the worst layer "
                f"{ev['worst_top5']:.2f}")
    meth = {"metric": "top-5 next-token overlap with the base model", "counterfactual": "one layer removed",
            "control": f"overlap {FATAL:g} (fatal below)"}
    if ev["best_hi"] < FATAL:
        return Finding(HOLDS, measured, {"ci_excludes_control": True}, f"even the best single removal keeps under "
                       f"{FATAL:g} overlap", ("07",), c.confidence, meth)
    if ev["best_lo"] > FATAL:
        return Finding(FAILS, measured, {"ci_excludes_control": True}, f"some single layer can go keeping over "
                       f"{FATAL:g} overlap", ("07",), c.confidence, meth)
    return inconclusive(measured, f"the best removal's CI includes {FATAL:g}", ("07",), c.confidence)


def rule15(claims: list[Claim], model: str, profile: str) -> Finding:
    """Per testable steering family (chapter 04): beats prompting within its fluency budget, loses, or neither."""
    if (f := _need(claims, "04", "04.steer", model, profile)) is not None:
        return f
    fams = [c for c in tagged(claims, "04.steer") if c.evidence.get("testable") is not False
            and "beats_prompting" in c.evidence]
    if not fams:
        return untestable("chapter 04 measured no prompting baseline for a testable family", ("04",))
    win = [c for c in fams if c.evidence["beats_prompting"]]
    lose = [c for c in fams if c.evidence.get("p_prompt_better", 1.0) <= ALPHA]
    cost = [c.evidence.get("nll_cost", float("nan")) for c in fams]
    budget = fams[0].evidence.get("fluency_budget", float("nan"))
    measured = (f"steering beats prompting within the {budget:g} nats/token budget in {len(win)}/{len(fams)} families, "
                f"prompting wins in {len(lose)}; fluency cost {np.nanmin(cost):+.3f} to {np.nanmax(cost):+.3f} nats/token")
    meth = {"metric": "held-out logit-difference shift; NLL per token", "counterfactual": "steering vs prompting",
            "control": "the better prompt (instruction or one-shot)"}
    if 2 * len(win) >= len(fams):
        ev = {"p_value": max(c.evidence["p_prompt"] for c in win), "n_families": len(fams),
              "families_agreeing": len(win)}
        return Finding(HOLDS, measured, ev, f"steering wins in at least half the families (each p <= {ALPHA})",
                       ("04",), lowest(win), meth)
    if 2 * len(lose) >= len(fams):
        ev = {"p_value": max(c.evidence["p_prompt_better"] for c in lose), "n_families": len(fams),
              "families_agreeing": len(lose)}
        return Finding(FAILS, measured, ev, "prompting wins in at least half the families", ("04",), lowest(lose), meth)
    return inconclusive(measured, "neither steering nor prompting wins in half the families", ("04",), lowest(fams))
