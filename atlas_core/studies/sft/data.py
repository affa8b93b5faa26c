"""Chapter 06's data, all generated deterministically here (no instruction data set ships inside a package this
project can install; see the chapter): four instruction sets of different shapes and one canonical set whose
content is fixed (each example a dict of fields) for the format ablation.

Instruction sets (`instruction_sets`), each split train / validation / eval with no shared prompt (and, for
facts, no shared fact):
- ``facts``: one-word factual answers (the task suite's `factual_recall` split);
- ``json``: structured output, a JSON object from a schema and values (the suite's `json_schema` split);
- ``code``: reasoning about a program's output (the suite's `code_semantics` split);
- ``lists``: multi-item word-list transformations (sort, reverse, count, first letters) from the lexicon.

Canonical examples (`canonical`): a person's record (name, city, job, pet, age) and one field asked about; the
answer is that field's value. People are unique, and the split is by person, so no eval person's record is in
any training set.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from ... import tasks
from ...tasks import lexicon as L
from ..adapters import split_val

SETS = ("facts", "json", "code", "lists")
SUITE = {"facts": "factual_recall", "json": "json_schema", "code": "code_semantics"}
FIELDS = ("name", "city", "job", "pet", "age")
QUESTIONS = {"name": "What is the person's name?", "city": "Which city does the person live in?",
             "job": "What is the person's job?", "pet": "What pet does the person have?",
             "age": "How old is the person?"}


def _share(key: str, seed: int) -> float:
    """A stable number in [0, 1) from a key (the split of an item, independent of its position)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 16 ** 8


def _list_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:sft:lists")
    out, seen = [], set()
    ops = {
        "Sort these words alphabetically": lambda w: ", ".join(sorted(w)),
        "Write these words in reverse order": lambda w: ", ".join(reversed(w)),
        "Count the words in this list": lambda w: str(len(w)),
        "Give the first letter of each word": lambda w: ", ".join(x[0] for x in w),
        "Write these words in upper case": lambda w: ", ".join(x.upper() for x in w),
    }
    names = sorted(ops)
    for _ in range(50 * n):
        if len(out) >= n:
            break
        op = rng.choice(names)
        words = rng.sample(L.NOUNS, rng.randint(3, 5))
        prompt = f"{op}: {', '.join(words)}.\nAnswer:"
        if prompt in seen:
            continue
        seen.add(prompt)
        ans = ops[op](words)
        out.append({"prompt": prompt, "completion": " " + ans, "expected": ans})
    return out


def _with_reference(examples: Sequence[dict]) -> list[dict]:
    return [{**e, "reference": e["completion"].strip()} for e in examples]


def instruction_sets(n_train: int, n_val: int, n_eval: int, names: Sequence[str] = SETS,
                     seed: int = 0) -> dict[str, dict[str, list[dict]]]:
    """{set: {"train", "val", "eval": examples}}; each example has prompt, completion, expected and reference (the
    completion, stripped: what a judge compares with). Suite sets: validation = the end of the suite's training
    split (`adapters.split_val`), eval = its held-out split. `lists`: split by a hash of the prompt."""
    out = {}
    for name in names:
        if name in SUITE:
            tr, val = split_val(tasks.training_split(SUITE[name], "train"), n_train, n_val)
            ev = tasks.training_split(SUITE[name], "eval")[:n_eval]
        elif name == "lists":
            pool = _list_examples(4 * (n_train + n_val + n_eval) + 40, seed)
            ev = [e for e in pool if _share(e["prompt"], seed) < 0.25][:n_eval]
            rest = [e for e in pool if _share(e["prompt"], seed) >= 0.25]
            tr, val = rest[:n_train], rest[len(rest) - n_val:] if n_val else []
        else:
            raise ValueError(f"unknown instruction set {name!r}; known: {', '.join(SETS)}")
        out[name] = {"train": _with_reference(tr), "val": _with_reference(val), "eval": _with_reference(ev)}
    return out


def canonical(n_train: int, n_val: int, n_eval: int, seed: int = 0) -> dict[str, list[dict]]:
    """{"train", "val", "eval": canonical examples}: {"id", "fields": {name, city, job, pet, age}, "ask": field,
    "answer": str}. Every person is unique; a person belongs to one split (by a hash of the record), so eval
    records never occur in a training or validation set."""
    rng = random.Random(f"{seed}:sft:canonical")
    want = {"train": n_train, "val": n_val, "eval": n_eval}
    out: dict[str, list[dict]] = {k: [] for k in want}
    seen: set[tuple] = set()
    shares = {"eval": 0.3, "val": 0.4}
    for _ in range(200 * (n_train + n_val + n_eval) + 1000):
        if all(len(out[k]) >= want[k] for k in want):
            break
        rec = {"name": f"{rng.choice(L.NAMES)} {rng.choice(L.SURNAMES)}", "city": rng.choice(L.CITIES),
               "job": rng.choice(L.JOBS), "pet": rng.choice(L.PETS), "age": str(rng.randint(18, 90))}
        key = tuple(rec[f] for f in FIELDS)
        if key in seen:
            continue
        seen.add(key)
        u = _share("|".join(key), seed)
        split = "eval" if u < shares["eval"] else "val" if u < shares["val"] else "train"
        if len(out[split]) >= want[split]:
            continue
        ask = rng.choice(FIELDS[1:])
        out[split].append({"id": f"{split}-{len(out[split])}", "fields": rec, "ask": ask, "answer": rec[ask]})
    short = {k: len(v) for k, v in out.items() if len(v) < want[k]}
    if short:
        raise ValueError(f"canonical: could only draw {short} unique people for {want}")
    return out


def fact_strings(example: dict) -> list[str]:
    """The facts every rendering of a canonical example must carry: each field's value, and the answer."""
    return [example["fields"][f] for f in FIELDS] + [example["answer"]]
