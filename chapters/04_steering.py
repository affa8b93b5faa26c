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
# # 04 · Steering and knockout
#
# Can we push a behaviour by adding one direction to the residual stream — and is the push more than
# what *any* vector of that size would do? For each target we take a contrastive direction at every
# layer: for a task family, mean(corrupt) − mean(clean) residual at the last token (so +α pushes
# toward the corrupt answer); for sentiment, mean(positive) − mean(negative) sentence. We add
# α · ‖h_L‖ · v̂ at the last token, with α in multiples of the layer's typical residual norm, as units
# `Site("resid", L, "last") + Op.add(v, α)` of the atlas vocabulary, through the cached sweep engine.
#
# **Effect** (logits) = the shift of the logit difference toward the target: LD_clean − LD_steered for
# families (LD = answer − distractor; the distractor is the corrupt prompt's answer), the increase of
# logit(positive token) − logit(negative token) for sentiment. **Controls**, of the same norm: seeded
# random directions drawn from N(0, Σ), Σ the covariance of the fit activations at that layer (the
# residual stream is anisotropic, so an isotropic direction is a weak null), and shuffled-label
# directions (labels permuted before averaging). The real direction's layer and sign are the best of many cells, so its controls get the
# same choice: the first few of each kind are screened over the same layers at the control strength of
# each sign, and each is graded at its *own* best layer and sign. A direction is graded against the
# *strongest* of these screened controls by an exact paired sign-flip test over the held-out prompts,
# never by size alone. Every control also runs at the real direction's own cell; the claim also needs
# the empirical p against the shuffled-label draws there (the larger of the two p-values is graded), so
# the profile draws enough of them for p ≤ 0.05 to be attainable (the smallest empirical p is
# 1/(draws + 1); too few draws and the claim says it cannot pass). z-scores against the random draws
# at that cell are descriptive (a control not chosen as the direction was would make any direction with
# a strong layer of its own look special).
#
# **Cost and the prompting baseline** (AxBench, Wu et al. 2025, found prompting beats every steering
# method): each steering claim also states its fluency cost — the change in NLL per token on unrelated
# neutral sentences with the direction added at every position of its layer, as when generating — and
# compares steering, on the same held-out prompts and metric, with two prompts aimed the same way: an
# instruction (for a family it names the word to say; for sentiment the tone; inside the chat template
# when the tokenizer has one) and a one-shot demo. "Steering beats prompting" needs a paired p ≤ 0.05
# and a cost of at most 0.1 nats/token. **Knockout** is directional ablation (Arditi et al. 2024): the
# direction projected out of the residual stream after every layer, at every position (necessity);
# the older negative addition is kept as a labelled *push* (sufficiency of a push).
#
# Honest selection: directions are fit on one set of prompts, the best layer and sign are chosen on a
# second (*selection*), and every graded number comes from a third (*held-out*); the three share no
# template and no text, and a concept's fit sentences never contain the words it is graded by (the
# audit below checks this for every study in the chapter). A task family the model does not solve is
# not testable: it is still steered and charted, but its claims say "not testable here".
#
# **Budget**: printed below from the profile (minutes on one CPU core in the default profile; the sweep
# cache makes re-runs fast).

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds (the first one samples the prompts)
results_dir = None  # default: $ATLAS_RESULTS or results/
remote = False  # True: every trace runs on NDIF (key from NDIF_API_KEY); "local": nnsight's round trip here

# %% tags=["remove-cell"]
import time

import altair as alt
import pandas as pd

from atlas_core import load, tasks
from atlas_core.evidence.claims import record
from atlas_core.profiles import chapter
from atlas_core.publish import charts
from atlas_core.studies import patching, steering
from atlas_core.tasks import neutral

