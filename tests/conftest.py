"""Shared fixtures: tiny random models for every family, the embedded model, simple items."""

from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_tmp = tempfile.mkdtemp(prefix="atlas-test-")  # tests never touch results/ or the shared sweep cache
os.environ["ATLAS_RESULTS"] = _tmp
os.environ["ATLAS_CACHE"] = os.path.join(_tmp, "cache.sqlite")
torch.set_num_threads(min(2, torch.get_num_threads()))

import atlas_core  # noqa: E402
from atlas_core.model import tiny  # noqa: E402
from atlas_core.model.subject import wrap  # noqa: E402


@pytest.fixture(scope="session")
def smol():
    return atlas_core.load("smollm2-135m")


@pytest.fixture(scope="session")
def tok():
    return tiny.shared_tokenizer()


def tiny_subject(family: str, tok, seed: int = 0, **kw):
    model, _ = tiny.build(family, vocab_size=len(tok), seed=seed, **kw)
    return wrap(f"tiny-{family}", model, tok, "test", {})


def make_items(tok, n: int = 6, family: str = "fact"):
    """Clean/corrupt pairs of equal token length with single-token answers (capital cities)."""
    caps = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Germany", "Berlin"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing")]
    fillers = ["", "Quick quiz. ", "Geography: ", "Tell me. "]
    items = []
    for i in range(n):
        c, a = caps[i % len(caps)]
        c2, a2 = caps[(i + 1) % len(caps)]
        p = f"{fillers[i % len(fillers)]}The capital of {c} is"
        q = p.replace(c, c2)
        assert len(tok(p)["input_ids"]) == len(tok(q)["input_ids"])
        diff = next(j for j, (x, y) in enumerate(zip(tok(p)["input_ids"], tok(q)["input_ids"])) if x != y)
        items.append(SimpleNamespace(id=f"{family}{i}", family=family, prompt=p, corrupt=q, bucket="short", variant="synthetic",
                                     answer_id=tok(" " + a)["input_ids"][0], distractor_id=tok(" " + a2)["input_ids"][0],
                                     diff_pos=diff))
    return items
