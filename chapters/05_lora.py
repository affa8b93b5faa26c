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
# layers the atlas ranks highest beats its controls: random layers with the same number of trainable
# parameters, random layers at the *same depths* (depth-matched), the layers the atlas picks for a
# *different* task (wrong-family), and every linear layer — at identical steps and seeds, each strategy
# at **its own learning rate**, chosen on a validation split (at short budgets a single shared rate can
# flip the ranking: Biderman et al. 2024). "The atlas wins" only where it beats every one of them.
# Then we take the adapters apart: where did the update go (‖B·A‖), which layers does the adapter need
# (adapter-only ablation), how much rank it really uses (SVD truncation), when its structure stops
# moving (checkpoints), and which components of the model it moved (atlas diff).
#
# Tasks: the ones the atlas can rank layers for on this model — the families it passes the flip gate on
# (below), in order of the gate's lower bound; their examples are the task items themselves (prompt → its
# one-token answer, loss on that token; exact match = the first generated word is the answer). A model that
# passes none falls back to the suite's `json_schema` (exact match = parsed JSON equals the expected object),
# `factual_recall` and `code_semantics` completion splits, disruption-targeted (the smoke profile's random tiny
# model does). Drift = mean KL(base ‖ adapted) of the next token at the last prompt position on the *other*
# mapped families' prompts. The base model and where its weights come from are printed below (the embedded
# defaults are dequantized Q4 weights, not the original bf16 checkpoints). Sequence length and generation caps
# are read off the data: no example is truncated, and the reference completions themselves would score exact
# match 1.
#
# **Budget** (printed below from the profile): a learning-rate search (strategies × rates, scored on
# validation loss only), then tasks × strategies × seeds adapters of `steps` steps (the search's run at
# the chosen rate is reused), sweep runs and 2 surgery adapters (reused from the grid). The default profile
# runs the smallest grid that still supports its claims: one task (the first testable family) mapped with one
# other (the wrong-family control's only candidate), 5 strategies × 5 seeds (the fewest whose exact sign-flip
# test can reach p ≤ 0.05: 1/32) of 8 steps of 8 one-token examples, a 4-rate search reaching 8× below the old grid's
# lowest rate, sweeps cut to 2 module sets, rank 1 and Lion, lock-in at 3 checkpoints and a block-only atlas
# diff — 44 trainings, ~12 s each (with its validation or evaluation) on one core, two processes sharing the
# grid (`workers: 2`); the first line below prints how long the chapter took when last benchmarked, cold and
# warm (`bench/book.py`), and the last cell this run's time. The full
# profile trains and maps every testable family, searches 7 rates on 2 seeds, runs 8 seeds, 100 steps and every
# sweep. Adapters and their evaluations are cached under `results/lora/` (atomic directories), so
# re-executing the chapter reuses them. Eight steps is a short fine-tune: read the numbers as "what a small,
# equal budget buys", not as converged performance.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import time

import altair as alt

from atlas_core import profiles
from atlas_core.evidence.claims import record
from atlas_core.model import tiny
from atlas_core.model.subject import wrap
from atlas_core.publish import charts
from atlas_core.studies import adapters
from atlas_core.studies.atlas import map_atlas

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote, number="05")
model, seeds, results_dir, subject = ctx.model, ctx.seeds, ctx.results_dir, ctx.subject
T0 = time.time()
pick = adapters.choose_families(subject, adapters.profile(profile), seeds[0], atlas_seeds=seeds)  # the flip gate picks
P, FAMS, POOL = pick.profile, pick.families, pick.pool  # POOL: trained families first, then wrong-family candidates
STRATS = list(P.get("strategies") or adapters.HEADLINE)
SEEDS = adapters.headline_seeds(seeds, P)
print(subject)
print(pick.note)
print(adapters.budget(profile, P, FAMS, STRATS, SEEDS))

# %% [markdown]
# ## Which tasks: the ones the atlas can rank layers for
# Atlas targeting is testable only where the model passes the flip gate (clean prompt prefers the answer, the
# corrupt one flips it; 95% lower bound of the flip rate ≥ 0.7 on `n_gate` items): elsewhere the atlas has no
# behaviour scores. Every family with training data is gated; the testable ones are taken in order of their
# gate lower bound (the family whose localization the gate trusts most first), up to `n_families` to train
# on and `n_pool` to map (the wrong-family control needs a second scored family). Their training examples come
# from the task items themselves (prompt → its one-token answer; train and eval share no prompt or memorizable
# content, and no eval item is one of the gate's or the atlas's prompts). A model that passes no family falls
# back to the stored completion tasks, disruption-targeted, and the note above says so.

# %%
# NBVAL_CHECK_OUTPUT
pick.gate[["family", "n_items", "n_flipped", "flip_lo", "testable"]].round(3)

