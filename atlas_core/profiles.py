"""Profile sizes, in one place: every chapter and the CLI read their numbers from here.

smoke   tiny random model, seconds per chapter (nbval references, CI)
default the embedded SmolLM2-135M on a 2-core CPU
full    paper scale: more prompts, all methods; for a GPU or patience
"""

from __future__ import annotations

PROFILES: dict[str, dict] = {
    "smoke": {
        "model": "tiny-llama",
        "seeds": [42, 137, 256],
        "baselines": {"families": ["ioi", "antonyms", "copying", "arithmetic"], "n": 8},
        # chapter 02: ablation atlas
        "atlas": {"families": ["ioi", "antonyms", "copying", "arithmetic"], "prompts_per_family": 4,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 5,
                  "n_gate": 16, "replicate": "all", "head_seeds": 1},
        # chapters 03 and 04: patching, steering and knockout
        "patching": {"families": ["ioi", "antonyms"], "n_gate": 16, "n": 4, "layer_stride": 1, "head_stride": 2,
                     "finetune": {"steps": 8, "lr": 1e-2}, "cross_components": ["block", "attn", "mlp"],
                     "compare_model": "tiny-gemma3"},
        "steering": {"families": ["ioi", "antonyms"], "concepts": ["sentiment"], "n_gate": 16, "n_screen_controls": 1, "n": 4, "n_fit": 8, "layer_stride": 2,
                     "n_random": 10, "n_shuffled": 3, "compare_model": "tiny-gemma3", "compare_families": ["ioi"],
                     "compare_stride": 1, "buckets": ["short", "medium"], "gen_tokens": 6, "n_nll": 16, "n_gen": 4,
                     "fluency_alphas": [0.2, 0.4]},
        # chapter 05: adapters (`studies.adapters`). "families" (None = the three training families) narrows the
        # headline; "atlas_families" are mapped too (the wrong-family control's pool); "strategies" are the headline's
        # (None = HEADLINE). Each strategy's learning rate is chosen on validation loss over "lrs" on the first
        # "search_seeds" seeds of "search_families" (None = every family; elsewhere the search family's choice is
        # reused, and the verdict says so); "n_seeds" extends the chapter's seeds for the headline. Sequence length and
        # generation caps are read off the data. Adapters: smoke 1 x 5 x (4 + 2) = 30 + 7 sweep (seconds); default
        # 5 x 4 (search, json_schema, seed 1) + 2 x 5 x 3 - 5 reused = 45 + 7 sweep = 52 (~2 min each on one CPU core,
        # two processes); full 3 x 6 x 5 x 2 (search) + 3 x 6 x 8 - 36 reused = 288 + 18 sweep.
        "lora": {"families": ["json_schema"], "atlas_families": ["json_schema", "factual_recall"],
                 "strategies": ["atlas", "random", "depth-matched", "wrong-family", "all-linear"],
                 "k": 2, "r": 8, "steps": 3, "lr": 5e-3, "lrs": [3e-3, 1e-2, 3e-2, 1e-1], "search_seeds": 1, "batch": 2,
                 "n_train": 16, "n_val": 4, "n_eval": 4, "n_drift": 2, "sweep_family": "json_schema",
                 "modules": ["o", "attn", "mlp"], "ranks": [1, 32], "optimizers": ["adafactor", "lion"],
                 "checkpoints": [0, 1, 2], "ablation_n": 2, "atlas_prompts": 4, "n_gate": 16, "diff_components": ["block"]},
    },
    "default": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256],
        "baselines": {"families": None, "n": 50},
        # chapter 02: every family on the first seed, the testable ones (flip gate on n_gate items) on the others;
        # every head exactly on the first seed (what the screen is checked against; no claim rests on head seeds)
        "atlas": {"families": None, "prompts_per_family": 16,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 10,
                  "n_gate": 48, "replicate": "testable", "head_seeds": 1},
        # chapters 03 and 04 (minutes each on one core): every layer; 04 screens every layer x 8 strengths
        "patching": {"families": ["ioi", "factual_recall", "induction"], "n_gate": 64, "n": 16, "layer_stride": 1,
                     "head_stride": 3, "finetune": {"steps": 24, "lr": 2e-3}, "cross_components": ["block", "mlp"],
                     "compare_model": "gemma3-270m"},  # CMAP: blocks and MLPs only (attention = the rest; ~40 s)
        "steering": {"families": ["ioi", "antonyms", "factual_recall", "induction", "agreement", "copying"],
                     "concepts": ["sentiment"], "n_gate": 48, "n_screen_controls": 1, "n": 8, "n_fit": 16, "layer_stride": 1, "n_random": 10, "n_shuffled": 20,
                     "screen_alphas": [-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8],
                     "compare_model": "gemma3-270m", "compare_families": ["ioi"], "compare_stride": 3,
                     "buckets": ["short", "medium"], "gen_tokens": 12, "n_nll": 100, "n_gen": 10, "fluency_alphas": [0.4]},
        "lora": {"workers": 2, "families": ["json_schema", "factual_recall"], "atlas_families": None,
                 "strategies": ["atlas", "random", "depth-matched", "wrong-family", "all-linear"],
                 "k": 6, "r": 8, "steps": 24, "lr": 2e-3, "lrs": [1e-3, 2e-3, 4e-3, 8e-3], "search_seeds": 1,
                 "search_families": ["json_schema"], "batch": 8, "n_train": 400, "n_val": 32, "n_eval": 24,
                 "n_drift": 12, "sweep_family": "json_schema", "modules": ["o", "attn", "mlp"], "ranks": [1, 32],
                 "optimizers": ["adafactor", "lion"], "checkpoints": [0, 5, 10, 16], "ablation_n": 12,
                 "atlas_prompts": 16, "n_gate": 48, "diff_components": ["block", "attn", "mlp"]},
    },
    "full": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256, 512, 1024],
        "baselines": {"families": None, "n": 200},
        "atlas": {"families": None, "prompts_per_family": 50,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample", "random"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 20,
                  "n_gate": 128, "replicate": "all", "head_seeds": None},
        "patching": {"families": None, "n_gate": 128, "n": 32, "layer_stride": 1, "head_stride": 1,
                     "finetune": {"steps": 48, "lr": 2e-3}, "cross_components": ["block", "attn", "mlp"],
                     "compare_model": "gemma3-270m"},
        "steering": {"families": None, "concepts": ["sentiment"], "n_gate": 128, "n_screen_controls": 2, "n": 32, "n_fit": 64, "layer_stride": 1, "n_random": 20,
                     "screen_alphas": [-1.6, -0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8, 1.6],
                     "n_shuffled": 40, "compare_model": "gemma3-270m", "compare_families": None, "compare_stride": 1,
                     "buckets": ["short", "medium", "long"], "gen_tokens": 24, "n_nll": 100, "n_gen": 64,
                     "fluency_alphas": [0.1, 0.2, 0.4, 0.8]},
        "lora": {"k": 6, "r": 8, "steps": 100, "lr": 1e-3, "lrs": [5e-4, 1e-3, 2e-3, 5e-3, 1e-2], "search_seeds": 2,
                 "n_seeds": 8, "batch": 8, "n_train": 400, "n_val": 64, "n_eval": 120, "n_drift": 50,
                 "sweep_family": "json_schema",
                 "modules": ["o", "q", "k", "v", "gate", "up", "down", "qkv", "gate_up_down", "attn", "mlp"],
                 "ranks": [1, 2, 4, 16, 32], "optimizers": ["adafactor", "lion"], "checkpoints": [0, 10, 25, 50],
                 "ablation_n": 50, "atlas_prompts": 50, "n_gate": 128, "diff_components": ["block", "attn", "mlp"]},
    },
}


