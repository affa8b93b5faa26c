# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Ablation atlas
#
# Which layers, components and heads does each behaviour need? We remove each one — zero, mean
# and resample ablation — and measure how far the next-token distribution moves
# (KL(clean ‖ ablated), the atlas's primary metric) and how much the answer-vs-distractor logit
# difference drops, over every task family and three prompt-sampling seeds. Every effect carries a
# bootstrap 95% CI over prompts. See the [method page](../method.md) for what each method can and
# cannot tell you.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds
results_dir = None  # default: $ATLAS_RESULTS or results/

# %% tags=["remove-cell"]
import time

import altair as alt
import pandas as pd

from atlas_core import charts, profiles
from atlas_core.atlas import map_atlas
from atlas_core.interventions import head_sweep, layer_sweep
from atlas_core.screen import attribution, recall
from atlas_core.sweep import Cache, sweep

ctx = profiles.chapter(model, profile, seeds, results_dir)
model, seeds, results_dir, subject, A = ctx.model, ctx.seeds, ctx.results_dir, ctx.subject, ctx.cfg["atlas"]
print(subject)

# %% [markdown]
# ## The sweep
# Every (component, layer, method) unit, every head under zero ablation, and block zero-ablation at
# the first and the last token only. Results come from the content-addressed cache when this model,
# these prompts and this engine version were already run (e.g. by `atlas map`).

# %% tags=["hide-output"]
t0 = time.time()
atlas = map_atlas(subject, A["families"], A["components"], A["methods"], seeds, A["prompts_per_family"],
                  heads=A["heads"], positions=A["positions"], out=f"{results_dir}/atlas-{model}-{profile}")
print(f"{len(atlas.effects)} effects; units computed={atlas.run_stats['computed']} "
      f"cached={atlas.run_stats['cached']}; {time.time() - t0:.0f} s")

# %% [markdown]
# ## Layer × family maps
# Mean KL(clean ‖ ablated) per layer and family, averaged over seeds; one panel per component and
# method. Hover for the CI of each cell.

# %% tags=["hide-input"]
e = atlas.effects
lay = e[(e["head"] == -1) & (e["position"] == "all")]
cell = (lay.groupby(["component", "method", "family", "layer"])
        .agg(kl=("kl", "mean"), kl_lo=("kl_lo", "mean"), kl_hi=("kl_hi", "mean"), ld_drop=("ld_drop", "mean"))
        .reset_index())
charts.heatmap(cell, "layer", "family", "kl", row="component", scale={"type": "sqrt"}, width=130, height=180,
               column=alt.Column("method:N", sort=["zero", "mean", "resample"]),
               tooltip=["component", "method", "family", "layer", alt.Tooltip("kl:Q", format=".3f"),
                        alt.Tooltip("kl_lo:Q", format=".3f"), alt.Tooltip("kl_hi:Q", format=".3f"),
                        alt.Tooltip("ld_drop:Q", format=".2f")])

# %% [markdown]
# ## The hub and how stable it is
# The hub is the layer whose ablation moves the output most, averaged over families. Family
# agreement is the fraction of families whose own top layer is the hub; seed stability is the
# spread of the hub over prompt-sampling seeds. Layer 0 usually dominates any ablation (everything
# downstream reads the token embedding through it), so we also report the hub without layer 0.

# %%
hubs = pd.DataFrame([atlas.hub_evidence(c, "zero", ex) for c in A["components"] for ex in ((), (0,))])
hubs["excluding"] = ["-", "layer 0"] * len(A["components"])
# NBVAL_CHECK_OUTPUT
hubs[["component", "excluding", "hub", "families_agreeing", "n_families", "seeds_replicated", "n_seeds",
      "methods_agreeing", "n_methods", "effect_minus_control", "ci_excludes_control"]].round(3)

# %% [markdown]
# ## Do ablation methods agree?
# Spearman correlation between the layer profiles of each pair of methods (per component). Low
# correlation means the method defines what "importance" means here (Miller et al. 2024).

# %%
# NBVAL_CHECK_OUTPUT
atlas.method_agreement().round(3)

# %% [markdown]
# ## Heads
# Zero-ablation of each attention head (its slice of the out-projection input), mean KL over
# families and seeds.

