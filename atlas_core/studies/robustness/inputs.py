"""What chapter 08 runs on: the families (chapter 04's steering families that pass the flip gate), chapter 04's
steering study rebuilt with its own settings (so its sweeps come from the cache) with the steering effect per
length bucket and the directional-ablation knockout, and the second-family models' atlases."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ... import load, tasks
from ...engine.sweep import Cache
from ...model.subject import Subject
from .. import steering
from ..adapters import gate_order
from ..atlas import Atlas, map_atlas


def families(subject: Subject, P: dict, S: dict, seed: int) -> tuple[list[str], pd.DataFrame]:
    """(families, gate): `P["families"]` or chapter 04's steering families, gated on short prompts (`P["n_gate"]`
    ["short"] items, chapter 01's cached scores), the testable ones first by the gate's lower bound, at most
    `P["max_families"]`; the first ones untested when none passes (their maps are then disruption only)."""
    cands = P["families"] or S["families"] or list(tasks.FAMILIES)
    gate = tasks.gate(subject, cands, n=P["n_gate"]["short"], seed=seed)
    order = gate_order(gate) or list(cands)
    return order[: P["max_families"] or len(order)], gate


def steering_study(subject: Subject, fams: Sequence[str], S: dict, buckets: Sequence[str], seed: int,
                   gate: pd.DataFrame, alpha: float = 0.4,
                   cache: Cache | None = None) -> tuple[steering.Study, pd.DataFrame, pd.DataFrame]:
    """(study, effect per bucket, knockout): chapter 04's study of `fams` with its profile `S` (no concept;
    `steering.study_from_profile`, as chapter 04 builds it, so its sweeps are cache hits), each family's chosen
    direction at +`alpha` on held-out items of every bucket (`steering.length_buckets`), and the
    directional-ablation knockout (`steering.knockout`)."""
    st = steering.study_from_profile(subject, fams, [], S, seed, solved=gate, cache=cache)
    by_bucket, _ = steering.length_buckets(subject, st, buckets, S["n"], alpha, seed=seed, item_seed=seed + 1,
                                           cache=cache)
    ko, _ = steering.knockout(subject, st, seed=seed, cache=cache)
    return st, by_bucket, ko


def compare_atlases(names: Sequence[str], fams: Sequence[str], P: dict, seed: int) -> dict[str, Atlas]:
    """Each second-family model's block/MLP zero-ablation atlas on `fams` (its own flip gate), one seed."""
    out = {}
    for name in names:
        sub = load(name)
        gate = tasks.gate(sub, list(fams), n=P["compare_gate"], seed=seed)
        out[name] = map_atlas(sub, list(fams), P["components"], ["zero"], [seed], P["compare_prompts"], heads=False,
                              positions=(), neutral_prompts=0, direct=False, gate=gate, progress=True)
    return out
