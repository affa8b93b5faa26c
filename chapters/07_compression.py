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
# # 07 · Compression: layer skipping, healing, quantization and a qualitative check
#
# The original MI-Atlas study found naive layer skipping fatal (0% top-5 token overlap for every skip
# configuration, "every layer is necessary") and left recovery fine-tuning open; Gromov et al.
# (arXiv 2403.17887) remove 20-55% of layers chosen by angular distance and heal them with QLoRA, and
# ShortGPT (arXiv 2403.03853) ranks layers by Block Influence. It also reported NF4 amplifying a
# steering intervention 476x. Here we measure all of it on this model:
#
# - **Skipping**: every single layer and contiguous runs of 2-8 layers, each as a *real smaller model*
#   (layers removed from the module list, a config that says so, a saved checkpoint) that equals the
#   engine's skip (a `block` unit zeroing the block's residual write). Quality against the base: top-1 and
#   top-5 token overlap and KL over the base's greedy continuation, task accuracy per family, perplexity on
#   held-out sentences.
# - **What to remove**, four ways at equal depth: the atlas (least block-ablation KL), angular distance
#   (Gromov), Block Influence (ShortGPT), and random draws (the control). Layers are chosen on selection
#   prompts and measured on disjoint test prompts.
# - **Healing**: a LoRA on held-out general text for one removal per criterion, over seeds; what it restores
#   (loss, accuracy, top-5 overlap) against unhealed and base; the smaller model's measured speedup.
# - **Precisions**: fp32, bf16, bitsandbytes int8 and NF4: speed at batch 1 and 8, memory, agreement with
#   fp32, and whether the same steering and ablation units act differently (amplification, hub).
# - **Qualitative**: 32 prompts with checkable constraints under each configuration.
#
# **Budget**: printed below from the profile, with how long the chapter took when last benchmarked
# (`bench/book.py`); the last cell prints this run's time. In the default profile (SmolLM2-135M, 30 layers)
# the contiguous runs are a subsample (2 evenly spaced starts per length: the first and the last), said in
# the budget line.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import time

import altair as alt
from IPython.display import HTML

from atlas_core import profiles, tasks
from atlas_core.evidence.claims import record
from atlas_core.publish import charts
from atlas_core.studies import compression as cmp

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote, number="07")
model, seeds, results_dir, subject = ctx.model, ctx.seeds, ctx.results_dir, ctx.subject
P = cmp.profile(profile)
HEAL_SEEDS = seeds[: P["heal_seeds"]]
T0 = time.time()
print(subject)
print(cmp.budget(P, subject.arch.n_layers, len(HEAL_SEEDS)))

# %% [markdown]
# ## The data, split once
# Neutral sentences and task items, split into disjoint selection, test and healing sets. Continuation
# prompts are the first half of each test sentence; the base model's greedy continuation of each is the
# reference every configuration is compared along.

# %%
# NBVAL_CHECK_OUTPUT
data = cmp.data(subject, P, seeds[0])
print(data.sizes())

# %% tags=["hide-output"]
probe = cmp.make_probe(subject, data, P)

# %% [markdown]
# ## A skip is a block unit, and a real smaller model
# The engine skips layer *k* by zeroing its block write (output = input). The same removal as a real
# model: the layers deleted from the module list, `num_hidden_layers` (and per-layer lists such as
# `layer_types`) updated, saved with `save_pretrained` and reloaded with `load(path)`. The differences are
# of last-position logits on the test prompts.

# %%
# NBVAL_CHECK_OUTPUT
cmp.skip_check(subject, [1, 2], data.test_prompts[:4]).round(4)

# %% [markdown]
# ## Every single layer and contiguous runs
# Each removal measured against the base on the test side: top-1 / top-5 agreement and KL(base ‖ skipped)
# averaged over the continuation positions, task accuracy (mean over families) and perplexity.

# %% tags=["hide-output"]
skips = cmp.skip_table(subject, cmp.skip_sets(subject.arch.n_layers, P), probe)

# %%
print(f"base: task accuracy {probe.base_accuracy.mean():.3f}, perplexity {probe.base_ppl:.1f}")
skips.drop(columns=["layers", "per_prompt_top5"]).sort_values("top5", ascending=False).head(12).round(3)

# %% [markdown]
# Look for: how far below 1 even the best single layer sits, and how fast overlap falls as runs get longer.

