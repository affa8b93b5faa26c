"""What every family generator shares: token counting with a cache, equal-length partners, capitalization."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

Draft = tuple[str, str, str, str, str, dict]


class Tok:
    """Token counting with a cache (the reference tokenizer, no special tokens)."""

    def __init__(self, tok):
        self.tok = tok
        self.n = lru_cache(maxsize=None)(self._n)

    def _n(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


def partner(rng: random.Random, T: Tok, pool, x, text: Callable = lambda v: v, differ: Callable | None = None):
    """Another element of `pool` whose text has the same token length as x's (None if there is none)."""
    n = T.n(" " + text(x))
    cands = [p for p in pool if p != x and T.n(" " + text(p)) == n and (differ is None or differ(x, p))]
    return rng.choice(cands) if cands else None


def cap(s: str) -> str:
    return s[0].upper() + s[1:]
