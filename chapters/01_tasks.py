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
# # 01 · Task suite and baselines
#
# Twelve behaviour families, each a seeded generator of prompts with a one-token answer, a plausible
# distractor and an equal-length corrupt prompt (symmetric token replacement) whose answer is the
# distractor. Before mapping a behaviour we check the model can do it: a family at chance would give
# a confidently wrong map. The gate later chapters use is stricter than "above chance": the model must
# **flip** the family's prompts — prefer the answer on the clean prompt (LD > 0) and the distractor on the
# corrupt one (LD < 0) — with a 95% lower bound on the flip rate at or above the gate.

# %% tags=["parameters"]
model = None
profile = "smoke"
seeds = None
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import altair as alt
import pandas as pd

from atlas_core import profiles, tasks
from atlas_core.evidence.claims import record
from atlas_core.publish import charts

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote, number="01")
model, seeds, subject, B = ctx.model, ctx.seeds, ctx.subject, ctx.cfg["baselines"]
print(subject)

# %% [markdown]
# ## Validation under this model's tokenizer
# Items whose answer is not one token, or whose corrupt prompt has another token length, are dropped
# and counted here — never silently.

# %%
runs = {seed: tasks.baselines(subject, B["families"], n=B["n"], seed=seed) for seed in seeds}
base = runs[seeds[0]]
val = base.attrs["validation"]
# NBVAL_CHECK_OUTPUT
val.groupby("variant")[["total", "kept"]].sum()

# %%
val

# %% [markdown]
# ## Baselines
# Top-1 accuracy against chance (red ticks: 1 / number of distinct answers), answer probability, and
# the answer − distractor logit difference on clean and corrupt prompts, with 95% CIs over the prompts of
# the first seed's sample (exact Clopper-Pearson for rates). A working family has LD > 0 on clean and < 0 on
# corrupt prompts: the flip rate.
#
# Look for: bars well above their red tick (the model does the task) and whether the synthetic and natural
# variants of a family agree; a bar at its tick is a family no later chapter can localize.

# %% tags=["hide-input"]
b = base.assign(label=base["family"] + " · " + base["variant"])
charts.bars_with_ci(b, "label", "accuracy", "accuracy_lo", "accuracy_hi", color="variant") + alt.Chart(b).mark_tick(
    color="red", thickness=2).encode(x=alt.X("label:N", sort=None), y=alt.Y("chance:Q", title="top-1 accuracy"))

# %%
cols = ["family", "variant", "n", "accuracy", "accuracy_lo", "accuracy_hi", "chance", "status", "p_answer",
        "logit_diff_clean", "logit_diff_corrupt", "pair_accuracy", "flip_rate", "flip_rate_lo", "testable"]
base[cols].round(3)

# %% [markdown]
# ## With the chat template
# An instruct model was trained on conversations. The chat variant puts each prompt (and its corrupt prompt)
# in the user turn of the tokenizer's chat template and opens the assistant turn; the answer is the reply's
# first token, so answers lose their leading space and items whose bare answer is not one token drop out
# (`n` counts what is left). Flip rate per family without and with the template, synthetic prompts, first seed,
# on the same items (the profile's `chat_n`: the default takes 24 of the 50 per family — a description, no claim
# rests on it — so both sides of the table have the same, lower power).

# %%
n_chat = B.get("chat_n") or B["n"]  # the same items with and without the template (a prefix of the sample)
if tasks.has_chat_template(subject.tokenizer):
    chat = tasks.baselines(subject, B["families"], variants=("synthetic",), n=n_chat, seed=seeds[0], chat=True)
    plain = (base[base["variant"] == "synthetic"] if n_chat == B["n"] else
             tasks.baselines(subject, B["families"], variants=("synthetic",), n=n_chat, seed=seeds[0]))
    side = tasks.template_flips(plain, chat)
else:
    side = None
    print(f"{model}'s tokenizer has no chat template: the chat variant does not apply")
# NBVAL_CHECK_OUTPUT
print(f"testable without / with the template: {int(side['testable'].sum())} / {int(side['testable_chat'].sum())} "
      f"of {len(side)} families" if side is not None else "no chat variant")
side.round(3) if side is not None else None

# %% [markdown]
# ## Families at chance
# A family whose accuracy CI does not clear chance in every prompt-sampling seed is flagged here. Its
# maps in later chapters describe what the model does with those prompts, not how it solves the task.

# %%
above = (pd.concat([pd.DataFrame({"family": r["family"], "variant": r["variant"], "ok": r["accuracy_lo"] > r["chance"]})
                    for r in runs.values()])
         .groupby(["family", "variant"])["ok"].sum().rename("seeds_above_chance").reset_index())
base = base.merge(above, on=["family", "variant"], how="left").fillna({"seeds_above_chance": 0}).assign(n_seeds=len(seeds))
flagged = base[base["seeds_above_chance"] < len(seeds)]
# NBVAL_CHECK_OUTPUT
print(f"{len(flagged)} of {len(base)} family x variant cells are not above chance in all {len(seeds)} seeds")
flagged[["family", "variant", "accuracy", "chance", "status", "seeds_above_chance"]].round(3)

# %% [markdown]
# ## Claims
# Two claims per family and variant, each worded by what was measured: whether the model is above chance
# (control: chance; replication: the seeds whose CI clears it) and whether it flips the family reliably
# enough for later chapters to localize it (control: the gate). At most *medium*: no method or breadth
# evidence applies.

# %%
claims = tasks.baseline_claims(base, runs, chapter="01", model=model, profile=profile)
record(claims)[["claim", "confidence", "why"]]
