"""Rules (1)-(4), (11) and (16), computed from chapter 02's stored atlas (no new forwards).

Layer selection follows the atlas: a best layer is chosen on the `select` split and tested on the `test` split
with an exact sign-flip test over the (family, seed) cells; several layers tested at once are Holm-corrected.
Cells are the atlas's (family, seed, split) means of its headline metric (`readers.metric_of`)."""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
import pandas as pd

from ...evidence.claims import Claim
from ...evidence.stats import bootstrap_ci, holm, sign_flip_p
from ..atlas import Atlas
from .catalog import FAILS, HOLDS, Finding, inconclusive, untestable
from .readers import cells, lowest, metric_of, scores, seed_scores, tagged, top

ALPHA = 0.05
ZERO_MARGIN = {"ld_frac": 0.05, "ld_frac_all": 0.05, "kl": 0.01}  # |effect| below this counts as zero (rule 3)
SUBSET = 4  # rule 11: the original study's narrow suite size
MAX_SUBSETS = 200  # rule 11: every SUBSET-family subset up to this many, else this many seeded random ones
SRC = ("02",)


def _method(atlas: Atlas, component: str) -> list[str]:
    """The ablation methods the atlas ran for a component, zero first (the hub's method)."""
    have = sorted(set(atlas.effects.loc[atlas.effects["component"] == component, "method"]))
    return sorted(have, key=lambda m: (m != "zero", m))


def _ceiling(claims: list[Claim], tag: str) -> str | None:
    """The confidence of the claim tagged exactly `tag` (None when chapter 02 recorded none)."""
    return lowest([c for c in tagged(claims, tag) if c.tag == tag])


def _per_seed(d: pd.Series, sign: int) -> tuple[int, int]:
    """(seeds whose mean difference has `sign`, seeds)."""
    s = d.groupby(level="seed").mean()
    return int((np.sign(s) == sign).sum()), int(s.size)


def rule1(atlas: Atlas, claims: list[Claim]) -> Finding:
    """L0 against the best other MLP layer (chosen on select), on the test split."""
    meths = _method(atlas, "mlp")
    if not meths:
        return untestable("chapter 02 did not ablate MLPs in this profile", SRC)
    metric, fams = metric_of(atlas)
    sel = {m: cells(atlas, "mlp", m, split="select") for m in meths}
    m0 = meths[0]
    t = cells(atlas, "mlp", m0, split="test")
    if sel[m0].empty or t.empty or 0 not in t.columns or t.shape[1] < 2:
        return untestable(f"chapter 02's atlas has no {m0}-ablation MLP effects on both splits for L0 and another layer",
                          SRC)
    rival = top(scores(sel[m0]), 1, exclude=(0,))[0]
    d = (t[0] - t[rival]).dropna()
    p_hi, p_lo = sign_flip_p(d.to_numpy(), "greater"), sign_flip_p(d.to_numpy(), "less")
    est, lo, hi = bootstrap_ci(d.to_numpy())
    tops = {m: top(scores(sel[m]))[0] for m in meths}
    fam_top = {f: top(g.mean())[0] for f, g in sel[m0].groupby(level="family")}
    measured = (f"{m0}-ablation {metric}: MLP L0 minus the best other layer (L{rival}, chosen on select prompts out of "
                f"{atlas.n_layers - 1}) on held-out cells {est:+.3f} [{lo:+.3f}, {hi:+.3f}], n = {d.size}; top MLP "
                f"layer per method: {', '.join(f'{m} L{v}' for m, v in tops.items())}")
    ok = p_hi <= ALPHA
    if not ok and p_lo > ALPHA:
        return inconclusive(measured, f"sign-flip p = {p_hi:.3g} (L0 larger) / {p_lo:.3g} (smaller)", SRC,
                            _ceiling(claims, "02.hub.mlp"))
    sign = 1 if ok else -1
    seeds_ok, n_seeds = _per_seed(d, sign)
    ev = {"p_value": p_hi if ok else p_lo, "n_candidates": atlas.n_layers - 1, "selection": "held-out",
          "n_seeds": n_seeds, "seeds_replicated": seeds_ok, "n_methods": len(meths),
          "methods_agreeing": sum((v == 0) == ok for v in tops.values()), "n_families": len(fam_top),
          "families_agreeing": sum((v == 0) == ok for v in fam_top.values()), "l0_minus_rival": est, "ci": [lo, hi]}
    why = (f"L0 {'beats' if ok else 'loses to'} the runner-up L{rival} on held-out prompts (p = {ev['p_value']:.3g}, "
           f"{len(fams)} families)")
    return Finding(HOLDS if ok else FAILS, measured, ev, why, SRC, _ceiling(claims, "02.hub.mlp"),
                   {"metric": f"{metric} of MLP ablation, held-out cells",
                    "counterfactual": f"{m0}-ablate each MLP", "control": f"the best other MLP layer (L{rival})"})


