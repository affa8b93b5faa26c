"""Profile sizes, in one place: every chapter and the CLI read their numbers from here.

smoke   tiny random model, seconds per chapter (nbval references, CI)
default the embedded SmolLM2-135M on a 2-core CPU
full    paper scale: more prompts, all methods; for a GPU or patience
"""

from __future__ import annotations

import json
from pathlib import Path

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
        "lora": {"families": ["json_schema"], "atlas_families": ["json_schema", "factual_recall"], "n_families": 1,
                 "n_pool": 2, "strategies": ["atlas", "random", "depth-matched", "wrong-family", "all-linear"],
                 "k": 2, "r": 8, "steps": 3, "lr": 5e-3, "lrs": [3e-3, 1e-2, 3e-2, 1e-1], "search_seeds": 1, "batch": 2,
                 "n_train": 16, "n_val": 4, "n_eval": 4, "n_drift": 2, "sweep_family": "json_schema",
                 "modules": ["o", "attn", "mlp"], "ranks": [1, 32], "optimizers": ["adafactor", "lion"],
                 "checkpoints": [0, 1, 2], "ablation_n": 2, "atlas_prompts": 4, "n_gate": 16, "diff_components": ["block"]},
        # chapter 06: SFT (`studies.sft`). A sweep of one dimension at a time around "base" ("volume": training
        # examples; "modules": hub = every linear module of the hub_k layers nearest the atlas hub, o, attn, mlp,
        # all-linear), n_seeds seeds each; the format ablation trains one adapter per format x seed on n_canon
        # canonical examples, judged on n_canon_eval held-out prompts. Smoke: 12 configurations x 2 + 6 x 2 = 36
        # tiny adapters (seconds each).
        "sft": {"n_seeds": 2, "batch": 2, "n_val": 4, "n_eval": 6, "n_drift": 4, "n_canon": 24, "n_canon_eval": 8,
                "hub_exclude": [0], "hub_k": 2, "atlas_families": ["factual_recall", "json_schema"], "atlas_prompts": 4, "n_gate": 16,
                "hub_config": "modules=hub", "hub_seeds": 2,
                "base": {"dataset": "facts", "volume": 16, "optimizer": "adamw", "rank": 4, "modules": "all-linear",
                         "lr": 1e-2, "steps": 3},
                "sweep": {"dataset": ["json", "code", "lists"], "optimizer": ["adafactor", "lion"], "rank": [16],
                          "modules": ["hub", "o"], "lr": [3e-2], "steps": [6], "volume": [8]},
                "format": {"modules": "all-linear", "rank": 4, "lr": 1e-2, "steps": 3}},
        # chapter 07: compression (`studies.compression`): skip sets = every single layer + contiguous runs of
        # run_lengths (runs_per_length: evenly spaced starts per length, None = every start); criteria at the depths
        # nearest `fractions` of the layers (3 criteria + n_random draws each); heal_seeds adapters per healed removal
        # (one removal per criterion at heal_fraction); precisions; n_qual qualitative prompts (of 32)
        "compression": {"families": ["ioi", "antonyms"], "n_items": 4, "n_select": 8, "n_test": 8, "n_heal_val": 4,
                        "n_heal": 32, "gen_tokens": 8, "run_lengths": [2, 3], "runs_per_length": None,
                        "fractions": [0.25, 0.5], "n_random": 4, "heal_fraction": 0.25, "heal_seeds": 3, "heal_steps": 3,
                        "heal_r": 4, "heal_lr": 2e-3, "heal_batch": 4, "speed_tokens": 8, "speed_reps": 1,
                        "precisions": ["fp32", "bf16", "int8", "nf4"], "steer_alphas": [-4.0, 4.0], "steer_pairs": 8,
                        "n_qual": 32, "qual_tokens": 12},
        "robustness": {"families": ["ioi", "antonyms"], "max_families": 2, "buckets": ["short", "medium", "long"],
                       "prompts": {"short": 4, "medium": 4, "long": 2}, "layer_stride": {"long": 2},
                       "n_gate": {"short": 16, "medium": 8, "long": 8}, "components": ["block", "mlp"],
                       "methods": ["zero", "mean"], "compare": ["tiny-gemma3", "tiny-qwen2", "tiny-lfm2", "tiny-gpt2"],
                       "compare_prompts": 4, "compare_gate": 16},
    },
    "default": {
        "model": "smollm2-135m",
        "seeds": [42, 137, 256],
        "baselines": {"families": None, "n": 50, "chat_n": 24},
        # chapter 02 (sized for <= 30 min for the whole book on 2 CPU cores; bench/RESULTS.md): the testable families
        # (flip gate on n_gate items) get every unit on the first seed, and their layer units on the others;
        # the rest only the disruption map (first seed, first method); every head exactly on the first seed (what the
        # screen is checked against; no claim rests on head seeds); 8 prompts per family and seed (full: 50)
        "atlas": {"families": None, "prompts_per_family": 8,
                  "components": ["block", "attn", "mlp"], "methods": ["zero", "mean", "resample"],
                  "heads": True, "positions": ["first", "last"], "screen_k": 10,
                  "n_gate": 48, "replicate": "testable", "head_seeds": 1,
                  "disruption_prompts": 4, "neutral_prompts": 4},  # descriptions only: the disruption map, KL on neutral text
        # chapters 03 and 04 (minutes each on one core): every layer; 04 screens every layer at the control strength ±0.4
        # (the held-out dose-response at the chosen cell runs 4 strengths of its sign)
        "patching": {"families": ["ioi", "factual_recall", "induction"], "n_gate": 64, "n": 16, "layer_stride": 1,
                     "head_stride": 3, "finetune": {"steps": 24, "lr": 2e-3}, "cross_components": ["block", "mlp"],
                     "compare_model": "gemma3-270m",  # CMAP: blocks and MLPs only (attention = the rest; ~40 s)
                     "noise_positions": ["last"]},  # noising where the claims read it (full: the span's map too)
        "steering": {"families": ["ioi", "antonyms", "factual_recall", "induction", "agreement", "copying"],
                     "concepts": ["sentiment"], "n_gate": 48, "n_screen_controls": 1, "n": 8, "n_fit": 16, "layer_stride": 1, "n_random": 10, "n_shuffled": 20,
                     "screen_alphas": [-0.4, 0.4],  # = the control strengths (full: a descriptive dose map)
                     "compare_model": "gemma3-270m", "compare_families": ["ioi"], "compare_stride": 6,
                     "buckets": ["short", "medium"], "gen_tokens": 12, "n_nll": 60, "n_gen": 10, "fluency_alphas": [0.4]},
        # chapter 05 (<= 8 min cold on 2 cores, `workers`: 2 processes): the first flip-gate-testable family with
        # training data (`n_families`; `n_pool` mapped: the wrong-family control's candidates), 5 seeds (the exact
        # sign-flip test's p >= 1/32), 8 steps of 8 one-token examples; a 4-rate search reaching 8x below the old
        # grid's edge; small sweeps (2 module sets, rank 1, Lion), lock-in at 3 steps after 0, a block-only atlas diff.
        # Fallback when no family is testable: `families` from the stored completion splits (json_schema's ~80-token
        # examples cost ~4x a step)
        "lora": {"workers": 2, "families": ["json_schema"], "atlas_families": ["json_schema", "factual_recall"],
                 "n_families": 1, "n_pool": 2,
                 "strategies": ["atlas", "random", "depth-matched", "wrong-family", "all-linear"],
                 "k": 6, "r": 8, "steps": 8, "lr": 1e-3, "lrs": [1.25e-4, 5e-4, 2e-3, 8e-3], "search_seeds": 1,
                 "n_seeds": 5, "batch": 8, "n_train": 400, "n_val": 32, "n_eval": 24,
                 "n_drift": 8, "sweep_family": "json_schema", "modules": ["attn", "mlp"], "ranks": [1],
                 "optimizers": ["lion"], "checkpoints": [0, 2, 4, 8], "ablation_n": 8,
                 "atlas_prompts": 8, "n_gate": 48, "diff_components": ["block"]},  # atlas: chapter 02's 8 x 3 seeds
        # chapter 06 (SFT): 15 configurations x 2 seeds + 6 formats x 2 seeds = 42 adapters of 6 steps at batch 4.
        # Measured here (one thread, shared machine): a training step 0.7-1.4 s on `facts` (<= 20 tokens), ~5 s on
        # the chat format (~75 tokens), ~11 s at batch 8 on verbose (~140 tokens; batch 4 ~half); greedy generation
        # of 16 short answers ~1.6 s; one run (train + measure) 8 s on facts, 44 s on verbose; the base atlas 16 s.
        # Estimated ~11-13 min cold (the chapter's last cell prints the measured time).
        "sft": {"n_seeds": 2, "batch": 4, "n_val": 6, "n_eval": 12, "n_drift": 8, "n_canon": 48, "n_canon_eval": 16,
                "hub_exclude": [0], "hub_k": 4, "atlas_families": ["factual_recall", "ioi"], "atlas_prompts": 8, "n_gate": 32,
                "hub_config": "modules=hub", "hub_seeds": 2,
                "base": {"dataset": "facts", "volume": 48, "optimizer": "adamw", "rank": 8, "modules": "all-linear",
                         "lr": 4e-3, "steps": 6},
                "sweep": {"dataset": ["json", "code", "lists"], "optimizer": ["adafactor", "lion"], "rank": [2, 32],
                          "modules": ["hub", "o", "attn", "mlp"], "lr": [1e-3], "steps": [12], "volume": [16]},
                "format": {"modules": "all-linear", "rank": 8, "lr": 4e-3, "steps": 6}},
        "compression": {"families": ["ioi", "antonyms", "copying"], "n_items": 8, "n_select": 16, "n_test": 12,
                        "n_heal_val": 8, "n_heal": 96, "gen_tokens": 12, "run_lengths": [2, 3, 4, 5, 6, 7, 8],
                        "runs_per_length": 2, "fractions": [0.1, 0.2, 0.3], "n_random": 4, "heal_fraction": 0.2,
                        "heal_seeds": 3, "heal_steps": 10, "heal_r": 8, "heal_lr": 2e-3, "heal_batch": 4,
                        "speed_tokens": 16, "speed_reps": 2, "precisions": ["fp32", "bf16", "int8", "nf4"],
                        "steer_alphas": [-4.0, 4.0], "steer_pairs": 16, "n_qual": 32, "qual_tokens": 20},
        # chapter 08 (<= 10 min cold): the first 2 gate-testable families; medium prompts every 3rd layer, long ones
        # (200-700 filler tokens) every 6th; steering and knockout reuse chapter 04's cached study; gemma3-270m as the second family
        "robustness": {"families": None, "max_families": 2, "buckets": ["short", "medium", "long"],
                       "prompts": {"short": 8, "medium": 4, "long": 2}, "layer_stride": {"medium": 3, "long": 6},
                       "n_gate": {"short": 48, "medium": 24, "long": 16}, "components": ["block", "mlp"],
                       "methods": ["zero", "mean"], "compare": ["gemma3-270m"], "compare_prompts": 8, "compare_gate": 48},
    },
    "full": {
        "model": "smollm2-135m",
        "device": "auto",  # CUDA where there is one (every model a chapter loads; batch sizes from free memory)
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
        "lora": {"n_families": None, "n_pool": None,  # every testable family trained and mapped
                 "k": 6, "r": 8, "steps": 100, "lr": 1e-3, "lrs": [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2],
                 "search_seeds": 2,
                 "n_seeds": 8, "batch": 8, "n_train": 400, "n_val": 64, "n_eval": 120, "n_drift": 50,
                 "sweep_family": "json_schema",
                 "modules": ["o", "q", "k", "v", "gate", "up", "down", "qkv", "gate_up_down", "attn", "mlp"],
                 "ranks": [1, 2, 4, 16, 32], "optimizers": ["adafactor", "lion"], "checkpoints": [0, 10, 25, 50],
                 "ablation_n": 50, "atlas_prompts": 50, "n_gate": 128, "diff_components": ["block", "attn", "mlp"]},
        # chapter 06 (SFT) at the original study's scale: 22 configurations x 3 seeds = 66 sweep adapters (>= 39),
        # 6 formats x 3 seeds on 300 canonical examples, judged on 150 held-out prompts
        "sft": {"n_seeds": 3, "batch": 8, "n_val": 32, "n_eval": 100, "n_drift": 50, "n_canon": 300,
                "n_canon_eval": 150, "hub_exclude": [0], "hub_k": 4, "atlas_families": ["factual_recall", "ioi", "antonyms"],
                "atlas_prompts": 32, "n_gate": 128, "hub_config": "modules=hub", "hub_seeds": 3,
                "base": {"dataset": "facts", "volume": 300, "optimizer": "adamw", "rank": 8, "modules": "all-linear",
                         "lr": 2e-3, "steps": 50},
                "sweep": {"dataset": ["json", "code", "lists"], "optimizer": ["adafactor", "lion"],
                          "rank": [2, 4, 16, 32, 64], "modules": ["hub", "o", "attn", "mlp"], "lr": [5e-4, 1e-3, 5e-3],
                          "steps": [25, 100], "volume": [100, 200]},
                "format": {"modules": "all-linear", "rank": 8, "lr": 2e-3, "steps": 50}},
        "compression": {"families": ["ioi", "antonyms", "copying", "induction"], "n_items": 32, "n_select": 48,
                        "n_test": 48, "n_heal_val": 16, "n_heal": None, "gen_tokens": 32, "run_lengths": [2, 3, 4, 5, 6, 7, 8],
                        "runs_per_length": None, "fractions": [0.1, 0.2, 0.3], "n_random": 20, "heal_fraction": 0.2,
                        "heal_seeds": 5, "heal_steps": 100, "heal_r": 8, "heal_lr": 1e-3, "heal_batch": 8,
                        "speed_tokens": 32, "speed_reps": 5, "precisions": ["fp32", "bf16", "int8", "nf4"],
                        "steer_alphas": [-4.0, -1.0, 1.0, 4.0], "steer_pairs": 32, "n_qual": 32, "qual_tokens": 64},
        "robustness": {"families": None, "max_families": None, "buckets": ["short", "medium", "long"],
                       "prompts": {"short": 50, "medium": 32, "long": 16}, "layer_stride": {},
                       "n_gate": {"short": 128, "medium": 64, "long": 32}, "components": ["block", "mlp"],
                       "methods": ["zero", "mean", "resample"], "compare": ["gemma3-270m"], "compare_prompts": 50,
                       "compare_gate": 128},
    },
}