def get(profile: str) -> dict:
    """The settings of a profile; a one-line error for an unknown name."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


def chapter(model: str | None, profile: str, seeds=None, results_dir: str | None = None, remote: bool | str = False):
    """Resolve a chapter's papermill parameters against its profile, enable offline charts, load the model
    (`remote`: see `load`).

    Returns a namespace with cfg, model, seeds, results_dir and subject."""
    import os
    from types import SimpleNamespace

    from . import load, paths
    from .publish import charts
    from .tasks.core import distinct

    cfg = get(profile)
    if isinstance(seeds, str):  # "42,137" from a command line
        seeds = [s for s in seeds.split(",") if s.strip()]
    try:
        ints = [int(s) for s in (seeds or cfg["seeds"])]
    except (TypeError, ValueError):
        raise ValueError(f"seeds={seeds!r}: expected distinct integers, e.g. [42, 137, 256]") from None
    seeds = distinct(ints, "seeds")
    charts.setup()
    if results_dir:  # the registry and every table of this kernel follow the chapter's results_dir
        os.environ["ATLAS_RESULTS"] = str(results_dir)
    name = model or cfg["model"]
    return SimpleNamespace(cfg=cfg, model=name, seeds=seeds,
                           results_dir=str(paths.results_dir()), subject=load(name, remote=remote))
