"""Mapping an atlas: the prompts (`item_pool`, `atlas_items`, `neutral_items`) and units (`atlas_units`) it
sweeps, `map_atlas` (sample, sweep, aggregate, save, register) and `screen_vs_exact` (the attribution screen on
the atlas's own prompts and units, so the exact side reads the atlas's cache)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ... import tasks
from ...engine.interventions import Site, Unit, head_sweep, layer_sweep, method_op
from ...engine.screen import versus_exact
from ...engine.sweep import Cache, code_version, sweep
from ...evidence import registry
from ...model.archmap import ArchMap
from ...model.subject import Subject
from ...paths import locked, writable_dir
from ...tasks import neutral
from ...tasks.core import distinct
from .. import direct as direct_effects
from .core import Atlas

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def item_pool(subject: Subject, families: Sequence[str], bucket: str = "short",
              variant: str = "synthetic") -> tuple[list, pd.DataFrame]:
    """Every `variant`/`bucket` item of `families` valid for the subject's tokenizer, and the validation report
    (`tasks.validate`)."""
    return tasks.validate([it for f in families for it in tasks.load_items(f, variant=variant, bucket=bucket)],
                          subject.tokenizer)


def atlas_items(pool: Sequence, families: Sequence[str], n: int, seed: int) -> list:
    """The atlas's prompts of one seed: `n` items of each family (in `families` order) sampled from `pool`."""
    return [it for f in families for it in tasks.sample([i for i in pool if i.family == f], n, seed)]


def atlas_units(arch: ArchMap, components: Sequence[str], methods: Sequence[str], heads: bool = False,
                positions: Sequence[str] = (), seed: int = 0) -> list[Unit]:
    """The atlas's units: every (component, layer, method), then (heads) every head zero-ablated, then block
    zero-ablation at each of `positions` only."""
    units = layer_sweep(components, methods, arch.n_layers, arch, seed=seed)
    if heads:
        units += head_sweep(arch, "zero")
    for pos in positions:
        units += [Unit.of(Site("block", layer, position=pos), method_op("zero")) for layer in range(arch.n_layers)]
    return units


