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
# # 06 · Supervised fine-tuning: does lower loss mean a better model?
#
# The applied branch. We fine-tune LoRA adapters on instruction data and ask three questions. **Which knob
# moves the result most** — the data set, the optimizer (AdamW, Adafactor, Lion), the LoRA rank, the target
# modules (the layers around the atlas hub, `o_proj` only, attention, MLP, all-linear), the learning rate,
# the number of steps or the amount of data? **Does the data's format matter** when its content does not
# change — the same records rendered six ways? And **does lower loss mean better answers**: we score every
# adapter's greedy answers with a judge and put the base model through the same judge. The original
# MI-Atlas study found loss and judged quality *anti*-correlated (r ≈ −0.7 over 8 adapters, the base model
# judged above all of them); here that is a hypothesis to test, not a result to reproduce.
#
# **Data.** No instruction data set ships inside a package this project can install (the package lists
# were searched; `alpaca-eval`, for one, downloads its data at run time), so every set is generated
# deterministically: three from the task suite's training splits (`facts`: one-word answers, `json`:
# structured output, `code`: what a program prints) and one from the lexicon (`lists`: sort, reverse,
# count or transform a word list). The format ablation's canonical set is a generated record per person
# (name, city, job, pet, age) and a question about one field; people are split by a hash of their record,
# so no held-out prompt's record is in any training set (the tests check both this and that every format
# keeps every fact).
#
# **Judges.** The default is a deterministic rubric (`evidence.judges.RubricJudge`): an exact check where the
# reference is checkable, token overlap with the reference, format adherence (no leaked role markers) and
# penalties for length and repetition (`evidence.text_quality`). It compares with the *short* reference
# answer, so it penalizes a verbose answer by construction — read the format scores with that in mind. An
# OpenAI-compatible judge (reference-guided 1–10 prompt) is used as well when `ATLAS_JUDGE_URL` and
# `ATLAS_JUDGE_MODEL` (key in `ATLAS_JUDGE_KEY`) are set, and its agreement with the rubric is reported.
#
# **Budget.** Printed below from the profile. The default profile (the embedded SmolLM2-135M, dequantized Q4
# weights) trains ~42 short adapters (6 steps of batch 4: "what a small, equal budget buys", not converged
# fine-tunes); the first line below prints how long the chapter took when last benchmarked (`bench/book.py`),
# the last cell this run's time.
# Adapters and their measurements are cached under `results/lora/`, so re-executing reuses them.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import time

import altair as alt
import pandas as pd

from atlas_core import profiles
from atlas_core.evidence.claims import record
from atlas_core.publish import charts
from atlas_core.studies import adapters, sft

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote, number="06")
model, seeds, results_dir, subject = ctx.model, ctx.seeds, ctx.results_dir, ctx.subject
P = sft.profile(profile)
SEEDS = adapters.headline_seeds(seeds[: P["n_seeds"]], P)
JUDGES = sft.judges()
T0 = time.time()
print(subject)

# %% [markdown]
# ## The data
# One canonical example in each of the six formats: the content (every field, the question, the answer) is
# the same; only the wrapping differs. `chat` uses the tokenizer's own chat template (the line below says
# whether this tokenizer has one, or the plain fallback was used); `bad` is the control — scrambled,
# unlabelled values and an answer that runs on into an echo of the question.

# %%
# NBVAL_CHECK_OUTPUT
train, tasks, P = sft.prepare(subject, P)
print(f"chat format: {sft.chat_label(subject.tokenizer)}; judges: {', '.join(JUDGES)}; max_len {P['max_len']} tokens")
print({f: (len(train[f]), len(t.ev.val), len(t.ev.examples)) for f, t in tasks.items()})
sft.examples_table(sft.canonical(1, 0, 0)["train"][0], subject.tokenizer)

# %% [markdown]
# ## The atlas hub we target and watch
# Block zero-ablation per layer on two families (first seed), gated on more items than the atlas samples; the hub is
# the top layer without layer 0 (which dominates any ablation; chapter 02 reports that hub too). The
# hub-targeted adapters adapt every linear module of the `hub_k` layers nearest the hub. Where the model
# solves neither family, the hub is a *disruption* hub (ranked by KL), and the hub claim says it is not
# testable.

# %% tags=["hide-output"]
atlas = sft.base_atlas(subject, P, SEEDS)
hub = sft.hub_of(atlas, P)
runs = sft.plan(P, SEEDS, hub["layer"], subject.arch.n_layers)

# %%
# NBVAL_CHECK_OUTPUT
print(f"hub: block layer {hub['layer']} by {hub['metric']} (testable: {hub['testable']}; layers {hub['excluded']} "
      f"left out); hub-targeted layers "
      f"{sft.hub_layers(hub['layer'], subject.arch.n_layers, P['hub_k'])}")
print(sft.budget(P, runs, SEEDS))

# %% [markdown]
# ## The sweep: one dimension at a time
# Every configuration changes one setting of the base configuration, at identical seeds. Per run: train
# loss (last quarter of the steps), validation and held-out eval loss (completion tokens only), drift
# (mean KL(base ‖ adapted) of the next token on neutral sentences), trainable parameters, seconds and peak
# memory per training (CPU: the peak resident set over what was in use before; a cached adapter keeps
# the value measured when it was trained), and the judge's mean score on held-out prompts (1–10). The
# base model's rows are the same measurements with no adapter. Eval losses of different data sets are on
# different examples: the `dataset` dimension moves loss partly because the tasks differ in difficulty.

# %% tags=["hide-output"]
sw = sft.run(subject, runs["sweep"], train, tasks, JUDGES)
sw_base = sft.run(subject, runs["sweep_base"], train, tasks, JUDGES)

