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
# # 05 · LoRA: does the atlas buy parameter efficiency?
#
# The payoff of the map. We turn the ablation atlas into LoRA targets and ask whether adapting the
# layers the atlas ranks highest beats adapting random layers with the same number of trainable
# parameters, the highest-ranked *late* layers, or every linear layer — at identical steps, learning
# rate and seed. Then we take the adapters apart: where did the update go (‖B·A‖), which layers does
# the adapter need (adapter-only ablation), how much rank it really uses (SVD truncation), when its
# structure stops moving (checkpoints), and which components of the model it moved (atlas diff).
#
# Tasks: the suite's `json_schema` (exact match = parsed JSON equals the expected object),
# `factual_recall` and `code_semantics` splits. Drift = mean KL(base ‖ adapted) of the next token at
# the last prompt position on the *other* families' prompts. The base model and where its weights come
# from are printed below (the embedded defaults are dequantized Q4 weights, not the original bf16
# checkpoints). Sequence length
# and generation caps are read off the data: no example is truncated, and the reference completions
# themselves would score exact match 1.
#
# **Budget** (printed below from the profile): tasks × strategies × seeds adapters of `steps` steps,
# sweep runs and 2 surgery adapters, each evaluated on held-out examples. In the default profile this is
# ~2 min per training on one core, 50-75 min measured with two processes sharing the grid (the slowest
# chapter of the default book; the default profile starts that second process itself, `workers: 2`; the
# last cell prints this run's time). Adapters and their evaluations are cached under
# `results/lora/` (atomic directories), so re-executing the chapter reuses them. 24 steps is a short
# fine-tune: read the numbers as "what a small, equal budget buys", not as converged performance.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds
results_dir = None  # default: $ATLAS_RESULTS or results/

# %% tags=["remove-cell"]
import time

import altair as alt
import pandas as pd

from atlas_core import charts, lora, profiles, tasks
from atlas_core.atlas import diff, map_atlas
from atlas_core.claims import record

ctx = profiles.chapter(model, profile, seeds, results_dir)
model, seeds, results_dir, subject = ctx.model, ctx.seeds, ctx.results_dir, ctx.subject
P = lora.profile(profile, ctx.cfg.get("lora"))
FAMS = list(P.get("families") or tasks.TRAIN_FAMILIES)
T0 = time.time()
print(subject)
print(f"budget ({profile}): {len(FAMS)} tasks x {len(lora.STRATEGIES)} strategies x {len(seeds)} seeds = {len(FAMS) * len(lora.STRATEGIES) * len(seeds)} adapters of "
      f"{P['steps']} steps (batch {P['batch']}), evaluated on {P['n_eval']} held-out examples each")

# %% [markdown]
# ## The atlas we target by
# Block zero-ablation per layer on the training families (first seed), from the shared sweep cache
# when chapter 02 already ran these units, scored by the atlas's primary metric (the fraction of the
# clean logit difference an ablation removes, on items the model flips). A family the model does not
# solve has no such scores: atlas targeting is *not testable* for it, and its layers come from the
# KL map instead — labelled *disruption-targeted* in every row and claim below.

# %% tags=["hide-output"]
atlas = map_atlas(subject, FAMS, ["block"], ["zero"], seeds[:1], P["atlas_prompts"], heads=False, positions=(),
                  progress=False).gated(tasks.gate(subject, FAMS, n=P["n_gate"], seed=seeds[0]))
targets = lora.targeting(atlas, FAMS, subject.arch, P["k"])
scores = pd.concat([lora.atlas_scores(atlas, f)[0].rename("score").reset_index().assign(family=f, basis=b)
                    for f, b in targets["basis"].items()])
targets

# %% tags=["hide-input"]
alt.Chart(scores).mark_bar().encode(
    x=charts.ordinal_x(), y=alt.Y("score:Q", title="block zero-ablation score"), color="basis:N", column="family:N",
    tooltip=["family", "basis", "layer", alt.Tooltip("score:Q", format=".3f")],
).properties(width=160, height=140)

# %% [markdown]
# ## Headline: strategy × task, mean ± sd over seeds
# Every strategy adapts all seven linear modules at rank 8; atlas and atlas-late adapt `k` layers,
# all-linear adapts every layer. Random-matched draws a different layer set per seed with the atlas
# set's trainable-parameter count (within 5%; on a hybrid model its layers differ in size).

