"""Training / eval splits with full completions, exact-match scoring, and contrastive pairs for steering."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import re
from pathlib import Path

from ..evidence.judges import first_json
from ..paths import data_dir
from . import lexicon as L

TRAIN_FAMILIES: tuple[str, ...] = ("json_schema", "factual_recall", "code_semantics")
CONCEPTS: tuple[str, ...] = ("sentiment", "formality")
SPLIT_SIZES = {"train": 400, "eval": 120}


def _h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


# ---------------------------------------------------------------- generators of examples

_TYPES = {"name": "string", "city": "string", "color": "string", "pet": "string", "job": "string", "age": "integer",
          "year": "integer", "member": "boolean"}


def _json_value(rng: random.Random, key: str):
    pools = {"name": L.NAMES, "city": L.CITIES + ("New York", "Buenos Aires", "Mexico City"), "color": L.COLORS,
             "pet": L.PETS, "job": L.JOBS}
    if key in pools:
        return rng.choice(pools[key])
    if key == "age":
        return rng.randint(18, 90)
    if key == "year":
        return rng.randint(1950, 2024)
    return rng.random() < 0.5


def _json_examples(seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:train:json_schema")
    out, seen = [], set()
    while len(out) < sum(SPLIT_SIZES.values()):
        keys = rng.sample(sorted(_TYPES), rng.randint(2, 4))
        vals = {k: _json_value(rng, k) for k in keys}
        order = keys[:]
        rng.shuffle(order)
        schema = json.dumps({k: _TYPES[k] for k in keys})
        shown = ", ".join(f"{k}={json.dumps(vals[k]) if not isinstance(vals[k], str) else vals[k]}" for k in order)
        prompt = ("Produce a JSON object that follows the schema (keys in schema order), using the given values.\n"
                  f"Schema: {schema}\nValues: {shown}\nJSON:")
        if prompt in seen:
            continue
        seen.add(prompt)
        obj = {k: vals[k] for k in keys}
        out.append({"prompt": prompt, "completion": " " + json.dumps(obj), "expected": obj})
    return out


def _fact_examples(seed: int) -> list[dict]:
    facts = []
    for c, cap, cont, lang in L.COUNTRIES:
        facts.append(("capital", c, cap))
        if cont:
            facts.append(("continent", c, cont))
        if lang:
            facts.append(("language", c, lang))
    facts += [("landmark", lm, city) for lm, city in L.LANDMARKS]
    tpls = {"capital": ["Q: What is the capital of {e}?\nA:", "The capital of {e} is"],
            "continent": ["Q: On which continent is {e}?\nA:", "{E} is a country in"],
            "language": ["Q: What is the main language of {e}?\nA:", "The official language of {e} is"],
            "landmark": ["Q: In which city is {e}?\nA:", "{E} is located in the city of"]}
    out = []
    for rel, e, ans in facts:
        key = f"{rel}:{e}"  # split by fact, so no fact is in both train and eval
        for t in tpls[rel]:
            out.append({"prompt": t.format(e=e, E=e[0].upper() + e[1:]), "completion": " " + ans, "expected": ans,
                        "fact": key})
    return out


def _run(code: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})  # our own generated snippets, nothing else
    return buf.getvalue().strip()


def _code_examples(seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:train:code_semantics")
    out, seen = [], set()
    while len(out) < sum(SPLIT_SIZES.values()):
        v1, v2, v3 = rng.sample("abcdxyzmnpq", 3)
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 5)
        w1, w2 = rng.sample(["cat", "dog", "sun", "tea", "box", "pen", "map", "hat"], 2)
        kind = rng.randrange(8)
        code = [
            f"{v1} = {a}\n{v2} = {v1} + {b}\nprint({v2})",
            f"{v1} = {a}\n{v2} = {b}\n{v1}, {v2} = {v2}, {v1}\nprint({v1})",
            f"{v1} = [{a}, {b}, {c}]\nprint({v1}[{rng.randrange(3)}] * {c})",
            f"{v1} = '{w1}'\n{v2} = '{w2}'\nprint({v1} + {v2})",
            f"{v1} = 0\nfor {v3} in range({c}):\n    {v1} += {a}\nprint({v1})",
            f"{v1} = {a}\nif {v1} > {b}:\n    print('{w1}')\nelse:\n    print('{w2}')",
            f"def f({v1}, {v2}):\n    return {v1} * {v2} - {v2}\nprint(f({a}, {b}))",
            f"{v1} = [{a}, {b}, {c}]\n{v1}.append({v1}[0] + {v1}[-1])\nprint(len({v1}), {v1}[-1])",
        ][kind]
        prompt = f"What does this Python code print?\n```python\n{code}\n```\nOutput:"
        if prompt in seen:
            continue
        seen.add(prompt)
        res = _run(code)
        out.append({"prompt": prompt, "completion": " " + res, "expected": res, "kind": kind})
    return out


def build_training(family: str, seed: int = 0) -> dict[str, list[dict]]:
    """{'train': [...], 'eval': [...]}, disjoint (by fact for factual_recall, by prompt otherwise)."""
    ex = {"json_schema": _json_examples, "factual_recall": _fact_examples, "code_semantics": _code_examples}[family](seed)
    def key(e):
        return (e.get("fact", e["prompt"]))
    ev_share = SPLIT_SIZES["eval"] / sum(SPLIT_SIZES.values())
    is_eval = {k: int(_h(f"{seed}:{k}")[:8], 16) / 16**8 < ev_share for k in {key(e) for e in ex}}
    return {"train": [e for e in ex if not is_eval[key(e)]], "eval": [e for e in ex if is_eval[key(e)]]}


def training_split(family: str, split: str, root: Path | None = None) -> list[dict]:
    """Stored train/eval examples with keys prompt, completion, expected (parsed object for json_schema)."""
    if family not in TRAIN_FAMILIES or split not in SPLIT_SIZES:
        raise ValueError(f"training_split: family in {TRAIN_FAMILIES}, split in {tuple(SPLIT_SIZES)}")
    path = (root or data_dir()) / "train" / f"{family}.{split}.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(d, dict) or not {"prompt", "completion", "expected"} <= set(d):
                raise ValueError(f"{path}:{i}: needs keys prompt, completion, expected")
            out.append(d)
    return out


def exact_match(family: str, completion_text: str, example: dict) -> bool:
    """json_schema: the first JSON object parses and equals `expected`. Others: the first line of the
    completion, stripped of surrounding space and a final period, equals `expected` (case-sensitive). Examples
    from the task items (`item_examples`, source "items"): the first generated word is the answer (`first_word_match`)."""
    if example.get("source") == "items":
        return first_word_match(completion_text, str(example["expected"]))
    if family == "json_schema":
        return first_json(completion_text, "{") == example["expected"]
    line = completion_text.strip().split("\n")[0].strip()
    line = re.sub(r"[.]$", "", line).strip()
    return line == str(example["expected"])


# ---------------------------------------------------------------- contrastive concepts


def build_concept(name: str, seed: int = 0, n: int = 200) -> list[tuple[str, str]]:
    """(positive, negative) natural sentence pairs that differ only in the concept-bearing words."""
    rng = random.Random(f"{seed}:contrastive:{name}")
    pairs: list[tuple[str, str]] = []
    if name == "sentiment":
        for s in L.SENTIMENT_SUBJ:
            for pos, neg in L.SENTIMENT_ADJ:
                for fr in L.SENTIMENT_FRAMES:
                    def f(a, fr=fr, s=s):
                        return fr.format(s=s, s_l=s[0].lower() + s[1:], a=a)
                    pairs.append((f(pos), f(neg)))
    elif name == "formality":
        names = ("Anna", "Mark", "Lucy", "Tom", "Grace", "Daniel")
        for formal, informal in L.FORMALITY:
            for fr in L.FORMALITY_FRAMES:
                for nm in names:
                    pairs.append((fr.format(x=formal, name=nm), fr.format(x=informal, name=nm)))
    else:
        raise ValueError(f"unknown concept {name!r}; known: {CONCEPTS}")
    pairs = sorted(set(pairs))
    rng.shuffle(pairs)
    return pairs[:n]


# ---------------------------------------------------------------- training examples from the atlas's task items

ITEM_BUCKETS: tuple[str, ...] = ("short",)  # item families' training examples: short prompts, one-token answers
ITEM_VARIANTS: tuple[str, ...] = ("synthetic", "natural")


def _pair(it) -> str:
    return "|".join(sorted((str(it.meta.get("query", "")), it.answer.strip())))


# what a model could memorize from an item rather than read off its prompt: items sharing it go to the same split
CONTENT_KEYS = {
    "factual_recall": lambda it: f"{it.meta.get('relation', '')}:{str(it.meta.get('subject', '')).lower()}",
    "antonyms": _pair,  # the queried pair, in either direction
    "deobfuscation": lambda it: it.answer.strip().lower(),  # the decoded word
    "sequence_continuation": lambda it: f"{it.meta.get('kind', '')}:{it.answer.strip()}",
}


def content_key(item) -> str:
    """The key that splits a family's items: the memorizable content where items repeat it (a fact, an antonym
    pair, a decoded word, a sequence's next element; `CONTENT_KEYS`), else the prompt itself."""
    return CONTENT_KEYS.get(item.family, lambda it: it.prompt)(item)