# %%
# NBVAL_CHECK_OUTPUT
cols = ["n_trainable", "train_loss", "val_loss", "eval_loss", "drift", "rubric_eval"]
pd.concat([sw_base.assign(dim="none")[["dim", "config", "family", *cols]],
           adapters.summarize(sw, ["dim", "config", "family"], cols)]).round(3)

# %% [markdown]
# What each configuration costs: trainable parameters, seconds per training step and peak memory of a training
# (wall-clock numbers: they vary between runs and machines).

# %%
adapters.summarize(sw, ["config"], ["n_trainable", "s_per_step", "peak_mb"]).round(3)

# %% [markdown]
# Look for: whether the configurations with the lowest eval loss (left) are also the ones the judge scores highest (up).

# %% tags=["hide-input"]
alt.Chart(sw).mark_point(filled=True, size=60).encode(
    x=alt.X("eval_loss:Q", scale=alt.Scale(zero=False), title="held-out eval loss"),
    y=alt.Y("rubric_eval:Q", title="judged score (rubric, 1-10)"), color="dim:N", shape="family:N",
    tooltip=["config", "seed", "n_trainable", alt.Tooltip("eval_loss:Q", format=".3f"), "rubric_eval", "drift"],
).properties(width=360, height=220)

# %% [markdown]
# ## Which dimension moves the result most?
# Per dimension and seed, the range of eval loss over its values (the base configuration included); the
# mean over seeds and its spread across seeds ([min, max]: with a handful of seeds that *is* the
# interval). A dimension with more values has more chances to reach a wide range.

# %%
# NBVAL_CHECK_OUTPUT
effects = sft.dimension_effects(sw, "eval_loss")
effects.drop(columns="per_seed").round(3)

# %% [markdown]
# Look for: the longest bar, and whether its whisker (the seeds' spread) clears the next one.

# %% tags=["hide-input"]
bars = alt.Chart(effects).mark_bar().encode(x=alt.X("range:Q", title="range of eval loss over the dimension"),
                                            y=alt.Y("dim:N", sort="-x"))
bars + alt.Chart(effects).mark_rule().encode(x="range_min:Q", x2="range_max:Q", y=alt.Y("dim:N", sort="-x"))

# %% [markdown]
# ## Format ablation: same content, six formats
# One adapter per format and seed at identical steps and settings, evaluated on held-out prompts rendered
# in its own format; the judge sees the same format-neutral question and reference for every format. The
# base model answers the same prompts in each format.

# %% tags=["hide-output"]
fm = sft.run(subject, runs["formats"], train, tasks, JUDGES)

# %%
# NBVAL_CHECK_OUTPUT
adapters.summarize(fm, ["format", "config"], ["eval_loss", "val_loss", "drift", "rubric_val", "rubric_eval"]).round(3)

# %% [markdown]
# Look for: the ordering of formats along the loss axis against their ordering along the judged-score axis.

# %% tags=["hide-input"]
alt.Chart(fm[fm.strategy != "none"]).mark_point(filled=True, size=70).encode(
    x=alt.X("eval_loss:Q", scale=alt.Scale(zero=False), title="held-out eval loss (own format)"),
    y=alt.Y("rubric_eval:Q", title="judged score (rubric, 1-10)"), color="format:N",
    tooltip=["format", "seed", alt.Tooltip("eval_loss:Q", format=".3f"), "rubric_eval", "sample"],
).properties(width=360, height=220)

# %%
fm[["format", "config", "seed", "sample"]].head(2 * len(sft.FORMATS))

# %% [markdown]
# ## Judges: do they agree?
# Spearman and Pearson correlation of the rubric and the API judge, over runs and over every judged answer
# (empty when no API judge is configured).

# %%
judges_agree = sft.agreement(pd.concat([sw, fm]))
judges_agree if len(judges_agree) else print("no API judge configured (ATLAS_JUDGE_URL / ATLAS_JUDGE_MODEL unset)")

# %% [markdown]
# ## Does the hub survive fine-tuning?
# The hub-targeted adapters (first seeds) merged into a copy of the model and re-mapped exactly like the base
# (same families, prompts, seed and gate): is the hub still the top layer, and do the two layer maps agree?

# %% tags=["hide-output"]
hub_ads = sft.hub_adapters(subject, runs["sweep"], train, P["hub_config"], P["hub_seeds"])
survival, moved = sft.hub_survival(subject, atlas, hub_ads, P, SEEDS)

# %%
survival.round(4)

# %% [markdown]
# Look for: bars far from zero at or near the adapted layers — where the adapter changed what ablation does.

# %% tags=["hide-input"]
alt.Chart(moved).mark_bar().encode(
    x=charts.ordinal_x(), y=alt.Y("delta:Q", title="Δ ablation effect (adapted − base)"),
    column="adapter_seed:N", tooltip=["layer", alt.Tooltip("delta:Q", format=".4f")],
).properties(width=200, height=150)

# %% [markdown]
# ## Claims
# Built by `sft.sft_claims` from the tables above only: loss against judged quality over the formats, the
# best adapter (chosen on validation prompts) against the base model on held-out prompts, the dimension that
# moves eval loss most (chosen on validation loss, tested on eval loss), and the hub after fine-tuning.

# %%
lq, bb, dom = sft.loss_quality(fm), sft.best_vs_base(fm), sft.dominant_dimension(sw)
record(sft.sft_claims(lq, bb, dom, survival, model=model, profile=profile)
       + sft.sweep_rule_claims(sw, sw_base, P["base"], model=model, profile=profile))[["claim", "confidence", "why"]]

# %% tags=["remove-cell"]
print(f"chapter 06: {time.time() - T0:.0f} s")