def get(profile: str) -> dict:
    """The settings of a profile; a one-line error for an unknown name."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


def device(setting: str) -> str:
    """A profile's device: "auto" is CUDA where torch sees one, else the CPU; anything else as given."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


EXPECTED = Path(__file__).resolve().parent.parent / "bench" / "expected.json"


def expected(number: str, profile: str) -> dict | None:
    """Chapter `number`'s measured times in `profile` ({"cold_s", "warm_s", "when", "cpus"}, either time may be
    missing), written by `bench/book.py` into bench/expected.json; None when it was never benchmarked."""
    try:
        return json.loads(EXPECTED.read_text()).get(profile, {}).get(number)
    except (OSError, ValueError):
        return None


def expected_line(number: str, profile: str) -> str:
    """One line: how long chapter `number` took in `profile` when last benchmarked, cold and warm."""
    e = expected(number, profile)
    if not e:
        return f"expected time of chapter {number} ({profile} profile): not benchmarked (bench/book.py)"
    times = ", ".join(f"~{e[k] / 60:.1f} min {k[:-2]}" for k in ("cold_s", "warm_s") if k in e)
    return (f"expected time of chapter {number} ({profile} profile): {times} (bench/book.py on {e.get('cpus', '?')} "
            f"CPUs, {e.get('when', '?')}; cold = nothing cached)")


