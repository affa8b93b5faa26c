"""Neutral, non-task English sentences (`data/neutral/sentences.jsonl`): the matched text for the atlas's
specificity score and the unrelated text for steering's fluency cost (NLL per token)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..paths import data_dir


def path() -> Path:
    return data_dir() / "neutral" / "sentences.jsonl"


def sentences(n: int | None = None, seed: int = 0) -> list[str]:
    """`n` sentences (all when None), in a seeded shuffled order; the same (n, seed) always gives the same list."""
    p = path()
    if not p.exists():
        raise FileNotFoundError(f"neutral sentences missing: {p} (one JSON object per line, {{\"text\": ...}})")
    texts = [json.loads(line)["text"] for line in p.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(texts)
    if n is not None and n > len(texts):
        raise ValueError(f"asked for {n} neutral sentences, {p} has {len(texts)}")
    return texts if n is None else texts[:n]
