"""Which families chapter 05 trains on, per model: the ones the atlas can rank layers for.

Atlas targeting is testable only for a family the model passes the flip gate on (`tasks.gate`): elsewhere the
atlas has no behaviour scores and targeting falls back to the KL map ("disruption-targeted"). `choose_families`
gates every family with training data (`tasks.item_examples` derives examples from every family's task items),
keeps the testable ones in order of their gate lower bound (highest first: the family whose localization the gate
trusts most; ties: more items flipped, then the suite's order), trains on the first `P["n_families"]` and maps the
first `P["n_pool"]` (the wrong-family control needs another scored family). When none is testable it falls back
to the stored completion splits (`tasks.TRAIN_FAMILIES`, disruption-targeted) and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from ... import tasks
from ...model.subject import Subject
from ..atlas import atlas_items, item_pool


@dataclass(frozen=True)
class FamilyChoice:
    """The families a run trains on (`families`), maps as wrong-family candidates (`pool`, families first), where
    their examples come from (`source`: "items" = `tasks.item_examples`, "completions" = `tasks.training_split`),
    the gate table, the prompts that selected anything (`exclude`: kept out of every eval split), the families whose
    eval prompts measure drift (`drift`), the profile with `families`, `search_families` and `sweep_family` set to
    match, and a one-line `note`."""

    families: list[str]
    pool: list[str]
    source: str
    gate: pd.DataFrame
    profile: dict
    note: str
    exclude: tuple[str, ...] = field(default=())
    drift: tuple[str, ...] = tasks.TRAIN_FAMILIES


def gate_order(gate: pd.DataFrame) -> list[str]:
    """The testable families of a gate table, highest flip-rate lower bound first (ties: more flipped items, then
    the suite's family order)."""
    t = gate[gate["testable"].astype(bool)].copy()
    t["order"] = [tasks.FAMILIES.index(f) if f in tasks.FAMILIES else len(tasks.FAMILIES) for f in t["family"]]
    return t.sort_values(["flip_lo", "n_flipped", "order"], ascending=[False, False, True])["family"].tolist()


def has_training_data(family: str, P: dict) -> bool:
    """Whether a family's task items give training examples for the profile (`n_val` + a batch of them) and
    eval examples (the eval set is their first `n_eval`, fewer where the split has fewer: `data_limits` says)."""
    if family not in tasks.FAMILIES:
        return False
    n_tr, n_ev = len(tasks.item_examples(family, "train")), len(tasks.item_examples(family, "eval"))
    return n_tr >= P.get("n_val", 0) + P["batch"] and n_ev > 0


def selection_prompts(subject: Subject, families: Sequence[str], n: int, seed: int) -> tuple[str, ...]:
    """The prompts that chose what a run tests: the flip gate's `n` items per family and the atlas's (its first
    items of the same hash order, `atlas_items`), of the subject's valid synthetic short items."""
    pool, _ = item_pool(subject, families)
    return tuple(sorted({it.prompt for it in atlas_items(pool, families, n, seed)}))


def with_families(P: dict, families: Sequence[str]) -> dict:
    """The profile with `families` set, and the searched families and the sweep family moved into them where the
    profile names others (first family)."""
    fams = list(families)
    search = [f for f in (P.get("search_families") or fams) if f in fams] or fams[:1]
    sweep = P.get("sweep_family") if P.get("sweep_family") in fams else fams[0]
    return {**P, "families": fams, "search_families": search, "sweep_family": sweep}


def choose_families(subject: Subject, P: dict, seed: int, candidates: Sequence[str] | None = None,
                    atlas_seeds: Sequence[int] = ()) -> FamilyChoice:
    """Gate `candidates` (default: every family with training data) on `P["n_gate"]` items (`seed`), train on the
    first `P["n_families"]` testable ones (`gate_order`), map the first `P["n_pool"]` (at least those); when none
    is testable: the profile's `families` (default `tasks.TRAIN_FAMILIES`) from the stored completion splits, mapped
    with `atlas_families`, disruption-targeted. `exclude` holds the gate's prompts and the atlas's
    (`P["atlas_prompts"]` per family on `seed` and on each of `atlas_seeds`)."""
    cands = [f for f in (candidates or tasks.FAMILIES) if has_training_data(f, P)]
    gate = tasks.gate(subject, cands, n=P["n_gate"], seed=seed)
    order = gate_order(gate)
    if order:
        n_fam = P.get("n_families") or len(order)
        fams = order[:n_fam]
        pool = order[: max(n_fam, P.get("n_pool") or len(order))]
        drift = tuple(pool if len(pool) > 1 else [*pool, *[f for f in cands if f not in pool][:1]])  # other prompts
        lows = ", ".join(f"{f} {gate.loc[gate.family == f, 'flip_lo'].iloc[0]:.2f}" for f in order)
        note = (f"flip-gate-testable families with training data ({len(order)} of {len(cands)} gated; 95% lower "
                f"bounds: {lows}): training on {fams}, mapping {pool} (wrong-family candidates); examples from the "
                "task items, eval items disjoint from the gate's and the atlas's prompts")
        chosen = {p for s in {seed, *atlas_seeds} for p in selection_prompts(subject, pool, P["atlas_prompts"], s)}
        chosen |= set(selection_prompts(subject, pool, P["n_gate"], seed))
        return FamilyChoice(fams, pool, "items", gate, with_families(P, fams), note, tuple(sorted(chosen)), drift)
    fams = list(P.get("families") or tasks.TRAIN_FAMILIES)
    pool = list(dict.fromkeys([*fams, *(P.get("atlas_families") or tasks.TRAIN_FAMILIES)]))
    note = (f"atlas targeting is not testable on {subject.name}: {tasks.untestable_why(gate)}; falling back to "
            f"{fams} (stored completion splits), disruption-targeted (KL map), mapping {pool}")
    return FamilyChoice(fams, pool, "completions", gate, with_families(P, fams), note)
