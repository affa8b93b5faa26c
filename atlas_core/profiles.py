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
                  "heads": True, "positions": ["first", "last"], "screen_k": 5},
        # chapters 03 and 04: patching, steering and knockout
        "patching": {"families": ["ioi", "antonyms"], "n_gate": 16, "n": 4, "layer_stride": 1, "head_stride": 2,
                     "finetune": {"steps": 8, "lr": 1e-2}, "cross_components": ["block", "attn", "mlp"],
                     "compare_model": "tiny-gemma3"},
        "steering": {"families": ["ioi", "antonyms"], "concepts": ["sentiment"], "n_gate": 16, "n_screen_controls": 1, "n": 4, "n_fit": 8, "layer_stride": 2,
                     "n_random": 10, "n_shuffled": 3, "compare_model": "tiny-gemma3", "compare_families": ["ioi"],
                     "compare_stride": 1, "buckets": ["short", "medium"], "gen_tokens": 6, "n_nll": 16, "n_gen": 4,
                     "fluency_alphas": [0.2, 0.4]},
    },
    "default": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256],
        "baselines": {"families": None, "n": 50},
        "atlas": {"families": None, "prompts_per_family": 16,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 10},
        # chapters 03 and 04 (minutes each on one core): every layer; 04 screens every layer x 8 strengths
        "patching": {"families": ["ioi", "factual_recall", "induction"], "n_gate": 64, "n": 16, "layer_stride": 1,
                     "head_stride": 3, "finetune": {"steps": 24, "lr": 2e-3}, "cross_components": ["block", "mlp"],
                     "compare_model": "gemma3-270m"},  # CMAP: blocks and MLPs only (attention = the rest; ~40 s)
        "steering": {"families": ["ioi", "antonyms", "factual_recall", "induction", "agreement", "copying"],
                     "concepts": ["sentiment"], "n_gate": 48, "n_screen_controls": 1, "n": 8, "n_fit": 16, "layer_stride": 1, "n_random": 10, "n_shuffled": 20,
                     "screen_alphas": [-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8],
                     "compare_model": "gemma3-270m", "compare_families": ["ioi"], "compare_stride": 3,
                     "buckets": ["short", "medium"], "gen_tokens": 12, "n_nll": 100, "n_gen": 10, "fluency_alphas": [0.4]},
    },
    "full": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256, 512, 1024],
        "baselines": {"families": None, "n": 200},
        "atlas": {"families": None, "prompts_per_family": 50,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample", "random"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 20},
        "patching": {"families": None, "n_gate": 128, "n": 32, "layer_stride": 1, "head_stride": 1,
                     "finetune": {"steps": 48, "lr": 2e-3}, "cross_components": ["block", "attn", "mlp"],
                     "compare_model": "gemma3-270m"},
        "steering": {"families": None, "concepts": ["sentiment"], "n_gate": 128, "n_screen_controls": 2, "n": 32, "n_fit": 64, "layer_stride": 1, "n_random": 20,
                     "screen_alphas": [-1.6, -0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8, 1.6],
                     "n_shuffled": 40, "compare_model": "gemma3-270m", "compare_families": None, "compare_stride": 1,
                     "buckets": ["short", "medium", "long"], "gen_tokens": 24, "n_nll": 100, "n_gen": 64,
                     "fluency_alphas": [0.1, 0.2, 0.4, 0.8]},
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