def rule2(atlas: Atlas, claims: list[Claim]) -> Finding:
    """Each method's top-3 block layers, against the first method's; per seed too."""
    meths = _method(atlas, "block")
    if len(meths) < 2:
        return untestable("chapter 02 ran fewer than 2 ablation methods on blocks in this profile", SRC)
    metric, _ = metric_of(atlas)
    t = {m: cells(atlas, "block", m) for m in meths}
    if any(x.shape[1] < 3 for x in t.values()):
        return untestable("fewer than 3 block layers with effects for some method", SRC)
    s = {m: scores(t[m]) for m in meths}
    top3 = {m: top(s[m], 3) for m in meths}
    ref = set(top3[meths[0]])
    agree = [m for m in meths if set(top3[m]) == ref]
    holds = len(agree) == len(meths)
    ss = {m: seed_scores(t[m]) for m in meths}
    seeds = sorted(set.intersection(*(set(ss[m].index) for m in meths)))
    seed_same = [len({frozenset(top(ss[m].loc[sd], 3)) for m in meths}) == 1 for sd in seeds]
    mags = ", ".join(f"{m} top {s[m].max():.2f}" for m in meths)
    measured = (f"top-3 block layers by {metric}: " + "; ".join(f"{m} {top3[m]}" for m in meths)
                + f" (magnitudes: {mags}); same set in {sum(seed_same)}/{len(seeds)} seeds")
    n = atlas.n_layers
    chance = comb(n, 3) ** -(len(meths) - 1)  # every other method drawing the reference's set at random
    # the methods are what the rule compares, so they are not counted again as replication: seeds and chance only
    ev = {"n_seeds": len(seeds), "seeds_replicated": sum(x == holds for x in seed_same), "top3": top3}
    if holds:
        ev["p_value"] = chance
    why = (f"all {len(meths)} methods share the top-3 set (chance {chance:.2g} of C({n},3) sets)" if holds else
           f"{len(meths) - len(agree)} of {len(meths)} methods have another top-3 set than {meths[0]}")
    return Finding(HOLDS if holds else FAILS, measured, ev, why, SRC, _ceiling(claims, "02.agreement.block"),
                   {"metric": f"top-3 block layers by {metric}", "counterfactual": "each ablation method",
                    "control": "a random top-3 set"})