# %% [markdown]
# ## The atlas we target by
# Block zero-ablation per layer on the training families (every seed, chapter 02's prompts per family), from the
# shared sweep cache when chapter 02 already ran these units, scored by the atlas's primary metric (the fraction of the
# clean logit difference an ablation removes, on items the model flips). A family the model does not
# solve has no such scores: atlas targeting is *not testable* for it, and its layers come from the
# KL map instead — labelled *disruption-targeted* in every row and claim below.
#
# The controls, drawn against the atlas's `k` layers:
# - **random-matched**: random layers with the atlas set's trainable parameters (within 5%), a new draw per seed;
# - **depth-matched**: for each atlas layer, a random *other* layer of the same depth bin (bins of
#   ⌈layers/10⌉ ≥ 2 consecutive layers) and the same size; where its bin has no free layer, the nearest
#   one — a new draw per seed. It asks whether the atlas knows more than "adapt around this depth";
# - **wrong-family**: the atlas's own rule applied to the map of *another* task — the one (among those
#   the atlas scores on the same metric) whose per-layer map correlates least (Spearman) with this
#   task's. It asks whether the task-specific map matters.
#   (`wrong_of` counts the candidates; with one, the default profile's, it is simply the other mapped family,
#   and the claims say so).

# %% tags=["hide-output"]
atlas = map_atlas(subject, POOL, ["block"], ["zero"], seeds, P["atlas_prompts"], heads=False, positions=(),
                  progress=False, neutral_prompts=0, direct=False, gate=pick.gate)
targets = adapters.targeting(atlas, FAMS, subject.arch, P["k"], pool=POOL)
scores = adapters.score_table(atlas, POOL, subject.arch, P["k"])
targets

# %% [markdown]
# Look for: the `k` tallest bars of each family — the layers its atlas adapter gets — and whether the colour says
# they were ranked by the behaviour metric or by the KL fallback.

# %% tags=["hide-input"]
alt.Chart(scores).mark_bar().encode(
    x=charts.ordinal_x(), y=alt.Y("score:Q", title="block zero-ablation score"), color="basis:N", column="family:N",
    tooltip=["family", "basis", "layer", alt.Tooltip("score:Q", format=".3f")],
).properties(width=160, height=140)

# %% [markdown]
# ## Each strategy's learning rate, chosen on validation loss
# Each family's training split is cut in two: the training items and a validation set (its last
# items, sharing no prompt or fact with them); the held-out eval set is never read here. Every
# strategy trains at each rate of a log grid, on the search seed(s); the rate with the lowest
# validation loss is that strategy's for the headline. `at_edge`: the best rate is the grid's smallest
# or largest, so a better one may lie outside it. Where a family was not searched (the default
# profile searches one), it uses the searched family's rates, and its verdict says so.

# %% tags=["hide-output"]
train, evalsets, P = adapters.task_data(subject, FAMS, P, pick.source, pick.exclude, pick.drift)
print(adapters.data_limits(train, evalsets, P))
search = adapters.run_grid(subject, adapters.lr_runs(atlas, subject, FAMS, SEEDS, P, POOL), train, evalsets,
                           workers=P.get("workers", 1), score="val")
lrs = adapters.choose_lr(search)

# %%
lrs.round(4)

# %% [markdown]
# Look for: each strategy's lowest point (its chosen rate), and curves still falling at the grid's edge.

# %% tags=["hide-input"]
alt.Chart(search).mark_line(point=True).encode(
    x=alt.X("lr:Q", scale=alt.Scale(type="log"), title="learning rate"), y=alt.Y("val_loss:Q", title="validation loss"),
    color="strategy:N", tooltip=["family", "strategy", "lr", "seed", alt.Tooltip("val_loss:Q", format=".3f")],
).properties(width=200, height=180).facet(column="family:N")

# %% [markdown]
# ## Headline: strategy × task, mean ± sd over seeds
# Every strategy adapts all seven linear modules at rank 8, at its own learning rate (`lr`); atlas and
# its controls adapt `k` layers, all-linear adapts every layer.

# %% tags=["hide-output"]
# the surgery adapter (all-linear, first seed, sweep family, its chosen rate) kept its checkpoints in the search
surg = adapters.sweep_adapter(subject, atlas, "all-linear", train, lrs, P, SEEDS[0], P["checkpoints"])
head = adapters.run_grid(subject, adapters.headline_runs(atlas, subject, FAMS, SEEDS, P, lr=lrs, pool=POOL), train,
                         evalsets, workers=P.get("workers", 1))

# %%
table, note = adapters.headline_table(head, search, P["k"], subject.arch.n_layers)
print(note)
table

# %% [markdown]
# Look for: whether the atlas points sit below their controls at a similar parameter count (left of all-linear).

# %% tags=["hide-input"]
pts = head[head.strategy != "none"]
alt.Chart(pts).mark_point(filled=True, size=60).encode(
    x=alt.X("n_trainable:Q", scale=alt.Scale(type="log"), title="trainable parameters"),
    y=alt.Y("eval_loss:Q", title="eval loss"), color="strategy:N", shape="strategy:N",
    tooltip=["family", "strategy", "seed", "lr", "layers", "exact_match", "drift"],
).properties(width=160, height=180).facet(column="family:N")

