"""From atlas to LoRA: target an adapter by the atlas, train it, evaluate it, and take it apart.

PEFT does the adapters (`LoraConfig(target_modules=..., layers_to_transform=...)`, `get_peft_model`, per-module
`scaling` for adapter-only ablation); the model's own loss trains them. The sections, in pipeline order:

- `targeting`: a strategy's layers (atlas, atlas-late, random, all-linear), the controls drawn against the atlas
  target (random-matched, depth-matched, wrong-family) and the PEFT config (`lora_config`).
- `data`: the training config, the right-padded tokenizer, (prompt, completion) encoding and collation.
- `training`: `train` (deterministic given the seed, cached under ``results/lora/`` by content), `attach` and
  `check_fits` (an adapter that does not fit, or was trained on another model, fails in one line).
- `evaluation`: eval loss, exact match, drift (KL of the next token on other families' prompts), validation loss.
- `surgery`: update norms, adapter-only layer ablation, SVD truncation, lock-in over checkpoints, the merged subject.
- `grid`: `run_grid` (train + evaluate a list of runs, optionally with a helper process), mean ± sd summaries.
- `families`: which families a run trains on (the flip-gate-testable ones with training data, else the fallback).
- `study` and `claims`: chapter 05's profile, data, runs and tables, and its claims.
"""

from .claims import (
    CONTROL_P,
    LOCK_RHO,
    MIN_LRS,
    MIN_SEEDS,
    compare,
    lock_in_claim,
    lock_in_stats,
    lora_claims,
    norm_effect,
    spearman_perm,
    verdict,
)
from .data import (
    TrainConfig,
    collate,
    completion_ids,
    completion_logits,
    data_hash,
    encode_pair,
    train_tokenizer,
)
from .evaluation import EvalSet, completion_loss, evaluate, generate, kl_rows, last_logprobs, val_loss
from .families import (
    FamilyChoice,
    choose_families,
    gate_order,
    has_training_data,
    selection_prompts,
    with_families,
)
from .grid import fmt_pm, run_grid, split_threads, start_helper, summarize
from .study import (
    GEN_MARGIN,
    atlas_diff,
    budget,
    choose_lr,
    data_limits,
    family_examples,
    headline_runs,
    headline_seeds,
    headline_table,
    lr_for,
    lr_runs,
    profile,
    split_val,
    sweep_adapter,
    sweep_runs,
    task_data,
)
from .surgery import (
    adapted_subject,
    effect_map,
    layer_ablation,
    lock_in,
    lock_in_summary,
    lock_in_table,
    module_norms,
    scaled,
    truncated,
    truncation_curve,
    update_norms,
)
from .targeting import (
    ALL_LINEAR,
    CONTROLS,
    HEADLINE,
    MODULE_SETS,
    PARAM_TOL,
    STRATEGIES,
    Target,
    atlas_scores,
    control_target,
    depth_bins,
    depth_matched,
    layer_params,
    layer_scores,
    lora_config,
    matched_target,
    random_matched,
    score_table,
    select_layers,
    target,
    target_names,
    targeting,
    to_lora_config,
    why_unscored,
    wrong_family,
)
from .training import Adapter, adapter_dir, adapter_meta, attach, check_fits, train

__all__ = [
    "ALL_LINEAR", "CONTROLS", "CONTROL_P", "GEN_MARGIN", "HEADLINE", "LOCK_RHO", "MIN_LRS", "MIN_SEEDS", "MODULE_SETS", "PARAM_TOL",
    "STRATEGIES", "Adapter", "EvalSet", "FamilyChoice", "Target", "TrainConfig", "adapted_subject", "adapter_dir", "adapter_meta",
    "atlas_diff", "atlas_scores", "attach", "budget", "check_fits", "choose_families", "choose_lr", "collate", "compare",
    "completion_ids", "completion_logits", "completion_loss", "control_target", "data_hash", "data_limits", "depth_bins", "depth_matched",
    "effect_map", "encode_pair", "evaluate", "family_examples", "fmt_pm", "gate_order", "generate",
    "has_training_data", "headline_runs", "headline_seeds", "headline_table",
    "kl_rows", "last_logprobs", "layer_ablation", "layer_params", "layer_scores", "lock_in", "lock_in_claim", "lock_in_stats", "lock_in_summary",
    "lock_in_table", "lora_claims", "lora_config", "lr_for", "lr_runs", "matched_target", "module_norms", "norm_effect",
    "profile", "random_matched", "run_grid", "scaled", "score_table", "select_layers", "selection_prompts", "split_threads", "spearman_perm", "split_val",
    "start_helper", "summarize", "sweep_adapter", "sweep_runs", "target", "target_names", "targeting", "task_data",
    "to_lora_config", "train", "train_tokenizer", "truncated", "truncation_curve", "update_norms", "val_loss",
    "verdict", "why_unscored", "with_families", "wrong_family",
]