def rule3(atlas: Atlas, claims: list[Claim]) -> Finding:
    """Block mean-ablation per layer: Holm-corrected sign-flip against 0, or every CI inside the zero margin."""
    if "mean" not in _method(atlas, "block"):
        return untestable("chapter 02 did not run mean ablation of blocks in this profile", SRC)
    metric, _ = metric_of(atlas)
    margin = ZERO_MARGIN.get(metric, 0.05)
    t = cells(atlas, "block", "mean")
    if t.empty:
        return untestable("chapter 02's atlas has no block mean-ablation effects for the families it can score", SRC)
    rows = []
    for layer in t.columns:
        d = t[layer].dropna().to_numpy()
        est, lo, hi = bootstrap_ci(d)
        rows.append((int(layer), est, lo, hi, sign_flip_p(d, "two-sided")))
    r = pd.DataFrame(rows, columns=["layer", "est", "lo", "hi", "p"])
    r["p_holm"] = holm(r["p"].to_numpy())
    big = r.loc[r["est"].abs().idxmax()]
    nonzero = r[r["p_holm"] <= ALPHA]
    inside = bool(((r["lo"] > -margin) & (r["hi"] < margin)).all())
    kl = cells(atlas, "block", "mean", metric="kl")
    measured = (f"block mean-ablation {metric} per layer: {len(nonzero)}/{len(r)} layers differ from 0 (Holm); "
                f"largest L{int(big.layer)} {big.est:+.3f} [{big.lo:+.3f}, {big.hi:+.3f}]"
                + (f"; max mean KL {scores(kl).max():.3g}" if len(kl) else ""))
    if len(nonzero):
        lay = int(nonzero.loc[nonzero["p_holm"].idxmin(), "layer"])
        seeds_ok, n_seeds = _per_seed(t[lay].dropna(), int(np.sign(r.set_index("layer").loc[lay, "est"])))
        ev = {"p_value": float(nonzero["p_holm"].min()), "n_candidates": len(r), "selection": "holm",
              "n_seeds": n_seeds, "seeds_replicated": seeds_ok, "layers_nonzero": nonzero["layer"].tolist()}
        return Finding(FAILS, measured, ev, f"{len(nonzero)} layers have a non-zero mean-ablation effect "
                       f"(Holm p <= {ALPHA} over {len(r)} layers)", SRC, None, _m3(metric))
    if inside:
        ss = seed_scores(t)
        ev = {"ci_excludes_control": True, "n_seeds": len(ss),
              "seeds_replicated": int((ss.abs().max(axis=1) < margin).sum()), "margin": margin}
        return Finding(HOLDS, measured, ev, f"every layer's 95% CI lies within ±{margin:g} (the zero margin)", SRC,
                       None, _m3(metric))
    return inconclusive(measured, f"no layer differs from 0 after Holm, but not every CI lies within ±{margin:g}", SRC)


def _m3(metric: str) -> dict:
    """Rule 3's metric / counterfactual / control."""
    return {"metric": f"{metric} of block mean-ablation per layer", "counterfactual": "mean-ablate each block",
            "control": "zero effect"}


def rule4(atlas: Atlas, claims: list[Claim]) -> Finding:
    """Last (answer) position minus first token, block zero-ablation, every layer; Holm over layers."""
    first, last = cells(atlas, "block", "zero", "first"), cells(atlas, "block", "zero", "last")
    if first.empty or last.empty:
        return untestable("chapter 02 did not ablate single positions (first / last token) in this profile", SRC)
    metric, _ = metric_of(atlas)
    d = (last - first).dropna(how="all")
    p_hi = holm(np.array([sign_flip_p(d[c].dropna().to_numpy(), "greater") for c in d.columns]))
    p_lo = holm(np.array([sign_flip_p(d[c].dropna().to_numpy(), "less") for c in d.columns]))
    won, lost = int((p_hi <= ALPHA).sum()), [int(c) for c, p in zip(d.columns, p_lo, strict=True) if p <= ALPHA]
    fam = d.groupby(level="family").mean()
    measured = (f"block zero-ablation {metric}, last minus first token: last larger at {won}/{d.shape[1]} layers "
                f"(Holm), first larger at {len(lost)} ({lost[:6]}); mean difference per layer "
                f"{d.mean().min():+.2f} to {d.mean().max():+.2f}; {d.shape[0]} cells")
    n_seeds = d.index.get_level_values("seed").nunique()
    meth = {"metric": f"{metric} of block zero-ablation at one position", "counterfactual": "ablate the last / first token",
            "control": "the other position"}
    if lost:
        seeds_ok, _ = _per_seed(d[lost[0]], -1)
        ev = {"p_value": float(p_lo.min()), "n_candidates": d.shape[1], "selection": "holm", "n_seeds": n_seeds,
              "seeds_replicated": seeds_ok, "n_families": len(fam),
              "families_agreeing": int((fam[lost] < 0).any(axis=1).sum())}
        return Finding(FAILS, measured, ev, f"the first token dominates at layer(s) {lost} (Holm p <= {ALPHA})", SRC,
                       None, meth)
    if won == d.shape[1]:
        ev = {"p_value": float(p_hi.max()), "n_seeds": n_seeds, "seeds_replicated": n_seeds, "n_families": len(fam),
              "families_agreeing": int((fam > 0).all(axis=1).sum())}
        return Finding(HOLDS, measured, ev, "the last position's effect is larger at every layer (largest Holm p "
                       f"{p_hi.max():.3g})", SRC, None, meth)
    return inconclusive(measured, f"last > first shown at {won}/{d.shape[1]} layers, first > last at none", SRC)


