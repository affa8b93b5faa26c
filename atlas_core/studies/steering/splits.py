"""Held-out splits: a prompt's template (its lexicon fillers masked), samples that share no template and no
text (`split_by_template`), and the leaks between parts (`leaks`, `Split`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ... import tasks
from ...tasks import generators, lexicon
from .probes import SENTIMENT_TOKENS


@lru_cache(maxsize=1)
def _filler_rx() -> re.Pattern:
    """Every slot filler of the generators (names, nouns, cities, numbers, adjectives, filler sentences, ...),
    single letters and numbers, longest first, matched case-insensitively as whole words."""
    L, G = lexicon, generators
    words: set[str] = set()
    for tup in (L.NAMES, L.NOUNS, L.COLORS, L.CITIES, L.PETS, L.JOBS, L.NUMBER_WORDS, L.ORDINALS, L.DAYS, L.MONTHS,
                L.SPELL_WORDS, L.FILLER, L.SURNAMES, L.TITLES, L.SENTIMENT_SUBJ, G.AGREE_ADJ, G.WORDVALS,
                G.DELIM_SUBJ, G.DELIM_OUTER, G.DELIM_INNER):
        words |= set(tup)
    for rows in (L.COUNTRIES, L.LANDMARKS, L.AGREE_NOUNS, L.ANTONYMS, L.SENTIMENT_ADJ, SENTIMENT_TOKENS):
        words |= {w.strip() for r in rows for w in r if w}
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alts}|[A-Za-z]|\d+)(?!\w)", re.IGNORECASE)


def template(text: str) -> str:
    """A prompt's template: its fillers masked as `_`, runs of slots (word lists) and repeated lines (few-shot
    demos) collapsed, a leading filler paragraph dropped. A prompt with no text left besides slots (a random
    word sequence) is its own template."""
    k = re.sub(r"_(?:[ ,]+_)+", "_", _filler_rx().sub("_", text))
    lines = k.split("\n")
    k = re.sub(r"^_\s*\n\n", "", "\n".join(x for i, x in enumerate(lines) if i == 0 or x != lines[i - 1]))
    return k if re.sub(r"[_\s,]", "", k) else text


def texts(x: Any) -> tuple[str, ...]:
    """The texts of a fit pair (both sentences) or of an item (clean and corrupt prompt)."""
    return tuple(x) if isinstance(x, tuple) else tuple(dict.fromkeys((x.prompt, x.corrupt)))


def templates(x: Any) -> set[str]:
    """The templates of a fit pair's or an item's texts."""
    return {template(t) for t in texts(x)}


def has_word(text: str, words: Iterable[str]) -> bool:
    """Whether any of `words` occurs in `text` as a whole word (case-insensitive)."""
    return any(re.search(rf"(?<!\w){re.escape(w.strip())}(?!\w)", text, re.IGNORECASE) for w in words)


def _order(s: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()


def _round_robin(groups: list[list]) -> list:
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def split_by_template(units: Sequence, sizes: Sequence[int], seed: int,
                      keys: Callable[[Any], Iterable[str]] = templates) -> list[list]:
    """Disjoint samples of at most `sizes` units: no key (template, or the text of a template-free prompt) in two
    of them, and no text inside a text of an earlier part. Units sharing a key form one group; whole groups go,
    in a seeded order, to the part missing the largest share of its units (then to the one with the fewest groups
    per unit wanted), and each part is sampled round-robin over its groups. A part stays short (or empty) when
    there are too few groups."""
    parent = list(range(len(units)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    ukeys = [sorted(keys(u)) for u in units]
    for i, ks in enumerate(ukeys):
        for k in ks:
            parent[root(i)] = root(first.setdefault(k, i))
    groups: dict[int, list] = {}
    for i in range(len(units)):
        groups.setdefault(root(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: _order(min(ukeys[g[0]]), seed))
    parts: list[list[list]] = [[] for _ in sizes]
    have = [0] * len(sizes)
    for g in ordered:
        need = [(s - h) / s if s else -np.inf for s, h in zip(sizes, have, strict=True)]
        i = int(np.argmax(need)) if max(need) > 0 else int(np.argmin([len(p) / max(s, 1e-9) for p, s in
                                                                      zip(parts, sizes, strict=True)]))
        parts[i].append(tasks.sample([units[j] for j in g], len(g), seed))
        have[i] += len(g)
    out: list[list] = []
    taken: list[str] = []
    for p, s in zip(parts, sizes, strict=True):
        pick = _round_robin([[u for u in g if not any(a in b or b in a for a in texts(u) for b in taken)] for g in p])[:s]
        out.append(pick)
        taken += [t for u in pick for t in texts(u)]
    return out


def leaks(parts: dict[str, Sequence], probe_words: Sequence[str] = ()) -> list[str]:
    """What two parts share: a template, or a text (equal or one inside the other); and any probe word inside a
    fit text (parts named 'fit...'). Empty when the parts are properly held out from one another."""
    out = []
    names = list(parts)
    tpl = {n: {t for x in parts[n] for t in templates(x)} for n in names}
    txt = {n: {t for x in parts[n] for t in texts(x)} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if shared := tpl[a] & tpl[b]:
                out.append(f"{a} and {b} share {len(shared)} template(s), e.g. {sorted(shared)[0]!r}")
            if inside := [(x, y) for x in txt[a] for y in txt[b] if x in y or y in x]:
                out.append(f"{a} and {b} share {len(inside)} text(s), e.g. {inside[0][0]!r} / {inside[0][1]!r}")
    for n in names:
        if n.startswith("fit") and probe_words and (hit := [t for t in txt[n] if has_word(t, probe_words)]):
            out.append(f"{n}: {len(hit)} text(s) contain a probe word, e.g. {hit[0]!r}")
    return out


@dataclass
class Split:
    """One target's held-out samples: fit pairs (direction), select items (layer and sign), eval items (grades)."""

    target: str
    fit: list[tuple[str, str]]
    select: list
    eval: list
    probe_words: tuple[str, ...] = ()  # the answer words a concept is graded by (never in its fit texts)

    def leaks(self) -> list[str]:
        """What this target's fit, select and eval parts share (`leaks`)."""
        return leaks({"fit": self.fit, "select": self.select, "eval": self.eval}, self.probe_words)
