"""Supervised fine-tuning (chapter 06): does lower loss mean a better model?

Composed from the adapters (`adapters.train` and its cache, `Target`, `TrainConfig`, the evaluation functions) and
the judges (`evidence.judges`). The sections, in pipeline order:

- `data`: four generated instruction sets of different shapes and the canonical (content-fixed) examples.
- `formats`: one canonical example rendered six ways (flat, verbose, concise, chat, terse, bad).
- `sweep`: the sweep grid (one dimension at a time around a base configuration), training with peak memory, and
  `measure` / `run` (losses, drift, time per step, judged answers).
- `study`: the profile, data and tasks, the base atlas and hub, the run plan, dimension effects, hub survival.
- `claims`: loss-quality correlation, best adapter vs base model, the dominant dimension, the hub after tuning.
"""

from .claims import (
    HYPOTHESIS_R,
    REL_MARGIN,
    best_vs_base,
    dim_wide,
    dominant_dimension,
    loss_quality,
    paired,
    sft_claims,
    sweep_rule_claims,
)
from .data import FIELDS, QUESTIONS, SETS, canonical, fact_strings, instruction_sets
from .formats import FORMATS, chat_label, examples_table, question, record_line, render, render_all
from .study import (
    agreement,
    base_atlas,
    budget,
    contains_reference,
    dimension_effects,
    hub_adapters,
    hub_of,
    hub_survival,
    judges,
    plan,
    prepare,
    profile,
)
from .sweep import (
    DIMENSIONS,
    MODULES,
    Task,
    hub_layers,
    judged,
    measure,
    peak_memory,
    run,
    sweep_configs,
    sweep_runs,
    target_of,
    train_record,
)

__all__ = [
    "DIMENSIONS", "FIELDS", "FORMATS", "HYPOTHESIS_R", "MODULES", "QUESTIONS", "SETS", "Task", "agreement", "base_atlas",
    "REL_MARGIN", "best_vs_base", "budget", "canonical", "chat_label", "contains_reference", "dim_wide",
    "dimension_effects",
    "dominant_dimension", "examples_table", "fact_strings", "hub_adapters", "hub_layers", "hub_of", "hub_survival", "instruction_sets", "judged",
    "judges", "loss_quality", "measure", "peak_memory", "plan", "prepare", "profile", "question", "record_line",
    "paired", "render", "render_all", "run", "sft_claims", "sweep_rule_claims", "sweep_configs", "sweep_runs", "target_of",
    "train_record",
]
