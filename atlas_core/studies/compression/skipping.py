"""Layer skipping two ways that must agree: the engine's skip (a `block` unit zeroing the block's residual write,
so the layer's output equals its input) and a real smaller model (the layers removed from the module list, the
config saying so, every remaining layer renumbered, saved and reloadable with `load(path)`).

The engine expresses "this block's output = its input" as `Edit(Site("block", k), Op.zero())`: a `block` site is
the layer's output minus its input. `skip_unit` builds that unit; `smaller` builds the smaller model, and
tests/test_compression.py checks that the two give equal logits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ...engine.interventions import Edit, Op, Site, Unit
from ...model.subject import Subject


def skip_unit(layers: Sequence[int]) -> Unit:
    """The engine's skip of `layers`: each block's residual write zeroed (output = input), all in one forward."""
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        raise ValueError("skip_unit needs at least one layer")
    return Unit(tuple(Edit(Site("block", k), Op.zero()) for k in layers), (("skipped", tag(layers)),))


def tag(layers: Sequence[int]) -> str:
    """A skip set as text: 'L3' or 'L3-5' for a contiguous run, 'L1,4,7' otherwise."""
    ls = sorted(layers)
    if len(ls) > 1 and ls == list(range(ls[0], ls[-1] + 1)):
        return f"L{ls[0]}-{ls[-1]}"
    return "L" + ",".join(map(str, ls))


def runs(n_layers: int, lengths: Sequence[int], per_length: int | None = None, seed: int = 0) -> list[tuple[int, ...]]:
    """Every contiguous run of each length (shorter than the model), or `per_length` evenly spaced starts of each
    (first and last start always included) when `per_length` is given: a subsample, said so by the caller."""
    out: list[tuple[int, ...]] = []
    for n in lengths:
        starts = list(range(n_layers - n + 1))
        if n >= n_layers or not starts:
            continue
        if per_length is not None and per_length < len(starts):
            starts = sorted({int(round(x)) for x in np.linspace(0, len(starts) - 1, per_length)})
        out.extend(tuple(range(s, s + n)) for s in starts)
    return out


def _layers_parent(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), name


def _configs(model: torch.nn.Module) -> list:
    seen: dict[int, object] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def _remove(model: torch.nn.Module, path: str, layers: Sequence[int]):
    """Remove `layers` in place; return what restores the model."""
    parent, name = _layers_parent(model, path)
    old = getattr(parent, name)
    drop = set(int(x) for x in layers)
    if not drop or min(drop) < 0 or max(drop) >= len(old):
        raise ValueError(f"layers to remove must lie in 0..{len(old) - 1}, got {sorted(drop)}")
    if len(drop) >= len(old):
        raise ValueError("cannot remove every layer")
    kept = [lay for i, lay in enumerate(old) if i not in drop]
    idx = []  # (module, old layer_idx): attention/conv caches are addressed by it
    for j, lay in enumerate(kept):
        for m in lay.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                idx.append((m, m.layer_idx))
                m.layer_idx = j
    cfgs = []
    for cfg in _configs(model):
        types = getattr(cfg, "layer_types", None)
        cfgs.append((cfg, cfg.num_hidden_layers, types))
        cfg.num_hidden_layers = len(kept)
        if isinstance(types, list) and len(types) == len(old):
            cfg.layer_types = [t for i, t in enumerate(types) if i not in drop]
    setattr(parent, name, torch.nn.ModuleList(kept))
    return parent, name, old, idx, cfgs


def _restore(state) -> None:
    parent, name, old, idx, cfgs = state
    setattr(parent, name, old)
    for m, i in idx:
        m.layer_idx = i
    for cfg, n, types in cfgs:
        cfg.num_hidden_layers = n
        if types is not None:
            cfg.layer_types = types


@contextmanager
def removed(subject: Subject, layers: Sequence[int]) -> Iterator[torch.nn.Module]:
    """The subject's own model with `layers` removed (module list, config, layer indices) until the block ends:
    a real smaller model without a copy. Plain forwards only (the nnsight wrapper addresses the full model)."""
    state = _remove(subject.model, subject.arch.paths.layers, layers)
    try:
        yield subject.model
    finally:
        _restore(state)


def smaller(subject: Subject, layers: Sequence[int]) -> Subject:
    """A new Subject: a copy of the model with `layers` removed for good (its config says how many it has, and
    per-layer lists such as `layer_types` follow), with its own fingerprint and a source that says what was cut."""
    model = copy.deepcopy(subject.model)
    _remove(model, subject.arch.paths.layers, layers)
    return subject.derive(model, f"{subject.name}-skip{tag(layers)}",
                          f"layers {sorted(set(layers))} removed ({len(set(layers))}/{subject.arch.n_layers})")


def save(subject: Subject, path: str | Path) -> Path:
    """Save model and tokenizer as a Hugging Face checkpoint (`load(path)` reloads it); returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    subject.model.save_pretrained(str(path))
    subject.tokenizer.save_pretrained(str(path))
    return path


def check(subject: Subject, layers: Sequence[int], prompts: Sequence[str], path: str | Path) -> dict:
    """The engine's skip against the real smaller model and its saved-and-reloaded checkpoint: max |difference| of
    last-position logits (engine skip vs smaller; reloaded vs smaller) and the layer counts each config reports."""
    from transformers.utils import logging as hf_logging

    from ...engine.batch import Batch, last_logits
    from ...model.subject import load

    small = smaller(subject, layers)
    engine = Batch(subject, list(prompts)).run([skip_unit(layers)])[0]
    enc = small.encode(list(prompts))
    real = last_logits(small, enc["input_ids"], enc["attention_mask"])
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no timing bars in the output of a checked cell
    try:
        back = load(str(save(small, path)))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    again = last_logits(back, enc["input_ids"], enc["attention_mask"])
    return {"skipped": tag(layers), "layers_base": subject.arch.n_layers, "layers_config": small.model.config.num_hidden_layers,
            "layers_reloaded": back.model.config.num_hidden_layers, "max_diff_engine_vs_smaller": float((engine - real).abs().max()),
            "max_diff_reloaded_vs_smaller": float((again - real).abs().max())}
