"""Chapter 07: compression. Layer skipping (the engine's `block` skip and a real smaller model), four ways to
choose what to remove, LoRA healing, precisions (fp32, bf16, int8, NF4) and a qualitative check.

- `skipping`: `skip_unit` (engine), `removed` / `smaller` (real smaller model), `save`, contiguous `runs`.
- `criteria`: atlas (least block-ablation KL), angular distance (Gromov et al.), Block Influence (ShortGPT), random.
- `quality`: top-1 / top-5 agreement and KL over the base's greedy continuation, task accuracy, perplexity.
- `recovery`: healing with `studies.adapters.train`, what it restores, measured speedup.
- `quantization`: precisions through `load(..., quantization=)`, speed, memory, fidelity, intervention sensitivity.
- `qualitative`: 32 prompts with checkable constraints, adherence, repetition and degeneration, speed.
- `study` and `claims`: the chapter's profile, data splits and tables, and its claims.
"""

from . import qualitative
from .claims import (
    criterion_claims,
    criterion_tests,
    healing_claims,
    precision_claims,
    qualitative_claims,
    single_layer_claim,
)
from .criteria import CRITERIA, atlas_effects, choose, criterion_sets, criterion_table, depths, geometry
from .qualitative import CHECKS, PROMPTS, check, details_html, render
from .quality import (
    Probe,
    Reference,
    agreement,
    measure,
    perplexity,
    probe,
    reference,
    task_accuracy,
    task_items,
)
from .quantization import (
    KINDS,
    ablation_sweep,
    amplification,
    atlas_diffs,
    available,
    fidelity,
    hub_moves,
    load_precision,
    precision_subjects,
    sensitivity,
    source,
    speed,
    steering_units,
)
from .recovery import heal, heal_examples, recovery, restored, speedup, tokens_per_second
from .skipping import removed, runs, save, skip_unit, smaller, tag
from .study import (
    Data,
    base_row,
    best_adapter,
    budget,
    by_depth,
    criterion_quality,
    data,
    heal_sets,
    healed_config,
    make_probe,
    profile,
    qualitative_suite,
    skip_check,
    skip_sets,
    skip_table,
)

__all__ = [
    "CHECKS", "CRITERIA", "KINDS", "PROMPTS", "Data", "Probe", "Reference", "ablation_sweep", "agreement",
    "amplification", "atlas_diffs", "atlas_effects", "available", "base_row", "best_adapter", "budget", "by_depth",
    "check", "choose", "criterion_claims", "criterion_quality", "criterion_sets", "criterion_table",
    "criterion_tests", "data", "depths", "details_html", "fidelity", "geometry", "heal", "heal_examples",
    "heal_sets", "healed_config", "healing_claims", "hub_moves", "load_precision", "make_probe", "measure", "perplexity",
    "precision_claims", "precision_subjects", "probe", "profile", "qualitative_claims", "qualitative_suite", "recovery", "reference",
    "qualitative", "removed", "render", "restored", "runs", "save", "sensitivity", "single_layer_claim", "skip_check", "skip_sets",
    "skip_table", "skip_unit", "smaller", "source", "speed", "speedup", "steering_units", "tag",
    "task_accuracy", "task_items", "tokens_per_second",
]
