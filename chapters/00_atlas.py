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
# # 00 · The atlas on one page
#
# The summary of this build: the model, where its behaviours live, every claim with its computed
# confidence, the negative results, and what we do not claim. Everything below is read from the
# results and the run registry written by the other chapters for this model and profile.

# %% tags=["parameters"]
model = None
profile = "smoke"
seeds = None
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
from pathlib import Path

from atlas_core import profiles
from atlas_core.evidence.claims import table
from atlas_core.publish import charts
from atlas_core.studies.atlas import Atlas

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote)
model, results_dir, subject = ctx.model, ctx.results_dir, ctx.subject
atlas_path = Path(results_dir) / f"atlas-{model}-{profile}" / "atlas.json"

# %% [markdown]
# ## Model card

# %%
# NBVAL_CHECK_OUTPUT
a = subject.arch
print(f"model        {model}\nfamily       {a.family}\nlayers       {a.n_layers}\nheads        {a.n_heads} query / "
      f"{a.n_kv_heads} key-value (head dim {a.head_dim}), d_model {a.d_model}\nlayer kinds  {sorted(set(a.layer_kinds))}\n"
      f"parameters   {subject.n_params:,}\ndtype        {str(subject.dtype).replace('torch.', '')}\nweights      {subject.source}\n"
      f"fingerprint  {subject.fingerprint}\nprofile      {profile}")

# %% [markdown]
# ## Hub map
# Zero-ablation of each block, per task family: the fraction of the clean logit difference it removes on
# the families the model solves (or, where it solves none, KL(clean ‖ ablated): disruption, not behaviour).

# %% tags=["hide-input"]
if atlas_path.exists():
    atlas = Atlas.load(atlas_path)
    e = atlas.effects
    m = e[(e["component"] == "block") & (e["method"] == "zero") & (e["head"] == -1) & (e["position"] == "all")]
    ev = atlas.hub_evidence("block", "zero")
    metric = ev["metric"]
    if ev["testable"]:
        m = m[m["family"].isin(atlas.testable_families)]
        print(f"testable families: {', '.join(atlas.testable_families)}\nhub: block {ev['hub']} (chosen on the select "
              f"split of {ev['n_candidates']} layers; test split vs {ev['control']}: {ev['effect_minus_control']:+.3f}, "
              f"p = {ev['p_value']:.3g}; {ev['families_agreeing']}/{ev['n_families']} families agree)")
    else:
        print(f"no family is testable on this model, so there is no hub to report; the map shows disruption (KL)."
              f"\n{ev['untestable_why']}")
    m = m.groupby(["family", "layer"])[metric].mean().reset_index()
    chart = charts.heatmap(m, "layer", "family", metric, width=440, height=260)
else:
    chart = None
    print(f"No ablation atlas for {model} / {profile} yet: run chapter 02 (make book CHAPTERS=02,00).")
chart

# %% [markdown]
# ## Claims
# Confidence is computed from each claim's evidence by the rules on the method page; nothing here is
# typed by hand. Re-executing a chapter replaces its claims.

# %%
claims = table(model, profile)
if claims.empty:
    print("No claims recorded yet for this model and profile: execute the other chapters first.")
# NBVAL_CHECK_OUTPUT
print(claims.groupby("chapter")["confidence"].value_counts().unstack(fill_value=0) if not claims.empty else "")
claims[["chapter", "claim", "confidence", "control", "why"]] if not claims.empty else None

# %% [markdown]
# Each claim's metric and counterfactual:

# %% tags=["hide-input"]
claims[["chapter", "claim", "metric", "counterfactual"]] if not claims.empty else None

# %% [markdown]
# ## Negative results
# Claims whose evidence does not support them (confidence low or none), and families the model cannot
# do (their maps describe what it does with the prompts, not how it solves the task).

# %%
neg = claims[claims["confidence"].isin(["low", "none"])] if not claims.empty else claims
neg[["chapter", "claim", "confidence", "why"]] if not neg.empty else print("none recorded")

# %% [markdown]
# ## Caveats, and what we do not claim

# %% tags=["hide-input"]
if "GGUF" in subject.source:
    print(f"These weights are {subject.source}: a quantization round trip of the original checkpoint, so effect sizes "
          "may differ from it.")
else:
    print(f"Weights: {subject.source}.")

# %% [markdown]
# - Ablation effects are single-site: later layers can compensate (Hydra effect), so a small effect is
#   not proof that a component is unused, and a large effect is not proof that it computes the behaviour.
# - Zero, mean and resample ablation answer different questions; where they disagree the method defines
#   the answer (see the method-agreement claims).
# - An early layer that everything downstream reads the embeddings through (often layer 0) can dominate
#   every ablation without computing any one behaviour; the hub is therefore also reported without layer 0.
# - Only families the model flips reliably (chapter 01's gate) are localized; on the others the maps show
#   disruption (KL), and every claim about them says "not testable here". A model that solves nothing
#   earns no claim above low.
# - The task suite is synthetic and small per family (see the profile); confidence intervals are over
#   prompts of this suite only. We do not claim the map transfers to other prompt distributions.
# - Every confidence comes from a grader whose false-positive rate on simulated nulls is on the method page.
# - The attribution screen is a first-order estimate; we never report a screen result as an effect.
