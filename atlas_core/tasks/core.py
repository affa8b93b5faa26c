"""Items, their JSONL storage, per-tokenizer validation, sampling and hashing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..paths import data_dir

FAMILIES: tuple[str, ...] = (
    "factual_recall", "json_schema", "code_semantics", "copying", "induction", "delimiter_tracking",
    "deobfuscation", "ioi", "arithmetic", "agreement", "antonyms", "sequence_continuation",
)
VARIANTS: tuple[str, ...] = ("synthetic", "natural")
BUCKETS: dict[str, tuple[int, int]] = {"short": (5, 30), "medium": (30, 150), "long": (150, 1000)}


@dataclass(frozen=True)
class Item:
    """One next-token probe. answer/distractor/corrupt_answer are the next token's text, leading space included."""

    id: str
    family: str
    prompt: str
    answer: str
    distractor: str
    corrupt: str
    corrupt_answer: str
    bucket: str
    variant: str
    meta: dict = field(default_factory=dict, hash=False, compare=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class TokItem(Item):
    """An item validated under one tokenizer. Positions index `tokenizer(prompt)["input_ids"]` (BOS included)."""

    answer_id: int = -1
    distractor_id: int = -1
    corrupt_answer_id: int = -1
    n_tokens: int = 0
    diff_pos: int = -1


ITEM_FIELDS = tuple(f.name for f in fields(Item))
_STR_FIELDS = tuple(n for n in ITEM_FIELDS if n != "meta")


def tasks_dir(root: Path | None = None) -> Path:
    return (root or data_dir()) / "tasks"


def parse_item(line: str, where: str) -> Item:
    """One JSONL line -> Item; raises ValueError('where: what is wrong')."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in ITEM_FIELDS if k not in d]
    extra = sorted(set(d) - set(ITEM_FIELDS))
    if missing or extra:
        raise ValueError(f"{where}: missing fields {missing}, unknown fields {extra}")
    bad = [k for k in _STR_FIELDS if not isinstance(d[k], str) or (k not in ("distractor",) and d[k] == "")]
    if bad or not isinstance(d["meta"], dict):
        raise ValueError(f"{where}: fields {bad + ([] if isinstance(d['meta'], dict) else ['meta'])} have a wrong type or are empty")
    if d["family"] not in FAMILIES:
        raise ValueError(f"{where}: unknown family {d['family']!r}")
    if d["bucket"] not in BUCKETS or d["variant"] not in VARIANTS:
        raise ValueError(f"{where}: bad bucket {d['bucket']!r} or variant {d['variant']!r}")
    return Item(**d)


def read_items(path: Path) -> list[Item]:
    """Items of one JSONL file; a one-line ValueError for a bad line or a repeated id (it would count twice)."""
    items, first = [], {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                it = parse_item(line, f"{path}:{i}")
                if it.id in first:
                    raise ValueError(f"{path}:{i}: duplicate id {it.id!r} (first on line {first[it.id]}): ids must be "
                                     "unique, a repeated item counts twice in n, CIs and claims")
                first[it.id] = i
                items.append(it)
    return items


def distinct(values, what: str) -> list:
    """`values` as a list; a one-line ValueError naming any repeat (`what`: e.g. 'seeds'), which would count twice."""
    vals = list(values)
    reps = sorted({v for v in vals if vals.count(v) > 1}, key=str)
    if reps:
        raise ValueError(f"{what} {', '.join(map(str, reps))} given more than once: give distinct {what} "
                         "(a repeat counts twice in n, CIs and claims)")
    return vals


def seed_list(text: str) -> list[int]:
    """Seeds from a command line ("42,137,256"): distinct integers, or a one-line ValueError naming `--seeds`."""
    try:
        ints = distinct([int(s) for s in text.split(",") if s.strip()], "seeds")
    except ValueError as err:
        raise ValueError(f"--seeds {text!r}: {err}" if "more than once" in str(err)
                         else f"--seeds {text!r}: expected a comma list of integers, e.g. 42,137,256") from None
    if not ints:
        raise ValueError("--seeds is empty; give a comma list of integers, e.g. 42,137,256")
    return ints


def load_items(family: str | None = None, variant: str | None = "synthetic", bucket: str | None = "short",
               root: Path | None = None) -> list[Item]:
    """Items from data/tasks/<family>.jsonl (all families when None); None for variant/bucket means any."""
    fams = FAMILIES if family is None else (family,)
    for f in fams:
        if f not in FAMILIES:
            raise ValueError(f"unknown family {f!r}; known: {', '.join(FAMILIES)}")
    out = []
    for f in fams:
        out += [it for it in read_items(tasks_dir(root) / f"{f}.jsonl")
                if (variant is None or it.variant == variant) and (bucket is None or it.bucket == bucket)]
    return out


# ---------------------------------------------------------------- tokenizer checks


def _ids(tok, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


def _next_id(prompt_ids: list[int], full: list[int]) -> int | None:
    """The one token `full` adds after `prompt_ids` (None unless full = prompt_ids + exactly one token).

    `full` tokenizes prompt + token text the way the model would see the continued text, so leading-space
    conventions (GPT-2 'Ġ', SentencePiece '▁') are handled by the tokenizer itself."""
    if len(full) != len(prompt_ids) + 1 or full[: len(prompt_ids)] != prompt_ids:
        return None
    return full[-1]


def judge(item: Item, p: list[int], c: list[int], pa: list[int], pd: list[int], cca: list[int]) -> TokItem | str:
    a, d, ca = _next_id(p, pa), _next_id(p, pd), _next_id(c, cca)
    if a is None or d is None or ca is None:
        return "answer_not_single_token"
    if len(p) != len(c):
        return "length_mismatch"
    if a == d:
        return "other: answer and distractor are the same token"
    diff = next((i for i, (x, y) in enumerate(zip(p, c, strict=True)) if x != y), -1)
    if diff < 0:
        return "other: corrupt prompt tokenizes like the clean one"
    base = {k: getattr(item, k) for k in ITEM_FIELDS}
    return TokItem(**base, answer_id=a, distractor_id=d, corrupt_answer_id=ca, n_tokens=len(p), diff_pos=diff)


def texts(it: Item) -> tuple[str, ...]:
    return (it.prompt, it.corrupt, it.prompt + it.answer, it.prompt + it.distractor, it.corrupt + it.corrupt_answer)


def check(item: Item, tok) -> TokItem | str:
    """TokItem, or why the item fails under this tokenizer: 'answer_not_single_token', 'length_mismatch'
    or 'other: ...'. Token ids are those of `tok(text)` with the tokenizer's default special tokens."""
    return judge(item, *(_ids(tok, t) for t in texts(item)))


def validate(items: list[Item], tokenizer):
    """(kept TokItems, report) under `tokenizer`; the report has one row per family, nothing dropped silently."""
    import pandas as pd

    kept: list[TokItem] = []
    rows: dict[str, dict] = {}
    ids: list[list[int]] = []
    for s in range(0, len(items), 512):  # batched tokenization (fast tokenizers encode lists in parallel)
        ids += list(tokenizer([t for it in items[s:s + 512] for t in texts(it)])["input_ids"])
    for i, it in enumerate(items):
        r = rows.setdefault(it.family, dict(family=it.family, total=0, kept=0, dropped_answer_not_single_token=0,
                                            dropped_length_mismatch=0, dropped_other=0))
        r["total"] += 1
        res = judge(it, *(list(x) for x in ids[5 * i:5 * i + 5]))
        if isinstance(res, TokItem):
            kept.append(res)
            r["kept"] += 1
        elif res == "answer_not_single_token":
            r["dropped_answer_not_single_token"] += 1
        elif res == "length_mismatch":
            r["dropped_length_mismatch"] += 1
        else:
            r["dropped_other"] += 1
    order = [f for f in FAMILIES if f in rows]
    report = pd.DataFrame([rows[f] for f in order],
                          columns=["family", "total", "kept", "dropped_answer_not_single_token",
                                   "dropped_length_mismatch", "dropped_other"])
    return kept, report


# ---------------------------------------------------------------- chat-template variant


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def render_chat(tok, text: str, system: str | None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    bos = getattr(tok, "bos_token", None)  # a template that writes BOS, on a tokenizer that adds it again: keep one
    if bos and out.startswith(bos) and getattr(tok, "bos_token_id", None) in tok("")["input_ids"]:
        out = out[len(bos):]
    return out


def with_chat_template(items: list[Item], tok, system: str | None = None) -> list[Item]:
    """Items wrapped in the tokenizer's chat template: the prompt (and the corrupt prompt) is the user turn, the
    generation prompt opens the assistant turn, and the answer is the reply's first token, so answer, distractor
    and corrupt answer lose their leading space. The template is the same text around clean and corrupt prompts;
    `validate` re-checks equal token length and single-token answers and recomputes `diff_pos` in the templated
    ids. `meta["template"] = "chat"`. A one-line ValueError when the tokenizer has no chat template."""
    if not has_chat_template(tok):
        raise ValueError(f"the tokenizer {getattr(tok, 'name_or_path', '') or type(tok).__name__} has no chat template: "
                         "the chat variant needs an instruct model's tokenizer")
    return [replace(it, prompt=render_chat(tok, it.prompt, system), corrupt=render_chat(tok, it.corrupt, system),
                    answer=it.answer.lstrip(), distractor=it.distractor.lstrip(), corrupt_answer=it.corrupt_answer.lstrip(),
                    meta={**it.meta, "template": "chat"}) for it in items]


# ---------------------------------------------------------------- sampling and hashing


def by_family(items) -> dict[str, list]:
    """Items (anything with a `.family`) grouped by family, families sorted, order kept within each."""
    out: dict[str, list] = {}
    for it in items:
        out.setdefault(it.family, []).append(it)
    return dict(sorted(out.items()))


def _key(s: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()


def sample(items: list, n: int, seed: int) -> list:
    """Deterministic sample without replacement (hash-ordered by id, independent of PYTHONHASHSEED)."""
    ident = [getattr(it, "id", None) or json.dumps(it, sort_keys=True, default=str) for it in items]
    order = sorted(range(len(items)), key=lambda i: (_key(str(ident[i]), seed), i))
    return [items[i] for i in order[: max(0, n)]]


def suite_hash(items: list) -> str:
    """Stable content hash of a list of items (order-sensitive)."""
    h = hashlib.sha256()
    for it in items:
        d = {k: getattr(it, k) for k in ITEM_FIELDS} if isinstance(it, Item) else it
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