def neutral_items(tokenizer: PreTrainedTokenizerBase, lengths: Sequence[int], n: int, seed: int = 0) -> list[SimpleNamespace]:
    """`n` neutral texts (`neutral.sentences`) whose token lengths match `n` evenly spaced quantiles of `lengths`
    (the task prompts' token lengths, special tokens included): consecutive sentences joined, cut to length.

    Items for `sweep`: family "neutral", corrupt = prompt, answer = distractor = the last token (LD is 0 by
    construction; only KL is read)."""
    texts = neutral.sentences(seed=seed)
    specials = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    order = sorted(lengths)
    targets = [order[round(q)] for q in np.linspace(0, len(order) - 1, n)] if order else []
    out, start, m = [], 0, len(texts)
    for i, target in enumerate(targets):
        for _ in range(m):
            k, ids = 0, []
            while len(ids) < target - specials and k < m:
                k += 1
                ids = tokenizer(" ".join(texts[(start + j) % m] for j in range(k)), add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(ids[:max(1, target - specials)])
            got = tokenizer(text)["input_ids"]
            start = (start + (k if len(got) == target else 1)) % m
            if len(got) == target:
                out.append(SimpleNamespace(id=f"neutral/{seed}/{i}", family="neutral", prompt=text, corrupt=text,
                                           answer_id=got[-1], distractor_id=got[-1], diff_pos=0, bucket="",
                                           variant="neutral"))
                break
        else:
            raise ValueError(f"no neutral text re-tokenizes to {target} tokens")
    return out


def _arguments(families, components, methods, seeds, prompts_per_family: int) -> tuple[list[str], list[int]]:
    """(families, seeds) checked: known, distinct, none of the lists empty, at least one prompt per family."""
    fams = distinct(families if families is not None else tasks.FAMILIES, "families")
    unknown = sorted(set(fams) - set(tasks.FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(tasks.FAMILIES)}")
    for what, vals in (("families", fams), ("components", components), ("methods", methods), ("seeds", seeds)):
        if not list(vals):
            raise ValueError(f"{what} is empty: give at least one (families=None means all)")
    seeds = distinct(seeds, "seeds")
    if prompts_per_family < 1:
        raise ValueError(f"prompts_per_family={prompts_per_family}: must be >= 1 (mean and resample ablation need >= 2)")
    return fams, seeds


def _usable(subject: Subject, fams: list[str], named: bool, n: int, bucket: str,
            variant: str) -> tuple[list[str], list, pd.DataFrame]:
    """(families, pool, report): families without valid items dropped with a warning (an error when they were
    named, or when none is left); an error when a family has fewer than `n` valid items."""
    pool, report = item_pool(subject, fams, bucket, variant)
    kept = {f: sum(it.family == f for it in pool) for f in fams}
    empty = [f for f in fams if not kept[f]]
    where = f"{variant}/{bucket} items valid for {subject.name}'s tokenizer"
    if empty and (named or len(empty) == len(fams)):
        raise ValueError(f"families {empty} have no {where}: choose other families, --bucket or --variant")
    if empty:
        warnings.warn(f"families {empty} have no {where}: mapped without them", stacklevel=3)
        fams = [f for f in fams if kept[f]]
    short = {f: kept[f] for f in fams if kept[f] < n}
    if short:
        raise ValueError(f"prompts_per_family={n} is more than some families have ({where}: "
                         f"{', '.join(f'{f} {k}' for f, k in short.items())}); allowed: 1..{min(kept[f] for f in fams)}")
    return fams, pool, report


def _save(out: str | Path, atlas: Atlas, frames: dict[str, pd.DataFrame | None]) -> dict[str, str]:
    """atlas.json and each frame as NAME.parquet in `out`, atomically, under the directory's lock."""
    paths = {}
    with locked(out, reentrant=True) as out:  # two runs never write one directory at once
        paths["atlas"] = str(atlas.save(out))
        for name, df in frames.items():
            if df is not None:
                df.to_parquet(out / f"{name}.parquet.tmp", index=False)
                (out / f"{name}.parquet.tmp").replace(out / f"{name}.parquet")
                paths[name] = str(out / f"{name}.parquet")
    return paths


def map_atlas(
    subject: Subject,
    families: Sequence[str] | None = None,
    components: Sequence[str] = ("block", "attn", "mlp"),
    methods: Sequence[str] = ("zero", "mean", "resample"),
    seeds: Sequence[int] = (42, 137, 256),
    prompts_per_family: int = 16,
    heads: bool = True,
    positions: Sequence[str] = ("first", "last"),
    bucket: str = "short",
    variant: str = "synthetic",
    out: str | Path | None = None,
    progress: bool = True,
    cache: Cache | None = None,
    neutral_prompts: int | None = None,
    direct: bool | None = None,
    gate: pd.DataFrame | None = None,
    replicate: str = "all",
    head_seeds: int | None = None,
    layers: Sequence[int] | None = None,
    disruption_prompts: int | None = None,
) -> Atlas:
    """Sample prompts per family and seed, sweep every unit, aggregate into an Atlas (and save it).

    positions: extra block zero-ablation units at these token positions (first / last token effects).
    neutral_prompts: neutral sentences per seed, length-matched to that seed's task prompts, swept with the
    layer units for the specificity score (default: prompts_per_family; 0: none).
    direct: add each unit's direct effect (`direct.py`; one clean forward per batch, no unit forwards); default:
    on, except for a remote subject (direct effects read the weights locally).
    gate: a `tasks.gate` table (flip rates on more items than the atlas samples); it decides the testable
    families instead of the atlas's own items.
    replicate: "all" sweeps every unit for every family on every seed. "testable" spends exact forwards where
    claims are made: the gate's testable families (every family when none is: the disruption hub) get every
    unit on the first seed, and their layer units on the others (position units, read only as descriptions: the
    sink share and the position map, on the first seed); the remaining families get only the disruption map
    (whole-component units, the first method) on the first seed.
    head_seeds: per-head units on the first `head_seeds` seeds only (None: every seed). No claim rests on a
    head's replication; the first seed's exact head sweep is what the attribution screen is checked against.
    Neutral text is swept with the first method's layer units (specificity is read for that method).
    layers: only units at these layers (None: every layer), e.g. a stride for long prompts.
    disruption_prompts: prompts per family for the disruption map of the families no claim is about (replicate
    "testable"; None: prompts_per_family): a description, so it may take fewer."""
    t0 = time.time()
    fams, seeds = _arguments(families, components, methods, seeds, prompts_per_family)
    if replicate not in ("all", "testable"):
        raise ValueError(f"replicate={replicate!r}: use 'all' or 'testable'")
    if replicate == "testable" and gate is None:
        raise ValueError("replicate='testable' needs a gate (tasks.gate): it decides which families the seeds replicate")
    if out is not None:
        writable_dir(out)  # before the compute, not after it
    fams, pool, report = _usable(subject, fams, families is not None, prompts_per_family, bucket, variant)
    arch = subject.arch
    cache = cache if cache is not None else Cache()
    n_neutral = prompts_per_family if neutral_prompts is None else neutral_prompts
    direct = not subject.remote if direct is None else direct
    frames, neutral_frames, stats = [], [], {"computed": 0, "cached": 0}
    first = "zero" if "zero" in methods else methods[0]
    testable = [f for f in fams if gate is None or f in set(gate.loc[gate["testable"], "family"])]
    for i, seed in enumerate(seeds):
        full = fams if replicate == "all" else (testable or fams) if i == 0 else testable
        pos = positions if replicate == "all" or i == 0 else ()
        plan = [(full, atlas_units(arch, components, methods, heads and (head_seeds is None or i < head_seeds),
                                   pos, seed), prompts_per_family)]
        if replicate == "testable" and i == 0:  # the disruption map of the families no claim is made about
            plan.append(([f for f in fams if f not in full], atlas_units(arch, components, [first], seed=seed),
                         disruption_prompts or prompts_per_family))
        if layers is not None:
            plan = [(fs, [u for u in us if u.start_layer in set(layers)], n) for fs, us, n in plan]
        plan = [(atlas_items(pool, fs, n, seed), units) for fs, units, n in plan if fs]
        if not plan:
            continue
        runs = []
        if n_neutral:
            lengths = [len(subject.tokenizer(it.prompt)["input_ids"]) for items, _ in plan for it in items]
            nd = sweep(subject, neutral_items(subject.tokenizer, lengths, n_neutral, seed),
                       [u for u in atlas_units(arch, components, [first], seed=seed)
                        if layers is None or u.start_layer in set(layers)], seed=seed, cache=cache, progress=progress,
                       desc=f"neutral seed {seed}")
            neutral_frames.append(nd)
            runs.append(nd)
        for items, units in plan:
            df = sweep(subject, items, units, seed=seed, cache=cache, progress=progress, desc=f"atlas seed {seed}")
            runs.append(df)
            if direct:
                df = direct_effects.attach(df, direct_effects.direct_rows(subject, items, units, seed=seed))
            frames.append(df)
        for r in runs:
            stats["computed"] += r.attrs["computed"]
            stats["cached"] += r.attrs["cached"]
    rows = pd.concat(frames, ignore_index=True)
    neutral_rows = pd.concat(neutral_frames, ignore_index=True) if neutral_frames else None
    meta = {"families": fams, "components": list(components), "methods": list(methods), "seeds": list(seeds),
            "prompts_per_family": prompts_per_family, "heads": heads, "positions": list(positions),
            "layers": None if layers is None else [int(x) for x in layers],
            "neutral_prompts": n_neutral, "disruption_prompts": disruption_prompts, "direct": direct,
            "replicate": replicate, "head_seeds": head_seeds,
            "gate_items": int(gate["n_items"].min()) if gate is not None and len(gate) else None,
            "bucket": bucket, "variant": variant, "code_version": code_version(), "suite_hash": tasks.suite_hash(pool),
            "dropped_by_validation": int(report["total"].sum() - report["kept"].sum()) if len(report) else 0}
    atlas = Atlas.from_rows(rows, subject.name, subject.fingerprint, arch.n_layers, arch.n_heads, meta,
                            neutral=neutral_rows)
    if gate is not None:
        atlas = atlas.gated(gate[gate["family"].isin(fams)])
    paths = _save(out, atlas, {"rows": rows, "neutral": neutral_rows}) if out is not None else {}
    wall = time.time() - t0
    registry.append("atlas", model=subject.name, fingerprint=subject.fingerprint, params=meta,
                    units_computed=stats["computed"], units_cached=stats["cached"], seconds=round(wall, 2), outputs=paths)
    atlas.run_stats = {"computed": stats["computed"], "cached": stats["cached"], "seconds": wall}
    return atlas


def screen_vs_exact(subject: Subject, atlas: Atlas, seed: int, k: int) -> tuple[pd.DataFrame | None, str]:
    """`engine.screen.versus_exact` on the atlas's own prompts of `seed` and its layer and head units (its
    families, prompts per family, bucket, variant, components and methods, from `atlas.meta`), so the exact
    sweep reads what `map_atlas` cached. Families: the testable ones; every one on a model that solves none
    (a diagnostic of the screen, not a behaviour)."""
    m = atlas.meta
    fams = atlas.testable_families or atlas.families
    pool, _ = item_pool(subject, fams, m["bucket"], m["variant"])
    items = atlas_items(pool, fams, m["prompts_per_family"], seed)
    units = atlas_units(subject.arch, m["components"], m["methods"], heads=m["heads"], seed=seed)
    return versus_exact(subject, items, units, seed, k)