# %% [markdown]
# ## Did the atlas win?
# Paired by seed: eval loss of atlas-guided (or, where the atlas cannot target, disruption-targeted:
# `basis`) minus each other strategy, each at its own learning rate. With a handful of seeds a
# bootstrap CI is just [min, max], so each comparison is the exact sign-flip test over seeds
# (one-sided: the atlas lower); `min_p` is the smallest p that many seeds can give. `params_matched`:
# the random and depth-matched controls' trainable parameters within 5% of the atlas's in every seed.
# Negative Δ = the atlas helped.
#
# The verdict per task: the atlas wins only if it beats **every** strategy compared. That is an
# intersection-union test: the task's p is the largest of its comparisons' p's (each must pass on
# its own), then Holm corrects across tasks. It is not graded with a control missing or unmatched, or
# with fewer than 5 seeds (5 seeds give p ≥ 1/32, the default profile's; the smoke profile's 3 give p ≥ 1/8,
# so its verdict is descriptive only). Trained on one task (the default), there is nothing for Holm to correct.

# %%
cmp = adapters.compare(head)
cmp.round(4)

# %%
adapters.verdict(cmp).round(4)

# %% [markdown]
# ## Sweeps: target module, rank, optimizer
# Around the atlas-guided run on one task and the first seed (AdamW at the atlas strategy's chosen
# learning rate; Lion at a third of it, as its authors recommend; Adafactor from transformers without
# relative steps). The rate was chosen for this configuration only: the other rows are not tuned. One seed
# each, no test: descriptive. The default profile runs a subset (attention vs MLP modules, rank 1, Lion);
# the full profile every module set, 5 ranks and both other optimizers.

# %% tags=["hide-output"]
sw = adapters.run_grid(subject, adapters.sweep_runs(atlas, subject.arch, SEEDS[0], P, lrs), train, evalsets,
                       workers=P.get("workers", 1))

# %%
sw[["experiment", "value", "n_trainable", "train_loss", "eval_loss", "exact_match", "drift"]].round(4)

# %% [markdown]
# Look for: which module set, rank or optimizer reaches the lowest eval loss, and at what parameter cost.

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
abl_set = evalsets[P["sweep_family"]].examples[: P["ablation_n"]]
norms = adapters.module_norms(subject, surg)
maps = adapters.lock_in(subject, surg, abl_set, P["max_len"])
final = maps[maps.step == maps.step.max()]
norm = adapters.norm_effect(final)

# %% [markdown]
# Look for: the layers and modules with the brightest cells — where the adapter put its update.

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
trunc = adapters.truncation_curve(subject, surg, abl_set, [1, 2, 4, P["r"]], P["max_len"])
trunc.round(4)

# %% [markdown]
# ### Lock-in: when does the adapter's structure stop moving?
# Per-layer effect maps at each checkpoint; Spearman correlation with the previous checkpoint and
# with the final adapter. (At step 0 B = 0, so the map is flat and its correlations undefined.)

# %%
adapters.lock_in_table(maps).round(3)

# %% [markdown]
# Look for: the step after which the lines keep their shape (the layers that matter stop changing), only growing.

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
other = wrap("tiny-llama-d48", *tiny.build("llama", d=48, heads=2, kv_heads=1), "random init", {})
try:
    with adapters.attach(other, surg):
        pass
except ValueError as err:
    print(f"ValueError: {err}")

# %% [markdown]
# ## Atlas diff: which components did the adapter move?
# The atlas-guided adapter (first seed, sweep task) merged into a copy of the model, re-mapped on
# the same prompts, and compared with the base atlas (b − a, mean KL of zero ablation).

# %% tags=["hide-output"]
a_ad = adapters.sweep_adapter(subject, atlas, "atlas", train, lrs, P, SEEDS[0])
moved = adapters.atlas_diff(subject, a_ad, FAMS, P, seeds[:1])

# %%
print(f"adapted layers: {a_ad.target.layers} (ranked by {a_ad.target.basis})")
moved[["component", "layer", "a", "b", "delta"]].head(10).round(4)

# %% [markdown]
# Look for: bars far from zero at or after the adapted layers — the components whose ablation effect the adapter changed.

# %% tags=["hide-input"]
alt.Chart(moved).mark_bar().encode(
    x=charts.ordinal_x(), y=alt.Y("delta:Q", title="Δ ablation KL (adapted − base)"), color="component:N",
    column="component:N", tooltip=["component", "layer", alt.Tooltip("delta:Q", format=".4f")],
).properties(width=160, height=150)

# %% [markdown]
# ## Claims
# Built by `adapters.lora_claims` from the tables above only (the comparisons and verdict, the chosen
# learning rates, the norm/effect test, the targeting table): each statement's direction follows the
# measured sign and its test, says how the learning rates were chosen, and says when the number of
# seeds or layers cannot reach p ≤ 0.05.

# %%
record(adapters.lora_claims(cmp, norm, targets, P["k"], model=model, profile=profile, lrs=lrs)
       + [adapters.lock_in_claim(maps, model=model, profile=profile)])[["claim", "confidence", "why"]]

# %% tags=["remove-cell"]
print(f"chapter 05: {time.time() - T0:.0f} s")
