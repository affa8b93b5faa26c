"""Reference-free measurements of generated text, shared by every study that generates: repeated n-grams,
degeneration, and word counts. Judges and qualitative checks build on these instead of their own copies.

- `repetition(text, n)`: the fraction of a text's word n-grams that repeat an earlier n-gram of the same text
  (0 = no n-gram twice; -> 1 for a loop). Texts with fewer than n + 1 words score 0.
- `degenerate(text)`: empty output, or a loop: the last `tail` words made of one n-gram (n <= 4) repeated at
  least `min_repeats` times, or repetition(3) >= `threshold`.
- `words(text)`: the word count a "at most k words" constraint means (whitespace-separated tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

WORD = re.compile(r"\S+")


def words(text: str) -> int:
    """Whitespace-separated tokens in `text`."""
    return len(WORD.findall(text))


def _tokens(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def repetition(text: str, n: int = 3) -> float:
    """Fraction of the word n-grams of `text` already seen earlier in it (0 when it has fewer than n + 1 words)."""
    toks = _tokens(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if len(grams) < 2:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    rep = 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def loops(text: str, min_repeats: int = 3, max_n: int = 4) -> bool:
    """True when the text ends in one n-gram (n <= max_n words) repeated back to back at least `min_repeats`
    times (a generation stuck in a loop)."""
    toks = _tokens(text)
    for n in range(1, max_n + 1):
        if len(toks) < n * min_repeats:
            continue
        tail = toks[len(toks) - n:]
        if all(toks[len(toks) - (k + 1) * n: len(toks) - k * n] == tail for k in range(min_repeats)):
            return True
    return False


def degenerate(text: str, threshold: float = 0.5, min_repeats: int = 3) -> bool:
    """Empty output, a loop at the end (`loops`), or at least `threshold` of the 3-grams repeated."""
    return not text.strip() or loops(text, min_repeats) or repetition(text, 3) >= threshold


def summary(texts: Sequence[str]) -> dict[str, float]:
    """Mean repetition(3), degeneration rate and mean word count over `texts` (NaN for none)."""
    if not texts:
        return {"repetition": float("nan"), "degenerate": float("nan"), "words": float("nan")}
    k = len(texts)
    return {"repetition": sum(repetition(t) for t in texts) / k, "degenerate": sum(degenerate(t) for t in texts) / k,
            "words": sum(words(t) for t in texts) / k}