def rule11(atlas: Atlas, claims: list[Claim], order: list[str]) -> Finding:
    """Block zero-ablation disruption hub (KL, which every family has: the suite's full breadth, 12 families by
    default, not only the testable ones) on the first SUBSET families in suite order vs on all; all subsets."""
    fams = list(atlas.families)
    fams = [f for f in order if f in fams] + sorted(set(fams) - set(order))
    if len(fams) <= SUBSET:
        return untestable(f"{len(fams)} families the atlas can score on this model: a {SUBSET}-family suite is not narrower "
                          "than the full one", SRC)
    kw = dict(families=fams, metric="kl")
    sel, test, every = (cells(atlas, "block", "zero", split="select", **kw), cells(atlas, "block", "zero", split="test", **kw),
                        cells(atlas, "block", "zero", **kw))

    def hub(t: pd.DataFrame, fs) -> int:
        return top(scores(t[t.index.get_level_values("family").isin(list(fs))]))[0]

    if sel.empty or test.empty:
        return untestable("chapter 02's atlas has no block zero-ablation effects on both splits", SRC)
    first = fams[:SUBSET]
    h_all, h4 = hub(sel, fams), hub(sel, first)
    subs = list(combinations(fams, SUBSET))
    if len(subs) > MAX_SUBSETS:
        rng = np.random.default_rng(0)
        subs = [tuple(rng.choice(fams, SUBSET, replace=False)) for _ in range(MAX_SUBSETS)]
    moved = [hub(every, s) != hub(every, fams) for s in subs]
    measured = (f"block zero-ablation KL hub (chosen on select prompts): L{h_all} from all {len(fams)} families, "
                f"L{h4} from the first {SUBSET} in suite order, fixed before looking ({', '.join(first)}); over "
                f"{'all ' if len(subs) == comb(len(fams), SUBSET) else ''}{len(subs)} {SUBSET}-family subsets (all "
                f"prompts) the hub moves in {sum(moved)} ({np.mean(moved):.0%})")
    ceiling = _ceiling(claims, "02.hub.block")
    meth = {"metric": "block zero-ablation hub layer", "counterfactual": f"the suite cut to {SUBSET} families",
            "control": "the hub of every testable family"}
    ss = {sd: (top(scores(g.droplevel("seed")))[0], top(scores(g[g.index.get_level_values("family").isin(first)]
                                                              .droplevel("seed")))[0])
          for sd, g in every.groupby(level="seed")}
    if h4 == h_all:
        ev = {"n_seeds": len(ss), "seeds_replicated": sum(a == b for a, b in ss.values()), "moved_share": float(np.mean(moved))}
        return Finding(FAILS, measured, ev, f"the first {SUBSET} families give the same hub as all {len(fams)}", SRC,
                       ceiling, meth)
    t4 = test[test.index.get_level_values("family").isin(first)]
    d4 = (t4[h4] - t4[h_all]).dropna().to_numpy()
    dall = (test[h_all] - test[h4]).dropna().to_numpy()
    p = max(sign_flip_p(d4, "greater"), sign_flip_p(dall, "greater"))  # each suite prefers its own hub
    if p > ALPHA:
        return inconclusive(measured + f"; held-out test of each suite preferring its own hub p = {p:.3g}",
                            f"the hub moves from L{h_all} to L{h4}, but held-out prompts do not confirm it", SRC, ceiling)
    ev = {"p_value": p, "n_candidates": atlas.n_layers, "selection": "held-out", "n_seeds": len(ss),
          "seeds_replicated": sum(a != b for a, b in ss.values()), "moved_share": float(np.mean(moved))}
    return Finding(HOLDS, measured, ev, f"the hub moves from L{h_all} to L{h4} with {SUBSET} families; on held-out "
                   f"prompts each suite prefers its own hub (larger p {p:.3g})", SRC, ceiling, meth)


