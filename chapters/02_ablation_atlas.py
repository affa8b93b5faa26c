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
# and resample ablation — and measure the **fraction of the clean answer-vs-distractor logit difference
# it removes** (`ld_frac`), on the prompts the model flips (clean LD > 0, corrupt LD < 0) of the families
# it solves. KL(clean ‖ ablated) over the whole vocabulary is kept beside it as a measure of *disruption*:
# it moves under any damage, whether or not the behaviour needs the component. Every effect carries a
# studentized-bootstrap 95% CI over prompts; a "hub" is chosen on one half of the prompts and tested on
# the other. Beside each layer's total effect stand its *direct* effect (through the unembedding alone,
# McGrath et al. 2023: a small total with a large direct effect means later layers repair the ablation, not
# that the layer is unimportant), its *specificity* (KL on the task prompts minus KL on length-matched
# neutral sentences) and a *sink* flag (ablating the first token alone reproduces at least half the effect).
# See the [method page](../method.md) for what each method can and cannot tell you.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import altair as alt
import pandas as pd
from IPython.display import display

from atlas_core import profiles, tasks
from atlas_core.engine.screen import screen_claims
from atlas_core.evidence.claims import record
from atlas_core.publish import charts
from atlas_core.studies.atlas import agreement_claim, hub_claim, map_atlas, screen_vs_exact

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote, number="02")
model, seeds, results_dir, subject, A = ctx.model, ctx.seeds, ctx.results_dir, ctx.subject, ctx.cfg["atlas"]
print(subject)

# %% [markdown]
# ## The sweep
# Every (component, layer, method) unit, every head under zero ablation, and block zero-ablation at
# the first and the last token only. First, the flip gate on more prompts than the atlas samples decides which
# families are testable. Exact forwards go where claims are made (the profile's `replicate`): with
# `testable`, the testable families (every family when none is) get every unit on the first seed and their
# layer units on the other seeds (the position units, which only describe — the sink share and the chart of
# first vs last token — run on the first seed), while the other families get only the disruption map (block,
# attention and MLP under the first method, first seed, on the profile's `disruption_prompts`) — no claim
# localizes them; with `all`, every family
# gets every unit on every seed. Heads are swept exactly on the first `head_seeds` seeds: the screen below is
# checked against them, and no claim rests on a head's replication. Results come from the content-addressed
# cache when this model, these prompts and this engine version were already run (e.g. by `atlas map`).

# %% tags=["hide-output"]
gate = tasks.gate(subject, A["families"] or list(tasks.FAMILIES), n=A["n_gate"], seed=seeds[0])
atlas = map_atlas(subject, A["families"], A["components"], A["methods"], seeds, A["prompts_per_family"],
                  heads=A["heads"], positions=A["positions"], out=f"{results_dir}/atlas-{model}-{profile}",
                  gate=gate, replicate=A["replicate"], head_seeds=A["head_seeds"], neutral_prompts=A.get("neutral_prompts"),
                  disruption_prompts=A.get("disruption_prompts"))
print(f"{len(atlas.effects)} effects; units computed={atlas.run_stats['computed']} "
      f"cached={atlas.run_stats['cached']}; {atlas.run_stats['seconds']:.0f} s")

# %% [markdown]
# ## Which families can be localized
# A family is testable when the model flips its prompts reliably: the 95% Clopper-Pearson lower bound of
# the flip rate (clean LD > 0 and corrupt LD < 0) must reach the gate. Families that fail are shown in the
# disruption map below but no claim localizes them.

# %%
# NBVAL_CHECK_OUTPUT
print(f"gate: flip-rate lower bound >= {tasks.FLIP_GATE}; testable: {', '.join(atlas.testable_families) or 'none'}")
atlas.solved.round(3)

# %% [markdown]
# ## Behaviour maps: fraction of the clean logit difference removed
# Per layer and testable family (flipped prompts, averaged over seeds and both splits); one panel per
# component and method.
#
# Look for: one layer bright in every family row of a panel (a shared hub), and the same layers across methods.

# %% tags=["hide-input"]
beh = atlas.layer_map(None, None, "ld_frac").rename(columns={"value": "ld_frac"})
if beh.empty:
    print("No family is testable on this model: there is no behaviour to localize (see the disruption map).")