# %% tags=["hide-output"]
train, evalsets, P = lora.task_data(subject, FAMS, P)
print(f"max_len {P['max_len']} tokens (longest example); generation caps "
      f"{ {f: ev.max_new_tokens for f, ev in evalsets.items()} } (longest reference completion + {lora.GEN_MARGIN})")
# the surgery adapter (all-linear, first seed, sweep family) is trained first with its checkpoints
surg_fam = P["sweep_family"]
surg_t = lora.target(None, surg_fam, subject.arch, P["k"], "all-linear", r=P["r"])
surg_tc = lora.TrainConfig(P["steps"], P["lr"], P["batch"], "adamw", seeds[0], P["max_len"])
surg = lora.train(subject, surg_fam, train[surg_fam], surg_t, surg_tc, checkpoints=P["checkpoints"])
head = lora.run_grid(subject, lora.headline_runs(atlas, subject, FAMS, seeds, P), train, evalsets,
                     workers=P.get("workers", 1))

# %%
order = ["none", "atlas", "atlas-late", "random", "all-linear"]
table = lora.summarize(head, ["family", "strategy"])
table["strategy"] = pd.Categorical(table["strategy"], order)
table = table.sort_values(["family", "strategy"]).reset_index(drop=True)
lin = table[table.strategy.isin(["atlas", "all-linear"])].pivot(index="family", columns="strategy", values="n_trainable")
print(f"atlas-guided adapters train {lin['atlas'].mean() / lin['all-linear'].mean():.0%} of the all-linear "
      f"parameters (by construction: {P['k']} of {subject.arch.n_layers} layers)")
lora.fmt_pm(table)

# %% tags=["hide-input"]
pts = head[head.strategy != "none"]
alt.Chart(pts).mark_point(filled=True, size=60).encode(
    x=alt.X("n_trainable:Q", scale=alt.Scale(type="log"), title="trainable parameters"),
    y=alt.Y("eval_loss:Q", title="eval loss"), color="strategy:N", shape="strategy:N",
    tooltip=["family", "strategy", "seed", "layers", "exact_match", "drift"],
).properties(width=160, height=180).facet(column="family:N")

# %% [markdown]
# ## Did the atlas win?
# Paired by seed (same steps, learning rate, seed): eval loss of atlas-guided (or, where the atlas
# cannot target, disruption-targeted: `basis`) minus each other strategy. With a handful of seeds a
# bootstrap CI is just [min, max], so the test is the exact sign-flip test over seeds (one-sided:
# the atlas lower); `min_p` is the smallest p that many seeds can give (3 seeds: 0.125, never below
# 0.05). `params_matched`: the random control's trainable parameters within 5% of the atlas's in
# every seed; an unmatched comparison is not graded. Negative Δ = the atlas helped.

# %%
verdict = lora.compare(head)
verdict.round(3)

# %% [markdown]
# ## Sweeps: target module, rank, optimizer
# Around the atlas-guided run on one task and the first seed (AdamW at the headline learning rate;
# Lion at a third of it, as its authors recommend; Adafactor from transformers without relative
# steps).

# %% tags=["hide-output"]
sw = lora.run_grid(subject, lora.sweep_runs(atlas, subject.arch, seeds[0], P), train, evalsets, workers=P.get("workers", 1))

# %%
sw[["experiment", "value", "n_trainable", "train_loss", "eval_loss", "exact_match", "drift"]].round(4)

# %% tags=["hide-input"]
alt.Chart(sw).mark_point(filled=True, size=70).encode(
    x=alt.X("n_trainable:Q", scale=alt.Scale(type="log"), title="trainable parameters"),
    y=alt.Y("eval_loss:Q"), color="experiment:N", tooltip=["experiment", "value", "exact_match", "drift"],
).properties(width=320, height=200)

# %% [markdown]
# ## Adapter surgery
# On the all-linear adapter (every layer adapted, so the adapter itself says where it wants to
# write): the norm of each update ‖B·A‖·scaling, and the adapter-only ablation effect of each layer
# (eval-loss increase when the adapter is switched off in that layer alone).

# %% tags=["hide-output"]
abl_set = evalsets[surg_fam].examples[: P["ablation_n"]]
norms = lora.module_norms(subject, surg)
maps = lora.lock_in(subject, surg, abl_set, P["max_len"])
final = maps[maps.step == maps.step.max()]
norm = lora.norm_effect(final)

