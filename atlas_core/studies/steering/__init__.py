"""Steering and knockout with contrastive directions, always graded against controls on held-out prompts.

A *target* is what we steer: a task family (direction = mean corrupt − mean clean residual at the last
token, so +α pushes the model from the clean answer toward the corrupt answer) or a concept such as
sentiment (direction = mean positive − mean negative sentence). Every steering run is a unit of the
atlas vocabulary, `Unit.of(Site("resid", L, position=...), Op.add(v̂ · ‖h_L‖, α))` labelled with its target,
kind, index, layer and α, executed by `sweep_units` (the cached, resumable sweep; the labels become columns):
α is in multiples of the layer's typical residual norm ‖h_L‖ (median over the fit prompts at the last token), so
strengths are comparable across layers and models.

Held-out: each target has three samples — *fit* (the direction), *select* (the best layer and sign) and
*eval* (every graded number) — that share no template and no text (`split_by_template`; a template is a
prompt with its lexicon fillers masked, `template`). A concept's fit sentences never contain the probe words
it is graded by. `audit` checks all of this for every study a chapter runs.

Effect (logits): ``effect = sign · (LD_clean − LD_steered)`` with LD = logit(answer) − logit(distractor),
sign = +1 for families (the shift toward the corrupt answer, = `ld_drop`) and −1 for concepts (the
shift toward the positive token). Controls, of the same norm: random directions drawn from N(0, Σ), Σ the
covariance of the fit activations at that layer (`random_directions`: the residual stream is anisotropic, so an
isotropic null is weak), and shuffled-label directions (labels permuted before averaging). The real direction's
layer and sign are the best of many cells on the select prompts, so its controls get the same selection: the first
`n_screen_controls` of each kind are screened over the same layers at the control strength of each sign, each picks
its own best (layer, sign) by the same rule, and the real direction (at its best cell) is graded against the
*strongest* of them (each at its own best cell, same |α|) by an exact paired sign-flip test over the held-out
prompts (`p_control`). Every control also runs at the real direction's own layer and α: the claim also needs the
empirical p against the shuffled-label draws there (`p_shuffled`, never below 1/(draws + 1), so too few draws
cannot pass); z-scores against the random draws are descriptive. A task family the model does not solve
(`tasks.gate`, or `tasks.solved` on the select + eval items) is not testable: its claims say so instead of steering it.

Knockout is directional ablation (Arditi et al. 2024): the family's direction projected out of the residual stream
after every layer, at every position (`knockout_unit`, necessity); mode "push" keeps the +α addition at one layer
(sufficiency of a push). Selectivity = target effect − mean |off-target effect|, each a fraction of that family's
clean−corrupt gap (`gap_removed`, a ratio of means via `metrics.mean_recovery`, defined only where the gap's 95% CI
excludes 0, else NaN = "undefined"), with a bootstrap CI over prompts (`stats.resample_ci`).

Cost and baselines (AxBench, Wu et al. 2025: prompting beats steering): `fluency` = ΔNLL per token on unrelated
sentences with the direction added at every position; `prompting` = an instruction and a one-shot prompt aimed
where steering aims, on the same held-out items and metric; `scored_generations` = greedy continuations scored
offline; `versus_prompting` compares them at the graded cell (`cost_and_prompting` runs all four).
`steering_claims` turns the measured tables into claims whose wording, direction and confidence all come from the
evidence.

Modules, in pipeline order: `probes` (a concept's probe prompts and words), `splits` (templates and held-out
samples), `targets` (a family's or a concept's split), `directions` (directions, controls, transfer), `units`
(labelled units, `sweep_units`, grading, the best-layer rule), `pipeline` (the chapter's study, the same from a
profile, summary, audit), `ablation` (knockout, selectivity, off-target KL), `cost` (generation, fluency),
`baselines` (the prompting baseline), `experiments` (multi-layer, length buckets, transfer), `claims`.
"""

from __future__ import annotations

from .ablation import (
    concept_kl,
    gap_defined,
    gap_matrix,
    gap_removed,
    knockout,
    knockout_table,
    normalized,
    selectivity,
)
from .baselines import (
    Baselines,
    cost_and_prompting,
    openings,
    prompted,
    prompting,
    scored_generations,
    versus_prompting,
)
from .claims import layer_sign_claims, steering_claims
from .cost import FLUENCY_BUDGET, fluency, generate, nll
from .directions import (
    Directions,
    fit,
    last_resid,
    mean_diff,
    random_directions,
    shuffled_diff,
    transfer,
    transfer_note,
)
from .experiments import length_buckets, multi_layer_effects, transfer_effects
from .pipeline import Study, audit, bucket_items, graded_controls, study, study_from_profile, summary
from .probes import SENTIMENT_TEMPLATES, SENTIMENT_TOKENS, concept_items, polarity, polarity_lexicon
from .signs import layer_signs
from .splits import Split, has_word, leaks, split_by_template, template, templates, texts
from .targets import concept_target, family_target
from .units import (
    best_layers,
    choose,
    distinct,
    effects,
    grade,
    knockout_unit,
    multi_layer,
    steer_unit,
    sweep_units,
    units,
)

__all__ = [
    "FLUENCY_BUDGET", "SENTIMENT_TEMPLATES", "SENTIMENT_TOKENS", "Baselines", "Directions", "Split", "Study", "audit",
    "best_layers", "bucket_items", "choose", "concept_items", "concept_kl", "concept_target", "cost_and_prompting",
    "distinct", "effects", "family_target", "fit", "fluency", "gap_defined", "gap_matrix", "gap_removed", "generate",
    "grade", "graded_controls", "has_word", "knockout", "knockout_table", "knockout_unit", "last_resid", "layer_sign_claims", "layer_signs", "leaks",
    "length_buckets", "mean_diff", "multi_layer", "multi_layer_effects", "nll", "normalized", "openings",
    "polarity", "polarity_lexicon", "prompted", "prompting", "random_directions", "scored_generations", "selectivity",
    "shuffled_diff", "split_by_template", "steer_unit", "steering_claims", "study", "study_from_profile", "summary", "sweep_units",
    "template", "templates", "texts", "transfer", "transfer_effects", "transfer_note", "units", "versus_prompting",
]