def item_examples(family: str, split: str, exclude=(), seed: int = 0, buckets=ITEM_BUCKETS,
                  variants=ITEM_VARIANTS, root: Path | None = None) -> list[dict]:
    """Training examples derived from a family's task items (data/tasks, `core.load_items`): prompt, completion =
    the item's answer (one token, leading space kept), expected = the answer's text, and the item's `id`, `key`
    (`content_key`), `source` = "items" (`exact_match` then reads the first generated word) and `eos` = False (the
    prompt's text goes on after its next token: training scores the answer token only, appends no end of text).

    Disjointness: train and eval share no content key (hence no prompt and, where a family repeats content, no fact,
    antonym pair, word or sequence element); the split is a hash of (seed, key) with the stored splits' eval share,
    so it does not depend on which items a tokenizer keeps. `exclude`: prompts (or item ids) dropped from the eval
    split only (the chapter passes the atlas's and the flip gate's prompts, so no eval item selected the layers or
    the family; with them dropped the eval set is disjoint from every prompt that chose what is tested). Order:
    a hash of (seed, item id), so any prefix mixes synthetic and natural items and callers can cut one."""
    from .core import load_items

    if split not in SPLIT_SIZES:
        raise ValueError(f"item_examples: split in {tuple(SPLIT_SIZES)}, not {split!r}")
    items = [it for v in variants for b in buckets for it in load_items(family, v, b, root=root)]
    share = SPLIT_SIZES["eval"] / sum(SPLIT_SIZES.values())
    drop = set(exclude)
    out = []
    for it in items:
        key = content_key(it)
        is_eval = int(_h(f"{seed}:{family}:{key}")[:8], 16) / 16**8 < share
        if is_eval != (split == "eval") or (is_eval and (it.prompt in drop or it.id in drop)):
            continue
        out.append({"prompt": it.prompt, "completion": it.answer, "expected": it.answer.strip(), "id": it.id,
                    "key": key, "source": "items", "eos": False})
    return sorted(out, key=lambda e: _h(f"{seed}:order:{e['id']}"))


def first_word_match(completion_text: str, expected: str) -> bool:
    """The generated text, stripped of leading space, starts with `expected` and the word ends there (so " Paris"
    and " Paris." and " Paris\\n..." match "Paris"; " Parisian" does not)."""
    s = completion_text.lstrip()
    if not expected or not s.startswith(expected):
        return False
    rest = s[len(expected):]
    return not rest or not (rest[0].isalnum() or rest[0] == "_")