else:
    display(charts.heatmap(beh, "layer", "family", "ld_frac", row="component", width=130, height=120,
                           column=alt.Column("method:N", sort=["zero", "mean", "resample"]),
                           tooltip=["component", "method", "family", "layer", alt.Tooltip("ld_frac:Q", format=".2f"),
                                    alt.Tooltip("lo:Q", format=".2f"), alt.Tooltip("hi:Q", format=".2f")]))

# %% [markdown]
# ## Flipped-only vs all-item maps
# The same zero-ablation block map computed on the flipped items only (left) and on every sampled item,
# flipped or not (right), each as a fraction of the clean logit difference; below, the Spearman rank
# correlation of the two layer profiles per family and overall. A low correlation means unflipped items
# (the model already wrong, or the corruption not changing its answer) would have moved the map.
#
# Look for: the same bright layers on both sides; a layer bright on one side only is moved by unflipped items.

# %% tags=["hide-input"]
maps = atlas.item_maps("block", "zero")
if maps.empty:
    print("No family has flipped items: there is no flipped-only map to compare.")
else:
    display(charts.heatmap(maps.melt(["family", "layer"], var_name="items", value_name="ld_frac"), "layer", "family",
                           "ld_frac", column=alt.Column("items:N", sort=["flipped", "all"]), width=260, height=160))

# %%
# NBVAL_CHECK_OUTPUT
atlas.item_map_agreement("block", "zero").round(3)

# %% [markdown]
# ## Direct vs total effect
# For zero-ablation of each block, attention and MLP write: the **total** effect (the measured fraction of
# the clean logit difference lost) and the **direct** effect (the same edit seen only through the final norm,
# its scale frozen at the clean run, and the unembedding; no new forward pass). Both are fractions of the
# clean logit difference on flipped items of testable families (on a model that solves none: all items of
# every family, a statement about logit mechanics only). A layer is *compensated* when |total| < 0.5 |direct|
# with |direct| >= 0.1: later layers repair it, so a small total effect must not be read as unimportance.
#
# Look for: layers where the direct line stands well above the total line: repaired downstream, not unimportant.

# %% tags=["hide-input"]
dvt = pd.concat([atlas.direct_vs_total(c, "zero").assign(component=c) for c in A["components"]])
alt.Chart(dvt.melt(["component", "layer", "compensated"], ["total", "direct"], var_name="effect")).mark_line(
    point=True).encode(x=charts.ordinal_x(), y=alt.Y("value:Q", title="fraction of clean LD lost"), color="effect:N",
                       tooltip=["component", "layer", "effect", alt.Tooltip("value:Q", format=".3f"), "compensated"],
                       ).properties(width=260, height=160).facet(column="component:N")

# %%
# NBVAL_CHECK_OUTPUT
comp = dvt[dvt["compensated"]]
print("compensated (zero ablation): " + (", ".join(f"{r.component} {r.layer}" for r in comp.itertuples()) or "none"))

# %% [markdown]
# ## The layer map as a table
# Per component and layer (zero ablation): total and direct effect, the compensated flag, disruption (KL),
# specificity (KL on the task prompts minus KL on neutral sentences of the same token lengths; near 0 or
# negative: the layer disrupts any text, not this task), and for blocks the share of the effect the first
# token alone carries with the `sink` flag (>= 0.5). `reading` is how the map may describe each layer.

# %%
table = pd.concat([atlas.layer_table(c, "zero").assign(component=c) for c in A["components"]])
# NBVAL_CHECK_OUTPUT
table.set_index(["component", "layer"]).round(3)

# %% [markdown]
# ## Disruption maps: KL(clean ‖ ablated)
# Mean KL per layer and family (every prompt), averaged over seeds; the families no claim is about appear
# under the first method only (see the sweep above). Hover for the CI of each cell. Large KL says ablation damages the output; it does not say the component carries the task.
#
# Look for: layers bright in every family (general damage) that the behaviour maps above leave dark.

