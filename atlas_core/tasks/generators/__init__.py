"""Seeded deterministic generators for the twelve task families.

Each family function draws one *draft* (prompt, answer, distractor, corrupt, corrupt_answer, meta) from a
`random.Random`; `generate_family` keeps drawing until it has enough drafts that pass `core.check` under
the reference tokenizer (SmolLM2) and fall in the length bucket. Corrupt prompts are symmetric
replacements: corrupt_answer is the clean distractor, so answer-minus-distractor flips sign.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from .. import lexicon as L
from ..core import BUCKETS, FAMILIES, Item, TokItem, judge, texts
from .base import Draft, Tok
from .grammar import AGREE_ADJ, agreement, antonyms, arithmetic, ioi
from .lookup import WORDVALS, code_semantics, deobfuscation, factual_recall, json_schema
from .structure import (
    DELIM_INNER,
    DELIM_OUTER,
    DELIM_SUBJ,
    copying,
    delimiter_tracking,
    induction,
    sequence_continuation,
)

__all__ = ["AGREE_ADJ", "DELIM_INNER", "DELIM_OUTER", "DELIM_SUBJ", "GENERATORS", "PLAN", "WORDVALS", "Draft", "Tok",
           "generate_family"]


GENERATORS: dict[str, Callable[[random.Random, str, Tok], Draft | None]] = {
    "factual_recall": factual_recall, "json_schema": json_schema, "code_semantics": code_semantics,
    "copying": copying, "induction": induction, "delimiter_tracking": delimiter_tracking,
    "deobfuscation": deobfuscation, "ioi": ioi, "arithmetic": arithmetic, "agreement": agreement,
    "antonyms": antonyms, "sequence_continuation": sequence_continuation,
}
assert tuple(GENERATORS) == FAMILIES


# ---------------------------------------------------------------- driver

# items per (variant, bucket) written to data/; sizes exceed the minimums so that other tokenizers
# (which drop some items at validation) still leave enough.
PLAN: tuple[tuple[str, str, int], ...] = (
    ("synthetic", "short", 400), ("natural", "short", 120), ("synthetic", "medium", 70), ("synthetic", "long", 70),
)
_TARGETS = {"medium": (45, 130), "long": (200, 700)}


def _filler(rng: random.Random, T: Tok, n_tokens: int) -> str:
    out: list[str] = []
    total = 0
    while total < n_tokens:
        s = rng.choice([f for f in L.FILLER if not out or f != out[-1]])
        out.append(s)
        total += T.n(" " + s)
    return " ".join(out) + "\n\n"


def generate_family(family: str, tok, seed: int = 0, plan=PLAN, max_tries: int = 200, chunk: int = 64,
                    rejects: Counter | None = None) -> list[Item]:
    """All items of one family, deterministic given (family, seed, tokenizer files).

    Drafts are drawn in a fixed rng order and checked in batches; acceptance never feeds back into the
    draws, so the result equals a one-by-one loop. `rejects` (if given) counts why drafts were not kept."""
    rejects = Counter() if rejects is None else rejects
    T = tok if isinstance(tok, Tok) else Tok(tok)
    gen = GENERATORS[family]
    items: list[Item] = []
    for variant, bucket, n in plan:
        rng = random.Random(f"{seed}:{family}:{variant}:{bucket}")
        seen: set[str] = set()
        tries = 0
        lo, hi = BUCKETS[bucket]
        while len(seen) < n:
            if tries > n * max_tries:
                raise RuntimeError(f"{family}/{variant}/{bucket}: only {len(seen)} items after {tries} draws")
            cands = []
            for _ in range(chunk):
                tries += 1
                d = gen(rng, variant, T)
                if d is None:
                    rejects["no_equal_length_partner"] += 1
                    continue
                p, a, dis, c, ca, meta = d
                if bucket != "short":
                    fill = _filler(rng, T, rng.randint(*_TARGETS[bucket]))
                    p, c = fill + p, fill + c
                cands.append(Item(id="", family=family, prompt=p, answer=a, distractor=dis, corrupt=c,
                                  corrupt_answer=ca, bucket=bucket, variant=variant, meta=meta))
            if not cands:
                continue
            ids = T.tok([t for it in cands for t in texts(it)])["input_ids"]
            for i, it in enumerate(cands):
                if len(seen) >= n:
                    break
                if it.prompt in seen:
                    rejects["duplicate"] += 1
                    continue
                res = judge(it, *(list(x) for x in ids[5 * i:5 * i + 5]))
                if not isinstance(res, TokItem):
                    rejects[res.split(":")[0]] += 1
                elif not lo <= res.n_tokens <= hi:
                    rejects["outside_length_bucket"] += 1
                else:
                    items.append(replace(it, id=f"{family}/{variant}/{bucket}/{len(seen):04d}"))
                    seen.add(it.prompt)
    return items
