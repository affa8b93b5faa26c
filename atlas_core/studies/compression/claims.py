"""Chapter 07's claims, filled from the measured tables only (directions follow the measured signs; a test that
fails is recorded with its measured direction and grades low or none).

- `single_layer_claim`: naive removal of the *least* harmful single layer, against the unchanged model (overlap 1).
- `criterion_claims`: each informed criterion vs the random draws at equal depth (exact rank test over draws and
  depths, Holm over the 3 criteria), and which criterion keeps most quality (best of 3, Holm-corrected).
- `healing_claims`: healed vs unhealed per prompt (sign-flip test) and per seed (replication).
- `precision_claims`: steering amplification per quantized precision (bootstrap CI over prompts vs ratio 1), and
  whether the ablation hub stays put.
- `qualitative_claims`: each configuration's constraint adherence vs fp32 (exact sign test over discordant
  prompts, Holm over configurations).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...evidence.claims import Claim
from ...evidence.stats import holm, resample_ci, sign_flip_p

CHAPTER = "07"
NAMES = {"atlas": "the atlas (least block-ablation KL)", "angular": "angular distance (Gromov et al.)",
         "block_influence": "Block Influence (ShortGPT)"}


def single_layer_claim(skips: pd.DataFrame, gen_tokens: int, **tags) -> Claim:
    """'Removing any single layer drops top-5 overlap to at most X', X = the best single layer's mean overlap."""
    one = skips[skips.kind == "single"]
    best = one.loc[one.top5.idxmax()]
    est, lo, hi = resample_ci(lambda x: x[0].mean(), (np.asarray(best.per_prompt_top5),))
    return Claim(
        f"Naively removing any single layer drops top-5 token overlap with the base model over a {gen_tokens}-token "
        f"greedy continuation to at most {est:.2f} (the most removable layer, {best.skipped}; worst "
        f"{one.top5.min():.2f}; 95% CI of the best {lo:.2f}-{hi:.2f}, {len(best.per_prompt_top5)} prompts)",
        "mean top-5 overlap over continuation positions", f"each of {len(one)} layers removed (smaller model)",
        "the unchanged model (overlap 1)", {"ci_excludes_control": bool(hi < 1.0), "n_layers": len(one),
                                            "best_top5": float(est), "best_lo": float(lo), "best_hi": float(hi),
                                            "worst_top5": float(one.top5.min()), "best_layer": str(best.skipped)},
        CHAPTER, **{"tag": "07.single_layer", **tags})


def criterion_tests(cq: pd.DataFrame, metric: str = "top5") -> pd.DataFrame:
    """Per informed criterion: the mean over depths of (its value - the random draws' mean), and an exact rank
    test against the draws: at each depth k = how many of the R draws reach the criterion's value (ties count
    against it); under the null (the criterion's set is one more random draw) each k is uniform on 0..R,
    independently across depths, so p = P(sum of k <= observed sum), exact by convolution (min p = (R+1)^-depths).
    Holm over the criteria."""
    rnd = cq[cq.criterion == "random"].pivot_table(index="draw", columns="depth", values=metric)
    R = len(rnd)
    rows = []
    for c, g in cq[cq.criterion != "random"].groupby("criterion"):
        v = g.set_index("depth")[metric]
        obs = float((v - rnd.mean()[v.index]).mean())
        k = int(sum((rnd[d] >= v[d] - 1e-12).sum() for d in v.index))
        pmf = np.ones(1)
        for _ in v.index:
            pmf = np.convolve(pmf, np.full(R + 1, 1 / (R + 1)))
        rows.append({"criterion": c, "delta_vs_random": obs, "draws_reaching": k, "p": float(pmf[:k + 1].sum()),
                     "n_draws": R, "depths": list(v.index), "min_p": float((R + 1) ** -len(v))})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out.p.to_numpy())
    return out.sort_values("delta_vs_random", ascending=False).reset_index(drop=True)


def criterion_claims(tests: pd.DataFrame, metric: str = "top-5 overlap", **tags) -> list[Claim]:
    """One claim per criterion vs random, then the best of them."""
    out = []
    R = int(tests.n_draws.iloc[0])
    for r in tests.itertuples():
        word = "keeps more" if r.delta_vs_random > 0 else "keeps less"
        out.append(Claim(
            f"Removing the layers chosen by {NAMES.get(r.criterion, r.criterion)} {word} {metric} than random layers at equal depth "
            f"({r.delta_vs_random:+.3f} averaged over depths {r.depths}; Holm p = {r.p_holm:.3g} over 3 criteria; "
            f"{R} random draws per depth, so p >= {r.min_p:.2g} before correction)",
            f"{metric} on test prompts", f"{r.criterion}'s layers removed (chosen on selection prompts)",
            "random layer sets of the same depth", {"p_value": float(r.p_holm)}, CHAPTER, **tags))
    best, nxt = tests.iloc[0], tests.iloc[1]
    tie = np.isclose(best.delta_vs_random, nxt.delta_vs_random)
    out.append(Claim(
        f"Of the three criteria, {NAMES.get(best.criterion, best.criterion)} "
        f"{'ties for' if tie else 'keeps'} the most {metric} at equal depth ({best.delta_vs_random:+.3f} vs random; "
        f"{'tied with' if tie else 'next'} {nxt.criterion} {nxt.delta_vs_random:+.3f})",
        f"{metric} on test prompts", "each criterion's layers removed", "random layer sets of the same depth",
        {"p_value": float(best.p_holm), "n_candidates": len(tests), "selection": "holm"}, CHAPTER, **tags))
    return out


