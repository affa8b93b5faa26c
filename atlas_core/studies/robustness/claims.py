"""Chapter 08's claims: the hub across prompt lengths, the separability ranking, and the hub's depth per model;
every number from the chapter's measured tables, null results worded as such."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...evidence.claims import Claim

CHAPTER = "08"
LEVEL = 0.05


def length_claims(agree: pd.DataFrame, hub_table: pd.DataFrame, ref: str = "short", **meta) -> list[Claim]:
    """Per component and other bucket: "the layer profile keeps its ranking from `ref` to that bucket" (every
    family's Spearman p, intersection-union: the largest p), and whether the hub moved."""
    out = []
    for (c, b), g in agree.groupby(["component", "bucket"], sort=False):
        g = g.dropna(subset=["spearman"])
        if g.empty:
            out.append(Claim(f"{c} layer profiles from {ref} to {b} prompts: not testable here (fewer than 3 layers swept "
                             "in both buckets)", "Spearman of per-layer ablation effects between buckets",
                             f"the same units on {b} prompts", "rho = 0", {"testable": False, "untestable_why":
                             "fewer than 3 common layers: no rank correlation"}, CHAPTER, tag=f"08.length.{c}.{b}", **meta))
            continue
        hb = hub_table[(hub_table["component"] == c)]
        h_ref = hb[hb["bucket"] == ref].set_index("method")["hub"]
        h_b = hb[hb["bucket"] == b].set_index("method")["hub"]
        same = [m for m in h_ref.index if m in h_b.index and h_ref[m] == h_b[m]]
        pos = g[(g["spearman"] > 0) & (g["p_value"] <= LEVEL)]
        p = float(g["p_value"].max())
        held = len(pos) == len(g)
        fam = g.groupby("family")["spearman"].min()
        word = (f"keep their ranking from {ref} to {b} prompts" if held else
                f"rank layers alike on {ref} and {b} prompts in direction, not significantly" if (g["spearman"] > 0).all()
                else f"do not all keep their ranking from {ref} to {b} prompts")
        out.append(Claim(
            f"{c} layer profiles {word}: "
            f"Spearman {g['spearman'].min():+.2f} to {g['spearman'].max():+.2f} over {len(g)} family x method profiles "
            f"({len(pos)} positive with p <= {LEVEL}); the hub is the same for {len(same)}/{len(h_ref)} methods "
            f"({', '.join(f'{m} L{h_ref[m]}->L{h_b.get(m, -1)}' for m in h_ref.index)})",
            f"Spearman of per-layer ablation effects ({', '.join(sorted(set(g['metric'])))}) between buckets, over the "
            "layers both swept", f"the same units on {b} prompts", "rho = 0 (no shared ranking; permutation p)",
            {"p_value": p, "n_methods": int(g["method"].nunique()), "methods_agreeing": len(same),
             "n_families": int(fam.size), "families_agreeing": int((fam > 0).sum()),
             "min_spearman": float(g["spearman"].min())},
            CHAPTER, tag=f"08.length.{c}.{b}", **meta))
    return out


def separability_claim(rank: pd.DataFrame, **meta) -> Claim:
    """"Family X is the most separable": it ranks first in every seed. Exact p: k families exchangeable per seed put
    SOME family first in all n seeds with probability k ** (1 - n), so the choice of X among k is in the test."""
    kw = dict(metric="separability = (L * I * (1 - C)) ** (1/3): localization, insertion gain, 1 - collateral",
              counterfactual="the family's own ablation, steering and knockout", control="families exchangeable "
              "(each equally likely to rank first in a seed)", chapter=CHAPTER, tag="08.separability", **meta)
    if len(rank) < 2:
        return Claim("Separability ranking: not testable here (fewer than 2 families pass the flip gate and have a "
                     "steering direction and knockout)", evidence={"testable": False, "untestable_why":
                     "fewer than 2 testable families with L, I and C measured"}, **kw)
    top, k, n = rank.iloc[0], len(rank), int(rank["n_seeds"].max())
    if int(rank["first_in"].max()) == 0:
        return Claim(f"No family is more separable than the others: {k} families tie in every seed (separability "
                     + ", ".join(f"{r.family} {r.separability:.2f} (L {r.L:.2f}, I {r.I:.2f}, C {r.C:.2f})"
                                 for r in rank.itertuples()) + ")", evidence={"p_value": 1.0, "n_seeds": n,
                                                                              "seeds_replicated": 0}, **kw)
    p = float(k ** (1 - n)) if int(top["first_in"]) == n else 1.0
    floor = f"; {k} families and {n} seeds cannot give p below {k ** (1 - n):.2g}" if k ** (1 - n) > LEVEL else ""
    order = " > ".join(f"{r.family} {r.separability:.2f}" for r in rank.itertuples())
    return Claim(f"{top['family']} is the most separable of {k} families (separability {top['separability']:.2f}, "
                 f"range {top['lo']:.2f}-{top['hi']:.2f} over {n} seeds of L; first in {int(top['first_in'])}/{n} seeds): "
                 f"{order}{floor}", evidence={"p_value": p, "n_seeds": n, "seeds_replicated": int(top["first_in"])}, **kw)


def depth_claims(hubs: pd.DataFrame, **meta) -> list[Claim]:
    """Per model and component: "the hub sits at depth d", graded from its held-out test against the median layer."""
    out = []
    for r in hubs.itertuples():
        ev = dict(r.evidence)
        ev.pop("compensated_layers", None)
        ok = ev.get("testable", True) and np.isfinite(r.p_value)
        what = (f"{r.component} layer {r.hub} of {r.n_layers} (depth {r.depth:.2f}) is {r.model}'s hub "
                f"({r.metric}; held-out {r.effect_minus_control:+.2f} vs the median layer, p = {r.p_value:.3g}; best of "
                f"{r.n_candidates} layers; atlas: {ev.get('atlas_source', '?')})" if ok else f"{r.model}'s {r.component} hub: "
                f"not testable here ({ev.get('untestable_why', 'no held-out test')}; atlas: {ev.get('atlas_source', '?')})")
        out.append(Claim(what, f"{r.metric} of zero ablation per layer, held-out cells", f"zero-ablate each {r.component}",
                         str(ev.get("control", "median layer")), ev, CHAPTER,
                         tag=f"08.hub_depth.{r.model}.{r.component}", **meta))
    return out
