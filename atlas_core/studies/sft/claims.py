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
- `sweep_rule_claims`: chapter 08's rules (5) and (12) on the sweep (o_proj's gain per parameter, rank 8 as the
  efficiency point, Adafactor within a margin of the other optimizers), paired by seed, exact sign-flip tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...evidence.claims import Claim
from ...evidence.judges import rank_agreement
from ...evidence.stats import bootstrap_ci, holm, sign_flip_p
from .study import dimension_effects

HYPOTHESIS_R = -0.7  # the original study's loss-quality correlation: a hypothesis to test, not a target
# rules (5) and (12) of chapter 08, fixed before any run: "within the margin" = eval loss at most REL_MARGIN above
# the other configuration's (a ratio, so it does not depend on the loss's scale); rank 8 and Adafactor are the rules'
REL_MARGIN = 0.02
RANK_POINT, OPTIMIZER, TARGET_MODULES = 8, "adafactor", "o"
LEVEL = 0.05


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
                  "n_seeds": len(lq["per_seed"]), "seeds_replicated": rep,
                  "spearman": float(rho), "n_formats": int(n)}, tag="06.loss_quality", **meta))
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


def dim_wide(sw: pd.DataFrame, dim: str, base_value, col: str = "eval_loss") -> pd.DataFrame:
    """One sweep dimension's runs (its configurations and the base configuration, labelled `base_value`) as a
    seed x value table of `col`."""
    d = sw[sw["dim"].isin(["base", dim])]
    d = d.assign(label=[str(base_value) if x == "base" else str(v) for x, v in zip(d["dim"], d["value"], strict=True)])
    return d.pivot_table(index="seed", columns="label", values=col)


def paired(wide: pd.DataFrame, ref: str, others: list[str], diff, want: str) -> dict:
    """`ref` against each of `others`, paired by seed: d = diff(ref column, other column) per seed, one-sided exact
    sign-flip p in the rule's direction (`want`: "less" / "greater") and the reverse; the intersection-union p
    (largest), the smallest Holm-corrected reverse p, and the seeds where every comparison goes the rule's way."""
    rev = "greater" if want == "less" else "less"
    ds = {o: np.asarray(diff(wide[ref], wide[o]), float) for o in others}
    p = {o: sign_flip_p(d, want) for o, d in ds.items()}
    pr = holm(np.array([sign_flip_p(d, rev) for d in ds.values()]))
    ok = np.all([(d < 0) if want == "less" else (d > 0) for d in ds.values()], axis=0) if ds else np.array([])
    n = len(wide)
    return {"p_value": max(p.values()) if p else float("nan"), "p_each": p, "p_reverse": float(np.min(pr)) if ds
            else float("nan"), "n_seeds": n, "seeds_replicated": int(ok.sum()), "min_p": 0.5 ** n,
            "d_mean": {o: float(d.mean()) for o, d in ds.items()}}


def _sft_claim(stmt: str, res: dict, extra: dict, tag: str, metric: str, cf: str, ctl: str, meta: dict) -> Claim:
    ev = {k: res[k] for k in ("p_value", "n_seeds", "seeds_replicated", "min_p", "p_reverse")} | extra
    ev["p_each"] = {str(k): float(v) for k, v in res["p_each"].items()}
    return Claim(stmt + _cannot(res["n_seeds"], "seeds", res["min_p"]), metric=metric, counterfactual=cf, control=ctl,
                 evidence=ev, tag=tag, **meta)


def _absent(what: str, why: str, tag: str, metric: str, meta: dict) -> Claim:
    return Claim(f"{what}: not testable here ({why})", metric=metric, counterfactual="one sweep setting changed",
                 control="the other values of that setting", evidence={"testable": False, "untestable_why": why},
                 tag=tag, **meta)


