"""Chapter 06's claims, every statement, direction and evidence key read off the measured tables:

- `loss_quality`: does lower eval loss go with better judged answers? Spearman / Pearson over the format ablation's
  adapters (content fixed, only the format differs), Fisher-z intervals, exact permutation p over the per-format
  means; a seed replicates when its own per-format Spearman has the overall sign.
- `best_vs_base`: the adapter configuration with the best mean judged score on validation prompts (out of the
  formats), against the base model in the same format on the held-out prompts: per-prompt paired differences
  (mean over seeds), studentized-bootstrap 95% CI over prompts, sign-flip p.
- `dominant_dimension`: the sweep dimension with the widest range of validation loss, tested on eval loss: per
  seed its range minus the widest other range, exact sign-flip test over seeds (one-sided).
- `hub_claim`: the base hub is still the hub of every adapted model's atlas, and the layer maps correlate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...evidence.claims import Claim
from ...evidence.judges import rank_agreement
from ...evidence.stats import bootstrap_ci, sign_flip_p
from .study import dimension_effects

HYPOTHESIS_R = -0.7  # the original study's loss-quality correlation: a hypothesis to test, not a target


def loss_quality(fm: pd.DataFrame, judge: str = "rubric") -> dict:
    """Per-format means of eval loss and judged eval score (`<judge>_eval`) over seeds, their `rank_agreement`
    (exact permutation p up to 8 formats), and per seed the Spearman over formats."""
    ad = fm[fm["strategy"] != "none"]
    means = ad.groupby("format", sort=False)[["eval_loss", f"{judge}_eval"]].mean()
    res = rank_agreement(means["eval_loss"], means[f"{judge}_eval"])
    per_seed = {int(s): rank_agreement(g["eval_loss"], g[f"{judge}_eval"])["spearman"] for s, g in ad.groupby("seed")}
    return {**res, "judge": judge, "per_seed": per_seed, "n_runs": len(ad)}


def best_vs_base(fm: pd.DataFrame, judge: str = "rubric") -> dict:
    """The format whose adapters have the best mean `<judge>_val` (validation prompts), against the base model
    in that format on the held-out prompts (`<judge>_scores`): mean difference, bootstrap CI over prompts,
    two-sided sign-flip p, per-seed differences, and how many configurations the best was chosen from."""
    ad = fm[fm["strategy"] != "none"]
    val = ad.groupby("format", sort=False)[f"{judge}_val"].mean()
    best = str(val.idxmax())
    base = fm[(fm["strategy"] == "none") & (fm["format"] == best)].iloc[0]
    runs = ad[ad["format"] == best]
    b = np.asarray(base[f"{judge}_scores"], float)
    per_run = np.array([np.asarray(s, float) for s in runs[f"{judge}_scores"]])
    d = per_run.mean(0) - b
    est, lo, hi = bootstrap_ci(d)
    seed_d = {int(s): float(np.mean(x) - b.mean()) for s, x in zip(runs["seed"], runs[f"{judge}_scores"], strict=True)}
    return {"best": best, "n_candidates": int(val.size), "best_val": float(val.max()), "base_eval": float(b.mean()),
            "best_eval": float(per_run.mean()), "diff": est, "ci": [lo, hi], "p_value": sign_flip_p(d, "two-sided"),
            "n_prompts": int(d.size), "per_seed": seed_d, "judge": judge}


def dominant_dimension(sw: pd.DataFrame) -> dict:
    """The dimension with the widest mean range of validation loss (chosen there), and on eval loss per seed its
    range minus the widest other range: mean, [min, max] over seeds, one-sided exact sign-flip p."""
    val = dimension_effects(sw, "val_loss")
    ev = dimension_effects(sw, "eval_loss").set_index("dim")
    dim = str(val.iloc[0]["dim"])
    seeds = sorted(ev.loc[dim, "per_seed"])
    d = np.array([ev.loc[dim, "per_seed"][s] - max(ev.loc[o, "per_seed"][s] for o in ev.index if o != dim)
                  for s in seeds]) if len(ev) > 1 else np.array([])
    runner = str(ev.drop(dim)["range"].idxmax()) if len(ev) > 1 else ""
    return {"dim": dim, "n_candidates": len(val), "range": float(ev.loc[dim, "range"]), "runner_up": runner,
            "runner_range": float(ev.loc[runner, "range"]) if runner else np.nan,
            "d_mean": float(d.mean()) if d.size else np.nan, "d_min": float(d.min()) if d.size else np.nan,
            "d_max": float(d.max()) if d.size else np.nan, "n_seeds": int(d.size),
            "seeds_wider": int((d > 0).sum()), "p_value": sign_flip_p(d, "greater") if d.size else np.nan,
            "min_p": 0.5 ** d.size if d.size else np.nan}


def _cannot(n: int, what: str, min_p: float) -> str:
    return f"; {n} {what} cannot give p below {min_p:.3g}" if min_p > 0.05 else ""


def sft_claims(lq: dict, bb: dict, dom: dict, hub: pd.DataFrame, chapter: str = "06", model: str = "",
               profile: str = "") -> list[Claim]:
    """The chapter's four claims from `loss_quality`, `best_vs_base`, `dominant_dimension` and `hub_survival`."""
    meta = {"chapter": chapter, "model": model, "profile": profile}
    claims = []
    rho, n = lq["spearman"], lq["n"]
    sign = np.sign(rho) if np.isfinite(rho) else 0
    rep = sum(1 for v in lq["per_seed"].values() if np.isfinite(v) and np.sign(v) == sign and sign != 0)
    direction = "lower loss goes with better judged answers" if rho < 0 else "lower loss goes with worse judged answers"
    word = ("loss and judged quality cannot be related (a constant column)" if not np.isfinite(rho) else
            direction if lq["p_value"] <= 0.05 else
            f"loss and judged quality show no clear association (measured direction: {direction})")
    claims.append(Claim(
        f"Across the {n} data formats (same content), {word}: Spearman {rho:.2f} [{lq['spearman_lo']:.2f}, "
        f"{lq['spearman_hi']:.2f}], Pearson {lq['pearson']:.2f} [{lq['pearson_lo']:.2f}, {lq['pearson_hi']:.2f}] "
        f"(Fisher z), exact permutation p = {lq['p_value']:.3g}; {lq['judge']} judge; the original study's r ≈ "
        f"{HYPOTHESIS_R} is the hypothesis{_cannot(n, 'formats', 2 / max(1, np.prod(range(1, n + 1))))}",
        metric=f"Spearman(eval loss, {lq['judge']} judge score) over per-format means",
        counterfactual="the same examples rendered in another format", control="no association (formats permuted)",
        evidence={"p_value": float(lq["p_value"]) if np.isfinite(lq["p_value"]) else 1.0,
                  "n_seeds": len(lq["per_seed"]), "seeds_replicated": rep}, **meta))
    lo, hi = bb["ci"]
    better = bb["diff"] > 0
    sig = not (lo <= 0 <= hi)
    seeds_same = sum(1 for v in bb["per_seed"].values() if np.sign(v) == np.sign(bb["diff"]) and v != 0)
    claims.append(Claim(
        f"The best adapter (format '{bb['best']}', chosen on validation prompts out of {bb['n_candidates']} formats) "
        f"{'scores higher' if better else 'scores lower'} than the base model on {bb['n_prompts']} held-out prompts"
        f"{'' if sig else ', but not significantly'}: {bb['best_eval']:.2f} vs {bb['base_eval']:.2f} "
        f"({bb['judge']} judge, 1-10; Δ {bb['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}], sign-flip p = {bb['p_value']:.3g})",
        metric=f"{bb['judge']} judge score (1-10) on held-out prompts, paired per prompt",
        counterfactual="adapter trained vs no adapter, same prompts in the same format",
        control="the base model on the same prompts",
        evidence={"ci_excludes_control": bool(sig), "n_candidates": bb["n_candidates"], "selection": "held-out",
                  "n_seeds": len(bb["per_seed"]), "seeds_replicated": seeds_same}, **meta))
    if np.isfinite(dom["p_value"]):
        wider = dom["d_mean"] > 0
        claims.append(Claim(
            f"Of {dom['n_candidates']} sweep dimensions, '{dom['dim']}' (chosen on validation loss) "
            f"{'moves held-out eval loss most' if wider else 'does not move held-out eval loss most'}: range "
            f"{dom['range']:.3f} vs {dom['runner_range']:.3f} for '{dom['runner_up']}' (per seed Δ {dom['d_mean']:+.3f} "
            f"[{dom['d_min']:+.3f}, {dom['d_max']:+.3f}] over {dom['n_seeds']} seeds, exact sign-flip p = "
            f"{dom['p_value']:.3g}{_cannot(dom['n_seeds'], 'seeds', dom['min_p'])})",
            metric="range of eval loss over a dimension's values (other settings at base)",
            counterfactual="one sweep dimension changed at a time", control="the widest range of the other dimensions",
            evidence={"p_value": float(dom["p_value"]), "n_candidates": dom["n_candidates"], "selection": "held-out",
                      "n_seeds": dom["n_seeds"], "seeds_replicated": dom["seeds_wider"]}, **meta))
    if len(hub):
        same, k = int(hub["same_hub"].sum()), len(hub)
        p = float(hub["p_value"].max()) if hub["p_value"].notna().all() else 1.0
        h = int(hub["base_hub"].iloc[0])
        ev = {"p_value": p, "n_seeds": k, "seeds_replicated": same}
        if not bool(hub["testable"].iloc[0]):
            ev |= {"testable": False, "untestable_why": "the model solves none of the atlas families, so its hub is a "
                                                       "disruption hub (KL), not where a behaviour lives"}
        claims.append(Claim(
            f"The hub (block layer {h} by {hub['metric'].iloc[0]}"
            f"{', layers ' + str(hub['excluded'].iloc[0]) + ' left out' if 'excluded' in hub and hub['excluded'].iloc[0] else ''}) "
            f"{'survives' if same == k else 'does not survive'} "
            f"fine-tuning at the hub: it is still the top layer in {same}/{k} adapted models; layer maps Spearman "
            f"{hub['rho'].min():.2f}-{hub['rho'].max():.2f} (largest permutation p = {p:.3g} over "
            f"{int(hub['n_layers'].iloc[0])} layers)",
            metric="block zero-ablation layer map of base vs adapter-merged model", counterfactual="adapter merged",
            control="layer maps unrelated (layers permuted)", evidence=ev, **meta))
    return claims
