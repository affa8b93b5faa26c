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
# What this build found about one small language model: where its behaviours live, which interventions on
# them work, what failed, and what that means if you edit the model. Every sentence below is computed from
# the results and the run registry the other chapters wrote for this model and profile; confidence is
# graded from each claim's evidence by the rules on the method page, never typed by hand.

# %% tags=["parameters", "remove-cell"]
model = None
profile = "smoke"
seeds = None
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
from pathlib import Path

from IPython.display import HTML

from atlas_core import profiles
from atlas_core.publish import charts, summary
from atlas_core.studies import rules
from atlas_core.studies.atlas import Atlas

ctx = profiles.chapter(model, profile, seeds, results_dir, remote=remote, number="00")
model, results_dir, subject = ctx.model, ctx.results_dir, ctx.subject
atlas_path = Path(results_dir) / f"atlas-{model}-{profile}" / "atlas.json"
claims = summary.with_evidence(model, profile)

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
# NBVAL_CHECK_OUTPUT
summary.five_lines(claims, model, profile, about=f"{subject.arch.family}, {subject.arch.n_layers} layers, "
                   f"{subject.n_params:,} parameters")

# %% [markdown]
# ## The model

# %% tags=["remove-input"]
# NBVAL_CHECK_OUTPUT
a = subject.arch
print(f"model        {model}\nfamily       {a.family}\nlayers       {a.n_layers}\nheads        {a.n_heads} query / "
      f"{a.n_kv_heads} key-value (head dim {a.head_dim}), d_model {a.d_model}\nlayer kinds  {sorted(set(a.layer_kinds))}\n"
      f"parameters   {subject.n_params:,}\ndtype        {str(subject.dtype).replace('torch.', '')}\nweights      {subject.source}\n"
      f"fingerprint  {subject.fingerprint}\nprofile      {profile}")

# %% [markdown]
# ## Hub map
# Zero-ablation of each block, per task family: the fraction of the clean logit difference it removes on the
# families the model solves (or, where it solves none, KL(clean ‖ ablated): disruption, not behaviour).
#
# Look for: the layer columns that stay bright across every family row. A bright column is a layer whose
# removal hurts everything; the summary's "where the behaviours live" line says whether it beat the median
# layer on prompts it was not chosen on.

# %% tags=["remove-input"]
if atlas_path.exists():
    hub_map = Atlas.load(atlas_path).layer_map("block", "zero")
    metric = hub_map.attrs["metric"]
    chart = charts.heatmap(hub_map.rename(columns={"value": metric}), "layer", "family", metric, width=440, height=260)
else:
    chart = None
    print(f"No ablation atlas for {model} / {profile} yet: run chapter 02 (make book CHAPTERS=02,00).")
chart

# %% [markdown]
# ## Claims, by chapter
# The claims that hold (high, then medium), strongest first. Each shows its evidence in one line; open
# "metric, counterfactual, control, reasons" for the rest. Chapter 01's checks are baselines (which families
# later chapters may test), summed up in one line. Re-executing a chapter replaces its claims.

# %% tags=["remove-input"]
summary.by_chapter(claims)

# %% [markdown]
# ## Negative results
# Claims whose evidence does not support them (confidence low or none), and claims that are not testable
# here because the model does not do the behaviour they are about.

# %% tags=["remove-input"]
summary.negatives(claims)

# %% [markdown]
# ## What to do if you edit this model
# Each rule restates measured claims of at least medium confidence, links to them and quotes them; it holds
# for this model, these task families and these prompts (see the caveats).

# %% tags=["remove-input"]
# NBVAL_CHECK_OUTPUT
summary.edit_rules(claims)

# %% [markdown]
# ## Which of the original study's rules hold on this model
# Chapter 08 tests each practical rule of the original MI-Atlas study against this model's own measurements:
# green holds, red fails, grey not testable here. Each badge links to its row (evidence and confidence).

# %% tags=["remove-input"]
HTML(rules.strip(model, profile))

# %% [markdown]
# ## Caveats, and what we do not claim

# %% tags=["remove-input"]
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
# - The editing rules restate what was measured on these prompts with these interventions; they are not
#   guarantees for other edits, other data or other checkpoints.
