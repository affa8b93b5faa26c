"""The task suite: twelve families of next-token probes, training/eval splits, contrastive sets, baselines.

Data lives in data/ as JSONL written by `python -m atlas_core.tasks regenerate` (deterministic for a seed);
`load_items` reads it, `validate` checks it against a tokenizer, `baselines` measures a model on it.
"""

from __future__ import annotations

from .baselines import (
    FLIP_GATE,
    baseline_claims,
    baselines,
    flipped,
    gate,
    solved,
    template_flips,
    untestable_why,
)
from .core import (
    BUCKETS,
    FAMILIES,
    VARIANTS,
    Item,
    TokItem,
    by_family,
    has_chat_template,
    load_items,
    sample,
    suite_hash,
    validate,
    with_chat_template,
)
from .training import (
    CONCEPTS,
    TRAIN_FAMILIES,
    content_key,
    exact_match,
    first_word_match,
    item_examples,
    training_split,
)


def contrastive(name: str, root=None) -> list[tuple[str, str]]:
    """(positive, negative) pairs: a family name gives (clean, corrupt) prompts of its synthetic short items;
    'sentiment' (positive, negative) and 'formality' (formal, informal) give natural sentence pairs."""
    import json

    from ..paths import data_dir

    if name in FAMILIES:
        return [(it.prompt, it.corrupt) for it in load_items(name, "synthetic", "short", root=root)]
    if name not in CONCEPTS:
        raise ValueError(f"unknown contrastive set {name!r}; known: {FAMILIES + CONCEPTS}")
    path = (root or data_dir()) / "contrastive" / f"{name}.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                d = json.loads(line)
                out.append((d["positive"], d["negative"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{i}: expected {{'positive': str, 'negative': str}} ({e})") from None
    return out


__all__ = [
    "BUCKETS", "by_family", "CONCEPTS", "FAMILIES", "FLIP_GATE", "baseline_claims", "flipped", "gate", "solved", "untestable_why", "TRAIN_FAMILIES", "VARIANTS", "Item", "TokItem", "baselines", "contrastive",
    "content_key", "exact_match", "first_word_match", "has_chat_template", "item_examples", "load_items", "template_flips", "with_chat_template", "sample", "suite_hash", "training_split", "validate",
]