# %% tags=["hide-input"]
starts = skips.assign(layer=skips.layers.map(min))
alt.Chart(starts).mark_line(point=True).encode(
    x=charts.ordinal_x(), y=alt.Y("top5:Q", title="top-5 overlap with base"), color="depth:O",
    tooltip=["skipped", alt.Tooltip("top5:Q", format=".3f"), alt.Tooltip("kl:Q", format=".3f"), "accuracy"],
).properties(width=420, height=200)

# %% [markdown]
# ## What to remove: four criteria at equal depth
# Per-layer scores on the selection prompts (lower = more removable): the atlas's block zero-ablation KL
# (the cached sweep), Block Influence 1 − cos(in, out) over all tokens, and the one-layer angular distance
# at the last token (Gromov's criterion uses the distance across the whole run removed).

# %% tags=["hide-output"]
geom = cmp.geometry(subject, data.select_texts)
effects = cmp.atlas_effects(subject, data.select_items)
scores = cmp.criterion_table(geom, effects)

# %% [markdown]
# Look for: layers low on all three lines (removable by every criterion) and where the criteria disagree.

# %% tags=["hide-input"]
alt.Chart(scores.melt("layer", var_name="criterion", value_name="score")).mark_line(point=True).encode(
    x=charts.ordinal_x(), y=alt.Y("score:Q", scale=alt.Scale(type="symlog")), color="criterion:N",
    tooltip=["criterion", "layer", alt.Tooltip("score:Q", format=".4f")],
).properties(width=420, height=180)

# %% tags=["hide-output"]
sets = cmp.criterion_sets(subject.arch.n_layers, cmp.depths(subject.arch.n_layers, P["fractions"]), geom, effects,
                          P["n_random"], seed=seeds[0])
cq = cmp.criterion_quality(subject, sets, probe)

# %%
cmp.by_depth(cq).round(3)

# %% [markdown]
# Each criterion against the random draws: the mean over depths of (criterion − mean of the draws), and an
# exact rank test: at each depth, how many of the draws reach the criterion's value (`draws_reaching`, summed
# over depths); if the criterion's set were just one more random draw its rank would be uniform at each depth,
# so p is exact (`min_p`: the smallest p this many draws and depths can give), Holm-corrected over the three criteria.

# %%
tests = cmp.criterion_tests(cq)
tests.round(4)

# %% [markdown]
# Look for: the informed criteria above the random draws at each depth, and how fast everything falls with depth.

# %% tags=["hide-input"]
alt.Chart(cq).mark_point(filled=True, size=60).encode(
    x=alt.X("depth:O", title="layers removed"), y=alt.Y("top5:Q", title="top-5 overlap with base"),
    color=alt.Color("criterion:N"), shape="criterion:N", tooltip=["criterion", "draw", "layers", "top5", "kl", "ppl"],
).properties(width=320, height=200)

# %% [markdown]
# ## Healing with LoRA
# One removal per criterion (random: its first draw) at the depth nearest the profile's `heal_fraction`,
# healed by a LoRA on every linear module, trained on held-out neutral sentences (prompt = the first three
# words), one adapter per seed. `closed` is the fraction of the gap to the base that healing closed.

# %% tags=["hide-output"]
to_heal = cmp.heal_sets(sets, subject.arch.n_layers, P["heal_fraction"])
heal_ex = cmp.heal_examples(data.heal_texts)
rec = cmp.recovery(subject, to_heal, probe, heal_ex, cmp.heal_examples(data.heal_val), P, HEAL_SEEDS)

# %%
rec.drop(columns=["per_prompt_top5"]).round(3)

# %%
cmp.restored(rec, "top5").round(3)

# %%
cmp.restored(rec, "heal_loss").round(3)

# %%
cmp.restored(rec, "accuracy").round(3)

# %% [markdown]
# Look for: how far the healed points (per seed) climb from the unhealed ones toward the base line.

# %% tags=["hide-input"]
alt.Chart(rec[rec.state != "base"]).mark_point(filled=True, size=60).encode(
    x=alt.X("skipped:N"), y=alt.Y("top5:Q", title="top-5 overlap with base"), color="state:N", shape="criterion:N",
    tooltip=["criterion", "skipped", "state", "seed", "top5", "heal_loss", "accuracy"],
).properties(width=260, height=200)

# %% [markdown]
# The smaller model's generation speed against the base (the atlas criterion's removal at the healing depth;
# tok/s of greedy generation at batch 8, base and smaller alternating in one run, median of the profile's reps).

