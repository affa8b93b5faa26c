"""A concept's probe prompts and words: sentiment openings whose next word is an evaluative adjective, the
(positive, negative) single-token word pairs they are graded by, and the polarity lexicon that scores
generations."""

from __future__ import annotations

import re
from functools import lru_cache
from types import SimpleNamespace

from ... import tasks
from ...model.subject import Subject

# Probe prompts for sentiment: neutral openings whose next word is an evaluative adjective. They avoid the
# subjects and frames of the contrastive fit sentences (data/contrastive/sentiment.jsonl), and the probe words
# below are dropped from the fit sentences (`concept_target`), so fit and probe share no template, text or word.
SENTIMENT_TEMPLATES = (
    "Last night we finally saw the show. It was", "The food at that place was", "My first day at the new job was",
    "The laptop I bought last month is", "Her acting in the school play was", "The drive home this weekend was",
    "The staff at the front desk were", "Overall, the novel was", "The view from our room was",
    "My experience with their support team was", "The second album by that band is", "Our neighbours' garden looks",
    "The match on Sunday was", "The museum tour yesterday was", "This new recipe for soup tastes",
    "The flight back from the conference was",
)
SENTIMENT_TOKENS = ((" good", " bad"), (" great", " terrible"), (" wonderful", " awful"), (" excellent", " poor"))


def concept_items(subject: Subject, concept: str = "sentiment") -> list[SimpleNamespace]:
    """Probe items for a concept: neutral templates × (positive, negative) single-token pairs; LD = pos − neg."""
    if concept != "sentiment":
        raise ValueError(f"no probe prompts for concept {concept!r}; known: sentiment")
    tok = subject.tokenizer
    pairs = [(a, b, tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"])
             for a, b in SENTIMENT_TOKENS]
    pairs = [(a, b, x[0], y[0]) for a, b, x, y in pairs if len(x) == 1 and len(y) == 1]
    if not pairs:
        raise ValueError(f"no {concept} word pair is a single token under {subject.name}'s tokenizer; "
                         "add pairs to steering.SENTIMENT_TOKENS")
    return [SimpleNamespace(id=f"{concept}{i}-{j}", family=concept, prompt=t, corrupt=t, answer=a, distractor=b,
                            answer_id=x, distractor_id=y, diff_pos=0, bucket="short", variant="concept")
            for i, t in enumerate(SENTIMENT_TEMPLATES) for j, (a, b, x, y) in enumerate(pairs)]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@lru_cache(maxsize=1)
def polarity_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(positive, negative) words: those that differ within the sentiment contrast pairs, plus the probe words."""
    pos, neg = {a.strip() for a, _ in SENTIMENT_TOKENS}, {b.strip() for _, b in SENTIMENT_TOKENS}
    for p, q in tasks.contrastive("sentiment"):
        a, b = set(_words(p)), set(_words(q))
        pos |= a - b
        neg |= b - a
    return frozenset(pos - neg), frozenset(neg - pos)


def polarity(text: str) -> int:
    """Positive minus negative lexicon words in `text` (`polarity_lexicon`)."""
    pos, neg = polarity_lexicon()
    w = _words(text)
    return sum(x in pos for x in w) - sum(x in neg for x in w)