# %% tags=["hide-input"]
alt.Chart(norms).mark_rect().encode(
    x=charts.ordinal_x(), y="module:N", color=alt.Color("norm:Q", scale=alt.Scale(scheme="viridis")),
    tooltip=["layer", "module", alt.Tooltip("norm:Q", format=".3f")],
).properties(width=420, height=140)

# %%
print(f"Spearman(‖B·A‖ per layer, adapter-only ablation effect) = {norm['rho']:.2f} (exact permutation "
      f"p = {norm['p_value']:.3g}, {norm['n_layers']} layers)")
final.sort_values("effect", ascending=False).head(8).round(4)

# %% [markdown]
# ### Rank truncation
# Every B·A replaced by its best rank-r approximation (SVD). At the trained rank it is the adapter
# itself; how far down can we cut before the task loss rises toward the base model's?

# %%
trunc = lora.truncation_curve(subject, surg, abl_set, [1, 2, 4, P["r"]], P["max_len"])
trunc.round(4)

# %% [markdown]
# ### Lock-in: when does the adapter's structure stop moving?
# Per-layer effect maps at each checkpoint; Spearman correlation with the previous checkpoint and
# with the final adapter. (At step 0 B = 0, so the map is flat and its correlations undefined.)

# %%
lock = lora.lock_in_summary(maps, "effect").merge(
    lora.lock_in_summary(maps, "norm"), on="step", suffixes=("_effect", "_norm"))
lock.round(3)

# %% tags=["hide-input"]
alt.Chart(maps).mark_line(point=True).encode(
    x=charts.ordinal_x(), y=alt.Y("effect:Q", title="adapter-only ablation effect"), color="step:O",
    tooltip=["step", "layer", alt.Tooltip("effect:Q", format=".4f"), alt.Tooltip("norm:Q", format=".3f")],
).properties(width=420, height=180)

# %% [markdown]
# ### An adapter in the wrong model fails in one line
# Loading the adapter into a model it was not trained for (a tiny random Llama with different
# widths) raises a ValueError naming both shapes and both models.

# %%
from atlas_core import tiny  # noqa: E402
from atlas_core.subject import _finish  # noqa: E402

other = _finish("tiny-llama-d48", *tiny.build("llama", d=48, heads=2, kv_heads=1), "random init", {})
try:
    with lora.attach(other, surg):
        pass
except ValueError as err:
    print(f"ValueError: {err}")

# %% [markdown]
# ## Atlas diff: which components did the adapter move?
# The atlas-guided adapter (first seed, sweep task) merged into a copy of the model, re-mapped on
# the same prompts, and compared with the base atlas (b − a, mean KL of zero ablation).

# %% tags=["hide-output"]
a_t = lora.target(atlas, surg_fam, subject.arch, P["k"], "atlas", r=P["r"])
a_ad = lora.train(subject, surg_fam, train[surg_fam], a_t, surg_tc)
adapted = lora.adapted_subject(subject, a_ad)
comp = P["diff_components"]
base_atlas = map_atlas(subject, FAMS, comp, ["zero"], seeds[:1], P["atlas_prompts"], heads=False, positions=(),
                       progress=False)
new_atlas = map_atlas(adapted, FAMS, comp, ["zero"], seeds[:1], P["atlas_prompts"], heads=False, positions=(),
                      progress=False)
moved = diff(base_atlas, new_atlas)
del adapted

# %%
print(f"adapted layers: {a_t.layers} (ranked by {a_t.basis})")
moved[["component", "layer", "a", "b", "delta"]].head(10).round(4)

# %% tags=["hide-input"]
alt.Chart(moved).mark_bar().encode(
    x=charts.ordinal_x(), y=alt.Y("delta:Q", title="Δ ablation KL (adapted − base)"), color="component:N",
    column="component:N", tooltip=["component", "layer", alt.Tooltip("delta:Q", format=".4f")],
).properties(width=160, height=150)

# %% [markdown]
# ## Claims
# Built by `lora.lora_claims` from the tables above only (comparison vs random-matched layers, the
# norm/effect test, the targeting table): each statement's direction follows the measured sign and
# its test, and says when the number of seeds or layers cannot reach p ≤ 0.05.

# %%
record(lora.lora_claims(verdict, norm, targets, P["k"], model=model, profile=profile))[["claim", "confidence", "why"]]

# %% tags=["remove-cell"]
print(f"chapter 05: {time.time() - T0:.0f} s")
