"""Activation patching with the atlas vocabulary: denoising, noising, span and cross-model patching, and its claims.

Denoising runs the corrupt prompt with one site's clean value written in (`Op.patch("clean")`); noising runs the
clean prompt with the corrupt value (`Op.patch("corrupt")`). Both go through `sweep`. The score is the normalized
recovery of the mean logit difference, a ratio of means over *flipped* prompts (clean LD > 0 > corrupt LD,
`tasks.flipped`) of families the model solves (`tasks.solved`):

    recovery = (mean LD_patched − mean LD_corrupt) / (mean LD_clean − mean LD_corrupt)

1 = the patch restores (denoising) or keeps (noising) the clean behaviour, 0 = the corrupt behaviour. For noising
we report `score = 1 − recovery`: the fraction of the behaviour the corrupt value destroys. A cell whose mean
clean − corrupt gap is not clearly positive (below `MIN_GAP` logits, or within two standard errors of 0) has no
recovery (NaN): a near-zero denominator would inflate any change.

Positions: `last` and `span`, every token where the clean and corrupt ids differ (`sweep_span` expands a unit's
`diff` edits, the first differing token only, to one edit per differing token). Two sites are sufficient by
construction and never graded: the final layer's residual at the last position (it *is* the logits' input) and
the layer-0 input at the span (`input_patch`: a check that the span is complete).

Modules, in pipeline order: `sites` (units and sites), `prompts` (the flip gate, differing tokens), `span` (span
and input patching), `recovery` (recovery tables with CIs), `localize` (selection on one half of the prompts,
test on the other), `cross` (cross-model patching, a real fine-tune and CMAP, `perturbed`), `families` (why
separately trained models cannot simply be patched), `claims` (chapter 03's claims).
"""

from __future__ import annotations

from .claims import cross_claim, patching_claims, untestable
from .cross import (
    DIRECTIONS,
    FT,
    cmap,
    cross_localize,
    cross_patch,
    cross_summary,
    finetune_data,
    finetuned,
    oriented,
    perturbed,
    tuned_effect,
)
from .families import cross_family_why
from .localize import crossover, halves, rows_at, top_write
from .prompts import Selection, cross_choice, differing_tokens, select, span_of
from .recovery import (
    excess_p,
    flipped_rows,
    gap_ok,
    layer_maps,
    recovery_ci,
    recovery_of,
    summarize,
    top_sites,
)
from .sites import METRIC, MIN_GAP, SITE, cumulative, expand, site_name, units
from .span import input_check, input_patch, sweep_span

__all__ = [
    "DIRECTIONS", "FT", "METRIC", "MIN_GAP", "SITE", "Selection", "cmap", "cross_choice", "cross_claim",
    "cross_family_why", "cross_localize", "cross_patch", "cross_summary", "crossover", "cumulative",
    "differing_tokens", "excess_p", "expand", "finetune_data", "finetuned", "flipped_rows", "gap_ok", "halves",
    "input_check", "input_patch", "layer_maps", "oriented", "patching_claims", "perturbed", "recovery_ci",
    "recovery_of", "rows_at", "select", "site_name", "span_of", "summarize", "sweep_span", "top_sites", "top_write",
    "tuned_effect", "units", "untestable",
]
