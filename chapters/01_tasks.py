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
# a confidently wrong map.

# %% tags=["parameters"]
model = None
profile = "smoke"
seeds = None
results_dir = None  # default: $ATLAS_RESULTS or results/

# %% tags=["remove-cell"]
import altair as alt

from atlas_core import charts, profiles, tasks
from atlas_core.claims import Claim, record

ctx = profiles.chapter(model, profile, seeds, results_dir)
model, seeds, subject, B = ctx.model, ctx.seeds, ctx.subject, ctx.cfg["baselines"]
print(subject)

# %% [markdown]
# ## Validation under this model's tokenizer
# Items whose answer is not one token, or whose corrupt prompt has another token length, are dropped
# and counted here — never silently.

# %%
base = tasks.baselines(subject, B["families"], n=B["n"], seed=seeds[0])
val = base.attrs["validation"]
# NBVAL_CHECK_OUTPUT
val.groupby("variant")[["total", "kept"]].sum()

# %%
val

# %% [markdown]
# ## Baselines
# Top-1 accuracy against chance (1 / number of distinct answers), answer probability, and the
# answer − distractor logit difference on clean and corrupt prompts (95% bootstrap CIs). A working
# family has LD > 0 on clean and < 0 on corrupt prompts.

# %% tags=["hide-input"]
b = base.assign(label=base["family"] + " · " + base["variant"])
charts.bars_with_ci(b, "label", "accuracy", "accuracy_lo", "accuracy_hi", color="variant") + alt.Chart(b).mark_tick(
    color="red", thickness=2).encode(x=alt.X("label:N", sort=None), y="chance:Q")

# %%
cols = ["family", "variant", "n", "accuracy", "accuracy_lo", "accuracy_hi", "chance", "status", "p_answer",
        "logit_diff_clean", "logit_diff_corrupt", "pair_accuracy"]
base[cols].round(3)

# %% [markdown]
# ## Claims

# %%
claims = [
    Claim(f"{r.family} ({r.variant}): top-1 accuracy {r.accuracy:.2f} is above chance {r.chance:.2f}",
          metric="top-1 accuracy, bootstrap 95% CI over prompts", counterfactual="none (unmodified model)",
          control=f"chance = {r.chance:.2f}",
          evidence={"ci_excludes_control": bool(r.accuracy_lo > r.chance), "n_prompts": int(r.n)},
          chapter="01", model=model, profile=profile)
    for r in base.itertuples()
]
record(claims)[["claim", "confidence", "why"]]

# %% [markdown]
# Families at chance (status ≠ "above chance") are reported as negative results in the one-page atlas;
# their atlas maps describe what the model does with those prompts, not how it solves the task.