ctx = chapter(model, profile, seeds, results_dir, remote=remote, number="04")
model, seed, subject, S = ctx.model, ctx.seeds[0], ctx.subject, ctx.cfg["steering"]
families = S["families"] or list(tasks.FAMILIES)
n_layers = subject.arch.n_layers
layers = list(range(0, n_layers, S["layer_stride"]))
n_screen = S.get("n_screen_controls", 2)  # controls of each kind screened like the real direction
T0 = time.time()
print(subject)
print(f"budget ({profile}): {len(families)} families + {', '.join(S['concepts'])}; {S['n']} selection + {S['n']} held-out "
      f"prompts, {S['n_fit']} fit pairs per target; {len(layers)} layers × {len(S.get('screen_alphas', (-0.4, 0.4)))} "
      f"strengths screened; {S['n_random']} random + {S['n_shuffled']} shuffled-label controls, the first "
      f"{n_screen} of each screened over the same layers at ±0.4 (graded at their own best cells); fluency cost on "
      f"{S['n_nll']} neutral sentences at |α| in {S['fluency_alphas']}; {S['n_gen']} scored generations per target")

# %% [markdown]
# ## Screen and held-out grading

# %% tags=["hide-output"]
t0 = time.time()
gate = tasks.gate(subject, families, n=S["n_gate"], seed=seed)  # the flip gate, on more items than the study uses
st = steering.study_from_profile(subject, families, S["concepts"], S, seed, solved=gate)  # layers: as `layers`
print(f"study: {len(st.screen)} screened cells of the real directions, {len(st.control_screen)} of the controls, "
      f"{len(st.per_prompt)} graded rows, {time.time() - t0:.0f} s")

# %% [markdown]
# Which families does the model solve? A family is testable when the 95% lower bound of its flip rate
# (clean prompt prefers the answer, corrupt prompt flips it) over a larger sample of its items passes
# the gate; the held-out audit lists any template, text or probe word shared between fit, selection and
# held-out prompts (empty = properly held out).

# %%
# NBVAL_IGNORE_OUTPUT
st.solved.round(3)

# %%
leaks = steering.audit(st)
print("held-out audit:", "no shared template, text or probe word" if not leaks else "\n".join(leaks))

# %% [markdown]
# Effect of the real direction at every screened layer × strength α (selection prompts; blue = toward
# the target, one colour scale per target). Both signs moving the same way is a sign of non-specific
# disruption, which the controls below catch. The best layer of each sign maximizes the signed effect at
# the control strength (the cells its screened controls choose among, by the same rule); further strengths,
# where the profile screens them (`full`), only draw the map. The dose-response at the chosen layer, on
# held-out prompts, follows.
#
# Look for: a layer where the two signs' cells take opposite colours (a directional push), not one colour for both.

# %% tags=["hide-input"]
charts.heatmap(st.screen, "layer", "alpha", "effect", facet="family", scheme="redblue", width=220, height=110,
               columns=2).resolve_scale(color="independent")

# %% [markdown]
# ## Dose–response at the best layers, against the controls
# Held-out prompts; points are the real direction (95% CI); grey ticks are the random directions and
# orange ticks the shuffled-label directions at the control strengths, at the real direction's layer
# (the screened controls' own best cells are in the table below).
#
# Look for: points whose CI bars clear the whole cloud of grey and orange ticks at the same α, growing with |α|.

# %% tags=["hide-input"]
ctl = steering.graded_controls(st)  # every control at the real direction's cells
real = st.graded
base = alt.Chart(real).encode(x=alt.X("alpha:Q"))
(base.mark_rule().encode(y="effect_lo:Q", y2="effect_hi:Q") + base.mark_point(filled=True).encode(
    y=alt.Y("effect:Q", title="effect (logits toward target)"), tooltip=["family", "layer", "alpha", "effect"])
 + alt.Chart(ctl).mark_tick(opacity=0.6).encode(x="alpha:Q", y="effect:Q", color=alt.Color(
     "kind:N", scale=alt.Scale(domain=["random", "shuffled"], range=["grey", "orange"])))).properties(
    width=160, height=150).facet(facet="family:N", columns=3)

# %% [markdown]
# ## Best layer and sign per target
# Layer and sign chosen on the selection prompts (the larger mean signed effect, out of
# `n_candidates` layer × sign cells), graded on the held-out prompts at the control strength.
# Each screened control chose its own layer and sign on the same selection prompts, by the same rule
# over the same layers at the control strength (`st.control_best`); `control` is the strongest of them on
# the held-out prompts, at its own cell (named in the column), `control_effect` its push in the
# direction of its own α (shown in the real α's sign), and `p_control` the paired sign-flip p of
# real − control. `z_random` / `z_shuffled` compare with every control at the real direction's own
# cell: descriptive only.