def rule16(atlas: Atlas, claims: list[Claim]) -> Finding:
    """At the block hub: first-token ablation vs half the all-position effect (sink), and task-vs-neutral KL."""
    first, allp = cells(atlas, "block", "zero", "first"), cells(atlas, "block", "zero")
    if first.empty or allp.empty:
        return untestable("chapter 02 did not ablate the first token alone (and every position) in this profile", SRC)
    src = [c for c in tagged(claims, "02.hub.block") if c.tag == "02.hub.block"]
    h = int(src[0].evidence["hub"]) if src and "hub" in src[0].evidence else top(scores(allp))[0]
    if h not in first.columns or h not in allp.columns:
        return untestable(f"chapter 02's atlas has no first-token effect at the hub (L{h})", SRC)
    d = (first[h] - 0.5 * allp[h].reindex(first.index)).dropna()
    p_sink, p_not = sign_flip_p(d.to_numpy(), "greater"), sign_flip_p(d.to_numpy(), "less")
    spec = cells(atlas, "block", "zero", metric="specificity", families=atlas.families)
    sp = spec[h].dropna() if h in spec else pd.Series(dtype=float)
    p_task = sign_flip_p(sp.to_numpy(), "greater") if sp.size else float("nan")
    share = first[h].mean() / allp[h].reindex(first.index).mean()
    measured = (f"block L{h} (the hub): first-token-only ablation reproduces {share:.0%} of its all-position effect "
                f"(minus half: p = {p_sink:.3g} above, {p_not:.3g} below, {d.size} cells)"
                + (f"; specificity (KL on task prompts minus neutral text) {sp.mean():+.3f}, p = {p_task:.3g}"
                   if sp.size else "; specificity not measured"))
    ceiling = _ceiling(claims, "02.hub.block")
    meth = {"metric": "share of the hub's effect reproduced by ablating the first token; KL task minus neutral",
            "counterfactual": f"zero-ablate block L{h} at the first token only", "control": "half the all-position effect"}
    sink, task = p_sink <= ALPHA, bool(np.isfinite(p_task) and p_task <= ALPHA)
    if task:  # more disruptive on task prompts than on length-matched neutral text: a task layer, sink or not
        seeds_ok, n_seeds = _per_seed(sp, 1)
        ev = {"p_value": p_task, "n_seeds": n_seeds, "seeds_replicated": seeds_ok}
        why = ("ablating it disrupts task prompts more than length-matched neutral text (a task layer)"
               + ("; it is also a sink" if sink else "; its sink share is " + ("below half" if p_not <= ALPHA
                                                                               else "not distinguishable from half")))
        return Finding(FAILS, measured, ev, why, SRC, ceiling, meth)
    seeds = d.index.get_level_values("seed").nunique()
    if p_not <= ALPHA:
        ev = {"p_value": p_not, "n_seeds": seeds, "seeds_replicated": _per_seed(d, -1)[0]}
        return Finding(FAILS, measured, ev, "the first token alone reproduces less than half of the hub's effect: "
                       "not a sink", SRC, ceiling, meth)
    if sink:
        ev = {"p_value": p_sink, "n_seeds": seeds, "seeds_replicated": _per_seed(d, 1)[0]}
        return Finding(HOLDS, measured, ev, "a first-token (sink) effect with no task-specific disruption", SRC,
                       ceiling, meth)
    return inconclusive(measured, "the first-token share is not distinguishable from one half, and the hub is not "
                        "more disruptive on task prompts than on neutral text", SRC, ceiling)
