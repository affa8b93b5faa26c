"""The prompts patching uses: the flip gate over a sample of each family (`select`), the tokens where a prompt
differs from its corrupt prompt (`span_of`, `differing_tokens`), and the prompts a cross-model run uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from ... import tasks
from ...model.subject import Subject
from ...tasks import TokItem
from ...tasks.baselines import scored as score_items


def span_of(tokenizer: Callable[[str], Mapping], item: TokItem) -> tuple[int, ...]:
    """Token positions (from the first token) where an item's clean and corrupt prompts differ."""
    a, b = tokenizer(item.prompt)["input_ids"], tokenizer(item.corrupt)["input_ids"]
    return tuple(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


@dataclass
class Selection:
    """The flip gate and the prompts patching may use."""

    solved: pd.DataFrame  # tasks.solved over the gate sample: one row per family
    scored: pd.DataFrame  # one row per gate item: family, item_id, ld_clean, ld_corrupt, flipped, n_diff, last_in_span
    sampled: list  # the gate sample (every family)
    items: list  # up to n flipped items per testable family: what the maps and claims use

    @property
    def testable(self) -> list[str]:
        return sorted(self.solved.loc[self.solved["testable"], "family"])


def select(subject: Subject, families: Sequence[str], n_gate: int, n: int, seed: int) -> Selection:
    """Score `n_gate` sampled prompts per family, gate each family (`tasks.solved`), keep up to `n` flipped prompts
    of each family that passes."""
    sampled, scored = score_items(subject, families, n_gate, seed)
    spans = [span_of(subject.tokenizer, it) for it in sampled]
    scored = scored.assign(n_diff=[len(s) for s in spans],
                           last_in_span=[it.n_tokens - 1 in s for it, s in zip(sampled, spans)])
    solved = tasks.solved(scored)
    ok = set(scored.loc[scored["flipped"], "item_id"])
    items = [it for f in sorted(solved.loc[solved["testable"], "family"])
             for it in tasks.sample([i for i in sampled if i.family == f and i.id in ok], n, seed)]
    return Selection(solved, scored, sampled, items)


def differing_tokens(scored: pd.DataFrame) -> pd.DataFrame:
    """Per family: how many prompts differ from their corrupt prompt in 1, 2, ... tokens."""
    t = pd.crosstab(scored["family"], scored["n_diff"])
    t = t.rename(columns={k: f"{k} token{'s' * (k > 1)}" for k in t.columns})
    return t.assign(mean=scored.groupby("family")["n_diff"].mean().round(2),
                    last_token_differs=scored.groupby("family")["last_in_span"].sum())


def cross_choice(sel: Selection, families: Sequence[str]) -> tuple[str, list]:
    """The family a fine-tune is trained on for cross-model patching, and its prompts: the first family that passes
    the gate with its flipped prompts; on a model that passes none, the first family with its gate sample (its
    claim is then "not testable")."""
    family = sel.testable[0] if sel.testable else families[0]
    pool = sel.items if sel.testable else sel.sampled
    return family, [it for it in pool if it.family == family]