# %%
best = steering.summary(st, n_layers)
# NBVAL_IGNORE_OUTPUT
best.round(3)

# %% [markdown]
# ## Off-target effects and knockout
# Knockout = directional ablation aimed at one family: its direction at its best positive-sign layer
# projected out of the residual stream after every layer, at every position (Arditi et al. 2024; the
# embedding itself is left as is), run on every family's held-out prompts. Effects are fractions of each
# family's clean − corrupt gap (undefined where that gap's 95% CI includes 0); selectivity = target
# effect − mean |off-target effect| (0 = as much collateral as effect) with a bootstrap CI over prompts;
# collateral damage = mean KL(clean ‖ steered) on the other families.

# %%
ko_alpha = 0.4
ko, ko_rows = steering.knockout(subject, st, seed=seed)
ko = ko.sort_values("selectivity", ascending=False)
# NBVAL_IGNORE_OUTPUT
ko.round(3)

# %% [markdown]
# The *push* variant — +α along the same direction at that layer, last token (what this chapter called
# knockout before): it tests whether a push toward the corrupt answer suffices, not whether the model needs
# the direction.

# %%
push, _ = steering.knockout(subject, st, alpha=ko_alpha, seed=seed, mode="push")
# NBVAL_IGNORE_OUTPUT
push[["target", "layer", "alpha", "target_effect", "off_target_effect", "selectivity", "selectivity_lo",
      "selectivity_hi", "off_target_kl", "testable"]].round(3)

# %% [markdown]
# Selectivity of each knockout (target effect − mean |off-target effect|, 95% CI).
#
# Look for: targets whose CI lies entirely above 0 (more effect on their own family than collateral elsewhere).

# %% tags=["hide-input"]
defined = ko.dropna(subset=["selectivity"])
(charts.bars_with_ci(defined, "target", "selectivity", "selectivity_lo", "selectivity_hi", width=400) if len(defined)
 else print("selectivity undefined for every target: no family's clean − corrupt gap has a CI excluding 0"))

# %% [markdown]
# The cross-family matrix (fraction of each row family's gap removed by the column family's knockout):
#
# Look for: a strong diagonal (each knockout removes its own family's gap) and pale cells off it; blank = undefined.

# %% tags=["hide-input"]
charts.heatmap(steering.gap_matrix(ko_rows), "target", "family", "gap_removed", scheme="redblue", width=220, height=180)

# %% [markdown]
# Sentiment steering (+α at its best layer) on the task families' prompts: KL and LD change.

# %%
# NBVAL_IGNORE_OUTPUT
steering.concept_kl(subject, st, "sentiment", ko_alpha, seed=seed).round(3) if "sentiment" in st.dirs else None

# %% [markdown]
# ## Multi-layer steering
# The same total α spread over 1, 3 or 5 consecutive layers around the best layer (each in its own
# layer's norm), held-out prompts.

# %%
ml = steering.multi_layer_effects(subject, st, ko_alpha, widths=(1, 3, 5), seed=seed)
# NBVAL_IGNORE_OUTPUT
ml.unstack("width").round(3)

# %% [markdown]
# ## Effect by prompt-length bucket
# The direction fit on short prompts, applied at +α on its best layer, on short vs longer prompts
# whose templates it was neither fit nor selected on.

# %%
by_bucket, bucket_sets = steering.length_buckets(subject, st, S["buckets"], S["n"], ko_alpha, seed=seed, item_seed=seed + 1)
leaks = steering.audit(st, bucket_sets)
print("held-out audit, length buckets:", "no shared template or text" if not leaks else "\n".join(leaks))
# NBVAL_IGNORE_OUTPUT
by_bucket.round(3)

# %% [markdown]
# ## Cost, prompting baseline and scored generations
# For each testable target at its graded cell: **fluency cost** = NLL per token on neutral sentences
# (unrelated to every task) with the direction added at every position of its layer, minus the
# unsteered model's (mean over sentences, bootstrap CI). **Prompting** on the same held-out prompts and
# metric: an instruction and a one-shot demo (a selection prompt followed by its own aimed-at word),
# aimed where steering aims; the better of the two is picked on these same prompts, which favours
# prompting. **Scored generations**: greedy continuations, unsteered, steered (every position) and with
# each prompt. A family scores a hit when the first generated word is the aimed-at answer (on held-out
# items sharing no template with its fit or selection prompts); sentiment continues openings of neutral
# sentences not used for the cost, and scores a hit when the continuation holds more words of the aimed
# polarity than of the other, counted with a lexicon of the words that differ within the contrastive
# sentiment pairs (plus the probe words), computed offline.

