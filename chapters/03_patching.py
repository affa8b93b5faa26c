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
# # 03 · Activation patching
#
# Ablation (chapter 02) says what a behaviour *needs*; patching says where the information that
# decides it *lives*. Each family has clean prompts and equal-length corrupt prompts whose answer is
# the distractor. **Denoising** runs the corrupt prompt with one site's clean activation written in
# (`Op.patch("clean")`): does this site alone restore the clean answer? **Noising** runs the clean
# prompt with the corrupt activation (`Op.patch("corrupt")`): does this site alone break it?
#
# Metric: normalized recovery of the mean logit difference (answer − distractor),
# (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt), a ratio of means over **flipped** prompts (clean
# LD > 0 > corrupt LD) with a 95% bootstrap CI; a cell whose mean clean − corrupt gap is not clearly
# positive gets no value. `score` = recovery for denoising and 1 − recovery for noising (the fraction
# destroyed), so 1 always means "this site carries the decision". Sites: residual stream (`resid`), the
# block's write (`block`), attention and MLP writes, and single heads, at the **last token** and at the
# **span**: every token where clean and corrupt differ (the subject / name / operand that carries the answer).
#
# Only families the model solves are patched: the flip gate (`tasks.solved`) asks that the 95% lower
# bound of the flip rate reaches 0.7 on a larger sample; a family that fails it is "not testable here".
# The profile sets the families, the gate sample, the flipped prompts patched per family, the layers and
# the heads (`profiles.py`); the sweep is cached, so a rerun takes seconds.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds (the first one samples the prompts)
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import time

import altair as alt
from IPython.display import display

from atlas_core import tasks
from atlas_core.evidence.claims import record
from atlas_core.profiles import chapter
from atlas_core.publish import charts
from atlas_core.studies import patching

ctx = chapter(model, profile, seeds, results_dir, remote=remote, number="03")
model, seed, subject, P = ctx.model, ctx.seeds[0], ctx.subject, ctx.cfg["patching"]
families = P["families"] or list(tasks.FAMILIES)
arch = subject.arch
n_layers = arch.n_layers
layers = list(range(0, n_layers, P["layer_stride"]))
T0 = time.time()
print(subject)

# %% [markdown]
# ## Which families can be localized
# The flip gate on the gate sample, and how many tokens each prompt shares with its corrupt prompt:
# the first differing token (`diff`) is only part of the change wherever a family differs in several.

# %%
sel = patching.select(subject, families, P["n_gate"], P["n"], seed)
# NBVAL_IGNORE_OUTPUT
display(sel.solved.round(3), patching.differing_tokens(sel.scored))

# %% [markdown]
# A check, not a finding: writing the clean layer-0 input (the token embeddings) into the corrupt run at
# the first differing token, and at every differing token. The span patch turns the corrupt prompt into
# the clean one, so its logit difference must equal the clean one exactly (recovery 1 on flipped prompts).

# %%
inp = patching.input_patch(subject, sel.sampled)
# NBVAL_IGNORE_OUTPUT
patching.input_check(inp).round(3)

# %% [markdown]
# ## The sweep
# Every unit on the flipped prompts of the families that pass the gate. Noising (the clean run given the corrupt
# value) runs at the positions the profile's `noise_positions` names (default: the last token, where the claims
# read it; without it, every position, so the map also has a changed-tokens noising panel).

# %% tags=["hide-output"]
units = patching.units(arch, P.get("components", ("resid", "block", "attn", "mlp")), ("last", "diff"), ("denoise", "noise"),
                       layers=layers, head_layers=range(0, n_layers, P["head_stride"]),
                       noise_positions=P.get("noise_positions"))
t0 = time.time()
df = patching.sweep_span(subject, sel.items, units, seed=seed, desc="patching")
summ = patching.summarize(df)
print(f"computed={df.attrs['computed']} cached={df.attrs['cached']}; {time.time() - t0:.0f} s")

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(sel.items)} flipped prompts over {len(sel.testable)} of {len(families)} families; {len(units)} patching units")

# %% [markdown]
# ## Where the decision lives: layer × component maps
# Score per layer (1 = the site carries the clean − corrupt decision), one panel per position and
# method, one row per family. Hover for the CI.
#
# Look for: the layer where the last-token residual turns from pale blue (score ~0) to red (~1).

# %% tags=["hide-input"]
lay = patching.layer_maps(summ)
charts.heatmap(lay, "layer", "component", "score",
               row="family", column="panel", scheme="redblue", scale={"domain": [-0.5, 1.5], "reverse": True},
               width=110, height=80,
               tooltip=["family", "component", "layer", "panel", alt.Tooltip("score:Q", format=".2f"),
                        alt.Tooltip("score_lo:Q", format=".2f"), alt.Tooltip("score_hi:Q", format=".2f")]
               ) if len(lay) else print("no family passes the flip gate: nothing to map")

# %% [markdown]
# The residual stream at the span against the last token, denoising, with CIs: the layer where the two
# curves cross is where the answer-relevant information has been moved to the last position. (The final
# layer's last-token residual is the logits' input: it restores everything by construction.)
#
# Look for: the layer where the falling span curve and the rising last-token curve cross.

# %% tags=["hide-input"]
res = summ[(summ["component"] == "resid") & (summ["method"] == "denoise")]
charts.line_with_ci(res, "layer", "recovery", "recovery_lo", "recovery_hi", color="position", width=170, height=150).facet(
    facet="family:N", columns=3) if len(res) else None