def chapter(model: str | None, profile: str, seeds=None, results_dir: str | None = None, remote: bool | str = False,
            number: str | None = None):
    """Resolve a chapter's papermill parameters against its profile, enable offline charts, load the model
    (`remote`: see `load`); with the chapter's `number`, print its expected time (`expected_line`).

    Returns a namespace with cfg, model, seeds, results_dir and subject."""
    import os
    from types import SimpleNamespace

    from . import load, paths
    from .publish import charts
    from .tasks.core import distinct, seed_list

    cfg = get(profile)
    if isinstance(seeds, str):  # "42,137" from a command line
        seeds = seed_list(seeds)
    try:
        ints = [int(s) for s in (seeds or cfg["seeds"])]
    except (TypeError, ValueError):
        raise ValueError(f"seeds={seeds!r}: expected distinct integers, e.g. [42, 137, 256]") from None
    seeds = distinct(ints, "seeds")
    charts.setup()
    if results_dir:  # the registry and every table of this kernel follow the chapter's results_dir
        os.environ["ATLAS_RESULTS"] = str(results_dir)
    name = model or cfg["model"]
    os.environ["ATLAS_DEVICE"] = device(cfg.get("device", "cpu"))  # every `load` in this kernel follows it
    if number:
        print(expected_line(number, profile))
    return SimpleNamespace(cfg=cfg, model=name, seeds=seeds,
                           results_dir=str(paths.results_dir()), subject=load(name, remote=remote))