def sweep_rule_claims(sw: pd.DataFrame, sw_base: pd.DataFrame, base: dict, chapter: str = "06", model: str = "",
                      profile: str = "") -> list[Claim]:
    """Chapter 08's rules (5) and (12) measured on the sweep (`sw`, the base model's rows `sw_base`, the base
    configuration `base`), each paired by seed with exact sign-flip tests, intersection-union over comparisons:
    "06.modules": `TARGET_MODULES` (o_proj) has the largest eval-loss gain over the base model per million trainable
    parameters of every module set swept; "06.rank": rank `RANK_POINT` is within `REL_MARGIN` of every higher rank's
    eval loss and every lower rank is more than `REL_MARGIN` worse; "06.optimizer": `OPTIMIZER` is within
    `REL_MARGIN` of every other optimizer's eval loss. Measured means and the reverse test (`p_reverse`, Holm)
    are extra keys."""
    meta = {"chapter": chapter, "model": model, "profile": profile}
    out = []
    met = "eval-loss gain over the base model per million trainable parameters, held-out examples"
    loss = sw_base.set_index("family")["eval_loss"]
    wl = dim_wide(sw, "modules", base["modules"])
    wp = dim_wide(sw, "modules", base["modules"], "n_trainable")
    fam = sw.loc[sw["dim"] == "base", "family"].iloc[0]
    eff = (loss.get(fam, np.nan) - wl) / (wp / 1e6)
    t = TARGET_MODULES
    if t not in eff or eff.shape[1] < 2:
        out.append(_absent("Whether o_proj is the most parameter-efficient LoRA target",
                           f"this profile's sweep has no o_proj-only run beside another module set ({list(eff)})",
                           "06.modules", met, meta))
    else:
        res = paired(eff, t, [c for c in eff if c != t], lambda a, b: a - b, "greater")
        m = eff.mean().sort_values(ascending=False)
        each = ", ".join(f"{k} {v:.3g} ({wp[k].mean():,.0f} params)" for k, v in m.items())
        top = m.index[0] == t
        out.append(_sft_claim(
            f"o_proj {'is' if top else 'is not'} the most parameter-efficient LoRA target of the {len(m)} module sets "
            f"swept (eval-loss gain over the base model per million trainable parameters: {each}); o_proj beats every "
            f"other set in {res['seeds_replicated']}/{res['n_seeds']} seeds (intersection-union exact sign-flip p = "
            f"{res['p_value']:.3g})", res, {"efficiency": m.to_dict(), "params": wp.mean().to_dict(), "top": str(m.index[0]),
                                            "base_loss": float(loss.get(fam, np.nan))},
            "06.modules", met, "LoRA on one module set, everything else at base", "every other module set swept", meta))
    met = "held-out eval loss, paired by seed"
    wr = dim_wide(sw, "rank", base["rank"])
    ranks = sorted(int(c) for c in wr)
    rp = str(RANK_POINT)
    if RANK_POINT not in ranks or len(ranks) < 2:
        out.append(_absent(f"Whether rank {RANK_POINT} is the efficiency point",
                           f"rank {RANK_POINT} is not among this profile's ranks {ranks}", "06.rank", met, meta))
    else:
        hi = paired(wr, rp, [str(r) for r in ranks if r > RANK_POINT], lambda a, b: a / b - 1 - REL_MARGIN, "less")
        lo = paired(wr, rp, [str(r) for r in ranks if r < RANK_POINT], lambda a, b: b / a - 1 - REL_MARGIN, "greater")
        parts = [x for x in (hi, lo) if x["p_each"]]
        res = {"p_value": max(x["p_value"] for x in parts), "p_each": {**hi["p_each"], **lo["p_each"]},
               "p_reverse": min(x["p_reverse"] for x in parts), "n_seeds": len(wr), "min_p": 0.5 ** len(wr),
               "seeds_replicated": min(x["seeds_replicated"] for x in parts)}
        m = wr.mean()
        each = ", ".join(f"rank {r} {m[str(r)]:.4f}" for r in ranks)
        out.append(_sft_claim(
            f"Rank {RANK_POINT} {'is' if res['seeds_replicated'] == res['n_seeds'] else 'is not'} the efficiency point "
            f"in every seed (held-out eval loss {each}): within {REL_MARGIN:.0%} of every higher rank and every lower "
            f"rank more than {REL_MARGIN:.0%} worse in {res['seeds_replicated']}/{res['n_seeds']} seeds "
            f"(intersection-union exact sign-flip p = {res['p_value']:.3g})", res,
            {"eval_loss": {str(r): float(m[str(r)]) for r in ranks}, "ranks": ranks,
             "lower_tested": bool(lo["p_each"]), "higher_tested": bool(hi["p_each"])},
            "06.rank", met, "LoRA rank changed, everything else at base", "the other ranks swept", meta))
    wo = dim_wide(sw, "optimizer", base["optimizer"])
    if OPTIMIZER not in wo or wo.shape[1] < 2:
        out.append(_absent(f"Whether {OPTIMIZER.capitalize()} is the practical optimizer",
                           f"this profile's sweep has no {OPTIMIZER} run beside another optimizer ({list(wo)})",
                           "06.optimizer", met, meta))
    else:
        res = paired(wo, OPTIMIZER, [c for c in wo if c != OPTIMIZER], lambda a, b: a / b - 1 - REL_MARGIN, "less")
        m = wo.mean()
        mem = dim_wide(sw, "optimizer", base["optimizer"], "peak_mb").mean()
        each = ", ".join(f"{k} {v:.4f}" for k, v in m.items())
        out.append(_sft_claim(
            f"{OPTIMIZER.capitalize()} reaches held-out eval loss within {REL_MARGIN:.0%} of every other optimizer in "
            f"{res['seeds_replicated']}/{res['n_seeds']} seeds ({each}; intersection-union exact sign-flip p = "
            f"{res['p_value']:.3g}; peak training memory "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in mem.items()) + ", descriptive)", res,
            {"eval_loss": m.to_dict(), "peak_mb": mem.to_dict()},
            "06.optimizer", met, "optimizer changed, everything else at base", "the other optimizers swept", meta))
    return out