# %% [markdown]
# ## Top sites per family
# The five strongest denoising sites (component, layer, position) per family, and the noising score of
# the same site: a site that both restores and breaks the behaviour carries it on its own. A description
# of this sample: the claims below choose on half the prompts and test on the other half.

# %%
# NBVAL_IGNORE_OUTPUT
patching.top_sites(summ, k=5).round(3)

# %% [markdown]
# ## Heads
# Denoising single heads (their slice of the attention output) at the last token.
#
# Look for: the few dark blue cells (top of the scale), heads whose clean output alone restores the decision.

# %% tags=["hide-input"]
heads = summ[summ["component"] == "head"]
charts.heatmap(heads, "head", "layer", "recovery", facet="family", scheme="redblue", width=160, height=120) if len(heads) else None

# %% [markdown]
# ## Cross-model patching: the model and a real fine-tune
# CMAP (Prakash et al. 2024): activations move between a base model and its fine-tune. The fine-tune is a
# small LoRA on every linear module (`patching.finetuned`, trained by `atlas_core.studies.adapters`, merged,
# cached in `results/lora`) on the family's suite prompts that this chapter does not patch, each with its answer as
# the completion: a next-token fine-tune on the first family that passes the gate (on a model that passes
# none, the first family, whose claim is then "not testable"). First, does it differ from the base on the
# patched prompts at all? Then every single write of one model (all positions; blocks and MLPs on the default
# profile, attention too on smoke and full) is written into the other: **tuned→base** asks which write carries the change, **base→tuned** which write
# undoes it; recovery 1 = the destination reaches the source's logit difference. The cumulative curve
# (blocks 0..k) equals patching the residual after layer k, since the two share their embeddings; it ends at
# 1 by construction. A model patched with itself has no difference to localize and earns no claim.
#
# Look for: the write that is red (recovery ~1) in both directions, and where the cumulative curves jump to 1.

# %% tags=["hide-output"]
fam0, cross_items = patching.cross_choice(sel, families)
tuned = patching.finetuned(subject, fam0, exclude=[it.id for it in sel.sampled], seed=seed, **P["finetune"])
cross = patching.cmap(subject, tuned, cross_items, P["cross_components"], layers=layers)

# %%
eff = patching.tuned_effect(subject, tuned, cross_items)
print(f"{tuned.name}: {tuned.meta['trained_on']}; train loss {tuned.meta['first_loss']:.2f} -> {tuned.meta['train_loss']:.2f}")
# NBVAL_IGNORE_OUTPUT
print(f"on {eff['n']} {fam0} prompts: LD base {eff['ld_base']:.2f}, fine-tune {eff['ld_tuned']:.2f}, change "
      f"{eff['ld_change']:+.2f} (95% CI {eff['ld_change_lo']:+.2f} to {eff['ld_change_hi']:+.2f}, p = {eff['p']:.3g}); "
      f"KL(base ‖ fine-tune) {eff['kl']:.3f}")

# %% tags=["hide-input"]
cs = patching.cross_summary(cross)
single, cum = cs[cs["kind"] == "single"], cs[cs["kind"] == "cumulative"]
if single["recovery"].notna().any():
    display(charts.heatmap(single, "layer", "component", "recovery", column="direction", scheme="redblue",
                           scale={"domain": [-0.5, 1.5], "reverse": True}, width=260, height=80,
                           tooltip=["direction", "component", "layer", alt.Tooltip("recovery:Q", format=".2f"),
                                    alt.Tooltip("recovery_lo:Q", format=".2f"), alt.Tooltip("recovery_hi:Q", format=".2f"),
                                    alt.Tooltip("kl:Q", format=".3f")]),
            charts.line_with_ci(cum, "layer", "recovery", "recovery_lo", "recovery_hi", color="direction", width=420))
else:
    print("the fine-tune does not clearly change the logit difference on these prompts: no recovery to map")

# %% [markdown]
# ## Across model families
# Patching between the two embedded families (or the two tiny ones on smoke) would need a map between their
# residual streams; whether one could be fit honestly depends on widths and on whether the tokenizers split
# the prompts alike. What stands in the way here:

# %%
print(patching.cross_family_why(subject, P["compare_model"], cross_items))

# %% [markdown]
# ## Claims
# Built by `patching.patching_claims` from the measurements. Per family that passes the gate: (1) **where
# the decision reaches the last position**: the earliest layer before the final one whose last-token
# residual restores at least half of the gap, chosen on half the prompts and tested on the other half
# (exact sign-flip test; noising the same site is the second method); (2) **the strongest single write at
# the last token** (block, attention, MLP or head), chosen and tested the same way against the unpatched
# corrupt run. Then (3) **where the fine-tune changes the family**: the single write whose tuned→base patch
# recovers most, chosen on half the prompts and tested on the other half, base→tuned as the second method;
# not testable when the two models do not clearly differ. Breadth: families with the same kind of finding.
# A family that fails the gate says so.

# %%
claims = patching.patching_claims(df, sel.solved, n_layers, cross=cross, cross_family=fam0, seed=seed,
                                  chapter="03", model=model, profile=profile)
print(f"chapter time {time.time() - T0:.0f} s")
record(claims)[["claim", "confidence", "why"]]
