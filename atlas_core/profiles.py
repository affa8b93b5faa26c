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
    },
    "default": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256],
        "baselines": {"families": None, "n": 50},
        "atlas": {"families": None, "prompts_per_family": 16,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 10},
    },
    "full": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256, 512, 1024],
        "baselines": {"families": None, "n": 200},
        "atlas": {"families": None, "prompts_per_family": 50,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample", "random"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 20},
    },
}


def get(profile: str) -> dict:
    """The settings of a profile; a one-line error for an unknown name."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


def chapter(model: str | None, profile: str, seeds=None, results_dir: str | None = None):
    """Resolve a chapter's papermill parameters against its profile, enable offline charts, load the model.

    Returns a namespace with cfg, model, seeds, results_dir and subject."""
    import os
    from types import SimpleNamespace

    from . import charts, load, paths

    cfg = get(profile)
    charts.setup()
    if results_dir:  # the registry and every table of this kernel follow the chapter's results_dir
        os.environ["ATLAS_RESULTS"] = str(results_dir)
    name = model or cfg["model"]
    return SimpleNamespace(cfg=cfg, model=name, seeds=[int(s) for s in (seeds or cfg["seeds"])],
                           results_dir=str(paths.results_dir()), subject=load(name))