# %%
speed_small = cmp.speedup(subject, to_heal.layers.iloc[0], data.test_prompts[:8], P["speed_tokens"], P["speed_reps"])
speed_small

# %% [markdown]
# ## Precisions
# Each precision loaded through `load(..., quantization=)`; a precision that does not load or run here is
# reported as not available, with its one-line error.

# %%
subs, status = cmp.precision_subjects(subject, P["precisions"])
status

# %% tags=["hide-output"]
spd = cmp.speed(subs, data.test_prompts, P["speed_tokens"], reps=P["speed_reps"])
fid = cmp.fidelity(subs, probe)

# %%
fid.round(4)

# %% [markdown]
# Look for: the ratio to fp32 at batch 1 and 8 (all measured in one run, alternating precisions).

# %% tags=["hide-input"]
alt.Chart(spd).mark_bar().encode(
    x=alt.X("precision:N", sort=list(subs)), y=alt.Y("ratio_vs_fp32:Q", title="tok/s ratio to fp32"),
    column="batch:O", tooltip=["precision", "batch", alt.Tooltip("tok_s:Q", format=".1f")],
).properties(width=160, height=160)

# %% [markdown]
# ### Intervention sensitivity
# The same units under every precision: a steering vector (the mean residual difference between the
# positive and negative sentences of the sentiment pairs at the middle layer, computed once on fp32) added at
# each of the profile's strengths, and the block zero-ablation sweep of every layer on the test task items.
# Each precision is measured against its own unedited forward; the ratio to fp32 has a percentile-bootstrap
# CI over prompts.

# %% tags=["hide-output"]
units = cmp.steering_units(subject, tasks.contrastive("sentiment")[: P["steer_pairs"]], subject.arch.n_layers // 2,
                           P["steer_alphas"])
steer = cmp.sensitivity(subs, data.test_prompts, units)
atlases, ablate = cmp.ablation_sweep(subs, data.test_items)
amp = cmp.amplification([steer, ablate])
hubs = cmp.hub_moves(ablate)

# %%
amp.round(4)

# %%
hubs.round(3)

# %% [markdown]
# Look for: bars far from zero — layers whose ablation effect a precision changes (atlas diff b − a, b = the precision).

# %% tags=["hide-input"]
moved = cmp.atlas_diffs(atlases)
alt.Chart(moved).mark_bar().encode(
    x=charts.ordinal_x(), y=alt.Y("delta:Q", title="Δ ablation KL (precision − fp32)"), column="precision:N",
    tooltip=["precision", "layer", alt.Tooltip("delta:Q", format=".4f")],
).properties(width=140, height=150)

# %% [markdown]
# ## Qualitative check
# 32 fixed prompts with constraints a program checks (word limits, lists, JSON, numbers, required and
# forbidden words, capitals, yes/no, first word), answered greedily by each precision, the healed removal
# with the highest healed top-5 overlap (chosen on the probe, not on these prompts; its first seed), and the
# best chapter-05 adapter if one is cached. Repetition and degeneration come from `evidence.text_quality`;
# `p_vs_ref` is the exact sign test over the prompts where a configuration and fp32 differ.

# %%
adapter, adapter_note = cmp.best_adapter(subject)
healed = cmp.healed_config(subject, rec, heal_ex, P)
print(f"chapter-05 adapter: {adapter_note}")
qual = cmp.qualitative_suite(subs, healed, adapter, P)
qsum = cmp.qualitative.summary(qual)
qsum.round(3)

# %% [markdown]
# The generated texts (click a configuration to open it).

# %% tags=["hide-input"]
HTML(cmp.details_html(qual))

# %% [markdown]
# ## Claims
# Built by `studies.compression` from the tables above only; each statement's direction follows the
# measured sign, and its grade follows its test.

# %%
tags = {"model": model, "profile": profile}
claims = [cmp.single_layer_claim(skips, P["gen_tokens"], **tags), *cmp.criterion_claims(tests, **tags),
          *cmp.healing_claims(rec, HEAL_SEEDS, P["heal_steps"], **tags),
          *cmp.precision_claims(amp, hubs, f"steer a={P['steer_alphas'][0]:g}", **tags),
          *cmp.qualitative_claims(qsum, **tags)]
record(claims)[["claim", "confidence", "why"]]

# %% tags=["remove-cell"]
print(f"chapter 07: {time.time() - T0:.0f} s")