def healing_claims(rec: pd.DataFrame, seeds, steps: int, **tags) -> list[Claim]:
    """Healed vs unhealed on top-5 overlap (per prompt), held-out text loss and task accuracy (per seed)."""
    un = rec[rec.state == "unhealed"].drop_duplicates("skipped").set_index("skipped")
    he = rec[rec.state == "healed"].drop_duplicates(["skipped", "seed"])  # two criteria may pick one set
    out = []
    d_prompt = np.mean([np.asarray(g.per_prompt_top5.tolist()).mean(0) - np.asarray(un.loc[s, "per_prompt_top5"])
                        for s, g in he.groupby("skipped")], axis=0)
    for metric, better, what in (("top5", 1, "top-5 overlap with the base"), ("heal_loss", -1, "held-out text loss"),
                                 ("accuracy", 1, "task accuracy")):
        gain = (better * (he[metric] - he.skipped.map(un[metric]))).groupby(he.seed).mean()
        ev = {"n_seeds": len(gain), "seeds_replicated": int((gain > 0).sum()) if gain.mean() > 0 else int((gain < 0).sum())}
        if metric == "top5":
            ev["p_value"] = sign_flip_p(d_prompt, "greater" if d_prompt.mean() > 0 else "less")
        word = "improves" if gain.mean() > 0 else "worsens" if gain.mean() < 0 else "leaves unchanged"
        base = float(rec.loc[rec.state == "base", metric].iloc[0])
        out.append(Claim(
            f"LoRA healing ({steps} steps on held-out general text) {word} {what} of the skipped models: "
            f"{un[metric].mean():.3f} unhealed -> {he[metric].mean():.3f} healed (base {base:.3f}; "
            f"{un.shape[0]} removals x {len(gain)} seeds)",
            metric, "healing adapter attached to the smaller model", "the same smaller model unhealed", ev,
            CHAPTER, **tags))
    return out


def precision_claims(amp: pd.DataFrame, hubs: pd.DataFrame, cond: str, **tags) -> list[Claim]:
    """Steering amplification under each quantized precision, and whether the ablation hub moves."""
    out = []
    for r in amp[amp.condition == cond].itertuples():
        word = "amplifies" if r.ratio > 1 else "damps"
        out.append(Claim(
            f"{r.precision} {word} the steering effect ({cond}) by {r.ratio:.3f}x vs fp32 (95% CI {r.lo:.3f}-{r.hi:.3f},"
            f" {r.n_prompts} prompts; KL {r.kl:.3g} vs {r.kl_fp32:.3g}; the original study reported 476x for NF4)",
            "mean KL(unsteered || steered) of the next token, ratio to fp32", f"model loaded in {r.precision}",
            "the same unit on the fp32 model (ratio 1)",
            {"ci_excludes_control": bool(not (r.lo <= 1 <= r.hi)), "ratio": float(r.ratio), "lo": float(r.lo),
             "hi": float(r.hi), "n_prompts": int(r.n_prompts)}, CHAPTER,
            **{"tag": f"07.precision.{str(r.precision).lower()}", **tags}))
    ref = int(hubs.loc[hubs.precision == "fp32", "hub_layer"].iloc[0])
    agree = int((hubs.hub_layer == ref).sum())
    out.append(Claim(
        f"The block-ablation hub {'stays at' if agree == len(hubs) else 'moves from'} layer {ref} under "
        f"{agree}/{len(hubs)} precisions (min Spearman of the layer map vs fp32 {hubs.spearman_vs_fp32.min():.2f})",
        "argmax layer of mean KL of block zero-ablation", "model loaded at each precision", "the fp32 atlas",
        {"methods_agreeing": agree, "n_methods": len(hubs)}, CHAPTER, **tags))
    return out


def qualitative_claims(summ: pd.DataFrame, ref: str = "fp32", **tags) -> list[Claim]:
    """Each configuration's constraint adherence vs `ref` (paired sign test, Holm over configurations)."""
    s = summ[summ.config != ref].copy()
    s["p_holm"] = holm(s.p_vs_ref.to_numpy())
    base = float(summ.loc[summ.config == ref, "adherence"].iloc[0])
    return [Claim(
        f"{r.config} meets {r.adherence:.0%} of {r.n} prompt constraints vs {base:.0%} for {ref} "
        f"({r.n_discordant} prompts differ; Holm p = {r.p_holm:.3g} over {len(s)} configurations); degenerate "
        f"{r.degenerate:.0%}", "constraint adherence (programmatic checks)", f"configuration {r.config}",
        f"the {ref} model on the same prompts", {"p_value": float(r.p_holm)}, CHAPTER, **tags) for r in s.itertuples()]