# %% tags=["hide-output"]
t0 = time.time()
neutral_texts = neutral.sentences(S["n_nll"] + S["n_gen"], seed=seed)
bl = steering.cost_and_prompting(subject, st, best, neutral_texts, S["n_nll"], S["n_gen"], S["fluency_alphas"],
                                 seed=seed + 2, max_new_tokens=S["gen_tokens"])
fl, gens, vs = bl.fluency, bl.generations, bl.versus
print(f"cost, prompting and generations: {time.time() - t0:.0f} s")

# %%
# NBVAL_IGNORE_OUTPUT
fl.round(3)

# %%
# NBVAL_IGNORE_OUTPUT
vs.round(3)

# %% [markdown]
# A few scored generations per target (unsteered, steered, best prompt):

# %%
# NBVAL_IGNORE_OUTPUT
gens.groupby(["family", "condition"]).head(2)[["family", "condition", "text", "hit"]] if len(gens) else None

# %% [markdown]
# ## Transfer
# A direction found in this model applied to another one of the same width: a copy with seeded noise
# on its decoder weights (as a fine-tune would leave it). Where widths differ, transfer refuses with a
# one-line error naming both widths.

# %%
other = patching.perturbed(subject, sigma=0.05, seed=1)
f0 = families[0]
moved = steering.transfer_effects(st, f0, subject, other, alphas=(0.2, 0.4), seed=seed)
# NBVAL_IGNORE_OUTPUT
moved[["model", "family", "layer", "alpha", "effect", "control_effect", "p_control", "z_random"]].round(3)

# %% [markdown]
# ## Best steering depth across models
# The same study on a second model (fewer targets), best layers as a fraction of depth.

# %% tags=["hide-output"]
t0 = time.time()
sub2 = load(S["compare_model"])
transfer_error = steering.transfer_note(st.dirs[f0], subject, sub2)
n2 = sub2.arch.n_layers
st2 = steering.study(sub2, S["compare_families"] or list(tasks.FAMILIES), S["concepts"], S["n"], S["n_fit"],
                     list(range(0, n2, S["compare_stride"])), n_random=S["n_random"], n_shuffled=S["n_shuffled"],
                     n_screen_controls=n_screen, seed=seed)
leaks = steering.audit(st2)
print(f"{sub2.name}: {time.time() - t0:.0f} s; held-out audit:", "clean" if not leaks else "\n".join(leaks))

# %%
print(transfer_error)
best2 = steering.summary(st2, n2)
depth = pd.concat([best.assign(model=model), best2.assign(model=sub2.name)])
# NBVAL_IGNORE_OUTPUT
depth.pivot_table(index="family", columns="model", values=["layer", "depth", "z_random"]).round(2)

# %% [markdown]
# ## Claims
# Built by `steering.steering_claims` from the tables above: a steering claim meets its control criterion
# when the paired sign-flip p of its held-out effect against the strongest screened control (each at its
# own best layer and sign) and the empirical p against the shuffled-label draws at its cell are both
# ≤ 0.05 (a few prompts cannot reach that: the smallest p over n prompts is 2⁻ⁿ; nor can fewer than 20
# draws); each also states whether steering beats prompting within the fluency budget, how much it
# costs and how its generations score (stated, not graded); breadth counts the testable
# targets that meet it; every claim says how many layer × sign candidates its best was chosen from on
# the selection prompts. Knockout claims need the selectivity CI above 0. Families the model does not
# solve give "not testable here".

# %%
claims = steering.steering_claims(best, ko, model=model, profile=profile, baselines=vs)
claims += steering.layer_sign_claims(steering.layer_signs(subject, st, seed), model=model, profile=profile)
print(f"chapter time {time.time() - T0:.0f} s")
record(claims)[["claim", "confidence", "why"]]