# %% tags=["hide-input"]
dis = atlas.layer_map(None, None, "kl").rename(columns={"value": "kl", "lo": "kl_lo", "hi": "kl_hi"})
charts.heatmap(dis, "layer", "family", "kl", row="component", scale={"type": "sqrt"}, width=130, height=180,
               column=alt.Column("method:N", sort=["zero", "mean", "resample"]),
               tooltip=["component", "method", "family", "layer", alt.Tooltip("kl:Q", format=".3f"),
                        alt.Tooltip("kl_lo:Q", format=".3f"), alt.Tooltip("kl_hi:Q", format=".3f")])

# %% [markdown]
# ## The hub and how stable it is
# The hub is the layer whose zero-ablation removes the largest fraction of the clean logit difference,
# averaged over testable families, **chosen on the select half of the prompts**. On the test half it must
# beat the median layer (exact sign-flip test over family x seed cells). Family agreement counts families
# whose own top layer is the hub; seeds replicate when the hub beats the median on that seed's test
# prompts; methods agree when mean and resample choose the same layer. `first_token_share` is how much of
# the effect ablating the first token alone reproduces (`sink` when >= 0.5); `compensated_layers` are the
# layers whose direct effect is at least twice their total effect. Layer 0 usually dominates any ablation, so
# we also report the hub without it.

# %%
hubs = pd.DataFrame([atlas.hub_evidence(c, "zero", ex) for c in A["components"] for ex in ((), (0,))])
cols = ["component", "excluded", "testable", "hub", "n_candidates", "control", "effect_minus_control", "p_value",
        "families_agreeing", "n_families", "seeds_replicated", "n_seeds", "methods_agreeing", "n_methods",
        "first_token_share", "sink", "compensated_layers"]
# NBVAL_CHECK_OUTPUT
hubs.reindex(columns=cols).round(3)

# %% [markdown]
# ## Do ablation methods agree?
# Spearman correlation between the layer profiles of each pair of methods (per component; test split;
# the behaviour metric on testable families, KL where none is testable), with a one-sided p-value. Low
# correlation means the method defines what "importance" means here (Miller et al. 2024).

# %%
# NBVAL_CHECK_OUTPUT
atlas.method_agreement().round(3)

# %% [markdown]
# ## Heads
# Zero-ablation of each attention head (its slice of the out-projection input), mean KL over the families
# and seeds that swept heads (the claims' families; the profile's `head_seeds`).
#
# Look for: a few bright heads within a layer (they carry its effect) rather than a uniform band.

# %% tags=["hide-input"]
hs = atlas.head_scores(metric="kl").stack().rename("kl").reset_index()
alt.Chart(hs).mark_rect().encode(
    x="head:O", y="layer:O", color=alt.Color("kl:Q", scale=alt.Scale(scheme="viridis", type="sqrt")),
    tooltip=["layer", "head", alt.Tooltip("kl:Q", format=".4f")],
).properties(width=240, height=360)

# %% [markdown]
# ## First vs last token
# Zero-ablating a block only at the first real token, or only at the last token, against all
# positions (with `replicate: testable`, the first seed's prompts). A block matters "at the last token" when
# the answer is computed there.
#
# Look for: layers where the first-token line reaches the all-positions line (a sink) and where the last token takes over.

# %% tags=["hide-input"]
pos = atlas.position_effects(metric="kl").stack().rename("kl").reset_index()
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

# The comparison uses the testable families (the logit difference means something there); on a model
# that solves none it runs on every family as a diagnostic of the screen, and its claims are not testable.

# %%
rec, speed = screen_vs_exact(subject, atlas, seeds[0], A["screen_k"])
print(speed)
rec.round(3) if rec is not None else None

# %% [markdown]
# ## Claims
# Each claim's statement and confidence come from its evidence (the hub table and the method-agreement
# test above); a claim about a model that solves no family says "not testable here".

# %%
tags = dict(chapter="02", model=model, profile=profile)
claims = [hub_claim(atlas, c, ex, **tags) for c in A["components"] for ex in ((), (0,))]
claims += [agreement_claim(atlas, c, **tags) for c in A["components"]]
claims += screen_claims(rec, atlas, **tags) if rec is not None else []
record(claims)[["claim", "confidence", "why"]]
