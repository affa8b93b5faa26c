"""Training examples as an adapter sees them: the training config, a right-padded copy of the subject's tokenizer,
(prompt, completion) pairs encoded with the loss on completion tokens only (then EOS, unless `"eos": False`), and
the content hash of a data set."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ...model.subject import Subject


@dataclass(frozen=True)
class TrainConfig:
    """How an adapter is trained (every field is part of its cache key): constant learning rate, batch size,
    optimizer (adamw, adafactor, lion), seed (LoRA A init and example order) and sequence cap."""

    steps: int = 30
    lr: float = 2e-3
    batch: int = 8
    optimizer: str = "adamw"
    seed: int = 0
    max_len: int | None = None  # None: no truncation (`task_data` derives one that truncates nothing)


def train_tokenizer(subject: Subject) -> PreTrainedTokenizerBase:
    """A right-padded copy of the subject's tokenizer (the subject's own pads left, for traces)."""
    tok = copy.copy(subject.tokenizer)
    tok.padding_side = "right"
    return tok


def encode_pair(tok, ex: dict, max_len: int | None) -> tuple[list[int], list[int]]:
    """(ids, labels) of prompt + completion + EOS, cut at `max_len`; labels -100 on the prompt."""
    p = tok(ex["prompt"])["input_ids"]
    c = completion_ids(tok, ex)
    ids = (p + c)[:max_len]
    labels = ([-100] * len(p) + c)[:max_len]
    return ids, labels


def completion_ids(tok, ex: dict) -> list[int]:
    """The tokens a perfect model generates for an example: its completion as training encodes it, then EOS unless
    the example says the text goes on (`"eos": False`: a task item's next token, where only the answer is scored)."""
    eos = [tok.eos_token_id] if ex.get("eos", True) else []
    return tok(ex["completion"], add_special_tokens=False)["input_ids"] + eos


def collate(tok, examples: Sequence[dict], max_len: int | None) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels -100 on prompt and padding (the model's own loss then ignores them)."""
    pairs = [encode_pair(tok, ex, max_len) for ex in examples]
    n = max(len(i) for i, _ in pairs)
    pad = tok.pad_token_id
    ids = torch.tensor([i + [pad] * (n - len(i)) for i, _ in pairs])
    labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in pairs])
    mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i, _ in pairs])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, V) in fp32, targets (N,), row (N,)) at the N positions whose next token is a completion token
    (label != -100): the LM head projects only those (`logits_to_keep` as a boolean mask), not the prompt and the
    padding, which the loss never reads (~15% of a training step on short completions). A model whose forward
    takes no boolean `logits_to_keep` gets every position projected and the same ones selected."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    dev = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep.to(dev)).logits
    except TypeError:
        logits = model(input_ids=ids, attention_mask=mask).logits
    if logits.dim() == 3:
        logits = logits[keep.to(logits.device)]
    return logits.float(), labels[:, 1:][keep[:, :-1]].to(logits.device), torch.nonzero(keep)[:, 0].to(logits.device)


def data_hash(examples: Sequence[dict]) -> str:
    """Content hash of (prompt, completion) examples (and `"eos": False` where set), in order (part of an adapter's
    cache key)."""
    h = hashlib.blake2b(digest_size=8)
    for ex in examples:
        h.update(json.dumps([ex["prompt"], ex["completion"], *([False] if not ex.get("eos", True) else [])]).encode())
    return h.hexdigest()