# %% tags=["hide-input"]
hs = atlas.head_scores().stack().rename("kl").reset_index()
alt.Chart(hs).mark_rect().encode(
    x="head:O", y="layer:O", color=alt.Color("kl:Q", scale=alt.Scale(scheme="viridis", type="sqrt")),
    tooltip=["layer", "head", alt.Tooltip("kl:Q", format=".4f")],
).properties(width=240, height=360)

# %% [markdown]
# ## First vs last token
# Zero-ablating a block only at the first real token, or only at the last token, against all
# positions. A block matters "at the last token" when the answer is computed there.

# %% tags=["hide-input"]
pos = atlas.position_effects().stack().rename("kl").reset_index()
alt.Chart(pos).mark_line(point=True).encode(
    x=charts.ordinal_x(), y=alt.Y("kl:Q", title="mean KL"), color="position:N",
    tooltip=["layer", "position", alt.Tooltip("kl:Q", format=".3f")],
).properties(width=500, height=220)

# %% [markdown]
# ## Screen vs exact
# Attribution patching estimates every unit's logit-difference change from one forward+backward
# per batch. We compare it with the exact sweep on the first seed's prompts: recall of the exact
# top-k among the screen's top-k, Pearson correlation, and the speedup. Where recall is low, the
# screen must not be used to choose what to verify.

# %%
from atlas_core import tasks

items_all, _ = tasks.validate([it for f in atlas.families for it in tasks.load_items(f)], subject.tokenizer)
items = [it for f in atlas.families
         for it in tasks.sample([i for i in items_all if i.family == f], A["prompts_per_family"], seeds[0])]
units = layer_sweep(A["components"], A["methods"], subject.arch.n_layers, subject.arch, seed=seeds[0]) + head_sweep(subject.arch)
est = attribution(subject, items, units, seed=seeds[0])
exact = sweep(subject, items, units, seed=seeds[0], progress=False)  # the atlas's own seed: cached
rec = recall(est, exact, k=A["screen_k"], by=("component", "method"))
# speed, measured on one family with an empty cache so that both sides really compute
one = [it for it in items if it.family == atlas.families[0]]
t0 = time.time()
attribution(subject, one, units, seed=seeds[0])
t_screen = time.time() - t0
t0 = time.time()
sweep(subject, one, units, seed=seeds[0], progress=False, cache=Cache(":memory:"))
t_exact = time.time() - t0
print(f"{len(units)} units x {len(one)} prompts: screen {t_screen:.1f} s, exact {t_exact:.1f} s "
      f"-> screen is {t_exact / t_screen:.0f}x faster")
rec.round(3)

# %% [markdown]
# ## Claims
# Each hub claim is graded from its own evidence: replication over seeds, agreement between ablation
# methods and families, and a paired bootstrap CI of the hub's effect minus the median layer's.

# %%
from atlas_core.claims import Claim, record

claims = []
for ev in hubs.to_dict("records"):
    where = "" if ev["excluding"] == "-" else f" (excluding {ev['excluding']})"
    claims.append(Claim(
        f"{ev['component']} layer {ev['hub']} is the zero-ablation hub{where}",
        metric="mean KL(clean || ablated) over prompts, families and seeds",
        counterfactual=f"zero-ablate the {ev['component']} write at each layer, all positions",
        control=ev["control"], evidence=ev, chapter="02", model=model, profile=profile))
ma = atlas.method_agreement()
for comp, g in ma.groupby("component"):
    low = g["spearman"].min()
    claims.append(Claim(
        f"zero, mean and resample ablation rank {comp} layers alike (min Spearman {low:.2f})",
        metric="Spearman correlation of layer effect profiles between methods",
        counterfactual="the same layers ablated by three methods", control="rho = 0.5",
        evidence={"ci_excludes_control": bool(low > 0.5), "n_methods": g.shape[0], "methods_agreeing": int((g["spearman"] > 0.5).sum()),
                  "n_seeds": len(seeds), "seeds_replicated": len(seeds)},
        chapter="02", model=model, profile=profile))
for r in rec.itertuples():
    claims.append(Claim(
        f"the attribution screen finds the exact top-{r.k} {r.component}/{r.method} units (recall {r.recall_at_k:.2f})",
        metric="recall@k of exact top-k by |logit-difference change|", counterfactual="first-order estimate vs exact ablation",
        control="recall 0.5", evidence={"ci_excludes_control": bool(r.recall_at_k > 0.5)},
        chapter="02", model=model, profile=profile))
record(claims)[["claim", "confidence", "why"]]
