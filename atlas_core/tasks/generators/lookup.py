"""Families that look a value up: factual recall, JSON fields, code semantics, de-obfuscation."""

from __future__ import annotations

import random

from .. import lexicon as L
from .base import Draft, Tok, cap, partner


def factual_recall(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    rel = rng.choice(["capital", "capital", "language", "continent", "landmark"])
    if rel == "landmark":
        pool = list(L.LANDMARKS)
    else:
        col = {"capital": 1, "continent": 2, "language": 3}[rel]
        pool = [(r[0], r[col]) for r in L.COUNTRIES if r[col] is not None]
    x = rng.choice(pool)
    y = partner(rng, T, pool, x, text=lambda v: v[0], differ=lambda a, b: a[1] != b[1])
    if y is None:
        return None
    syn = {
        "capital": ["The capital of {e} is", "Q: What is the capital of {e}?\nA:", "Country: {e}\nCapital:",
                    "The capital city of {e} is"],
        "language": ["The official language of {e} is", "Country: {e}\nLanguage:", "In {e}, most people speak"],
        "continent": ["The country of {e} is located in", "Country: {e}\nContinent:", "Q: On which continent is {e}?\nA:"],
        "landmark": ["{E} is located in the city of", "Landmark: {e}\nCity:", "Q: In which city is {e}?\nA:"],
    }
    nat = {
        "capital": ["Last summer my sister flew to {e} and spent a week in its capital,",
                    "I am learning about {e} in school. Its capital city is called",
                    "After the conference we took the train into the capital of {e}, the city of"],
        "language": ["My friend grew up in {e}, so her first language is",
                     "Before moving to {e}, he took evening classes to learn"],
        "continent": ["She backpacked across {e} last year, her first trip to the continent of",
                      "In geography class we learned that {e} is a country on the continent of"],
        "landmark": ["On our honeymoon we went to see {e}, which stands in the city of",
                     "The guidebook says that to visit {e} you have to travel to"],
    }
    tpl = rng.choice((syn if variant == "synthetic" else nat)[rel])

    def fill(e):
        return tpl.format(e=e, E=cap(e))

    return fill(x[0]), " " + x[1], " " + y[1], fill(y[0]), " " + y[1], {"relation": rel, "subject": x[0],
                                                                          "corrupt_subject": y[0]}


_NAT_CLAUSE = {"city": "lives in {v}", "color": "loves the color {v}", "pet": "has a pet {v}", "job": "works as {a} {v}"}


JSON_KEYS: dict[str, tuple[str, ...]] = {"name": L.NAMES, "city": L.CITIES, "color": L.COLORS, "pet": L.PETS,
                                         "job": L.JOBS}


def json_schema(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    keys = ["name"] + rng.sample([k for k in JSON_KEYS if k != "name"], 2)
    if variant == "synthetic":
        rng.shuffle(keys)
    vals = {k: rng.choice(JSON_KEYS[k]) for k in keys}
    k_fill = rng.randrange(0, len(keys) - 1)  # fields already written in the partial object
    ask, other = keys[k_fill], rng.choice(keys[k_fill + 1:])
    done = ", ".join(f'"{k}": "{vals[k]}"' for k in keys[:k_fill])
    head = "{" + (done + ", " if done else "")
    if variant == "synthetic":
        order = keys[:]
        rng.shuffle(order)
        ctx = ("Schema: {" + ", ".join(keys) + "}\nValues: " + ", ".join(f"{k}={vals[k]}" for k in order) + "\nJSON: ")
    else:
        clauses = [_NAT_CLAUSE[k].format(v=vals[k], a="an" if vals[k][0] in "aeiou" else "a") for k in keys if k != "name"]
        ctx = f"{vals['name']} {clauses[0]} and {clauses[1]}. As JSON with keys {', '.join(keys)}: "
    p = ctx + head + f'"{ask}": "'
    c = ctx + head + f'"{other}": "'
    return p, vals[ask], vals[other], c, vals[other], {"keys": keys, "values": vals, "asked": ask, "corrupt_key": other}


WORDVALS = ("cat", "dog", "sun", "red", "tea", "box", "pen", "map", "car", "hat", "egg", "cup")


def code_semantics(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    if variant == "natural":
        a, b = rng.sample(WORDVALS, 2)
        v1, v2 = rng.sample("abxyzpqs", 2)
        kind = rng.choice(["assign", "overwrite", "index", "func"])
        if kind == "assign":
            base = f"In Python, after running {v1} = '{a}' and {v2} = '{b}', the call print({{q}}) prints the word"
            return base.format(q=v1), " " + a, " " + b, base.format(q=v2), " " + b, {"kind": kind}
        if kind == "overwrite":
            base = f"In Python, after running {v1} = '{a}' and then {{q}} = '{b}', print({v1}) prints the word"
            return base.format(q=v1), " " + b, " " + a, base.format(q=v2), " " + a, {"kind": kind}
        if kind == "index":
            w = rng.sample(WORDVALS, 3)
            i, j = rng.sample(range(3), 2)
            base = "In Python, the list ['" + "', '".join(w) + "'] has at index {q} the word"
            return base.format(q=i), " " + w[i], " " + w[j], base.format(q=j), " " + w[j], {"kind": kind}
        base = f"In Python, if def f({v1}, {v2}): return {{q}}, then f('{a}', '{b}') returns the word"
        return base.format(q=v1), " " + a, " " + b, base.format(q=v2), " " + b, {"kind": kind}
    kind = rng.choice(["assign", "overwrite", "index", "func", "compare", "dict", "minmax", "print"])
    x, y = (str(d) for d in rng.sample(range(10), 2))
    v1, v2 = rng.sample("abxyzpqsnm", 2)
    if kind == "assign":
        base = f">>> {v1} = {x}\n>>> {v2} = {y}\n>>> {{q}}\n"
        return base.format(q=v1), x, y, base.format(q=v2), y, {"kind": kind}
    if kind == "overwrite":
        base = f">>> {v1} = {x}\n>>> {{q}} = {y}\n>>> {v1}\n"
        return base.format(q=v1), y, x, base.format(q=v2), x, {"kind": kind}
    if kind == "index":
        w = [str(d) for d in rng.sample(range(10), 3)]
        i, j = rng.sample(range(3), 2)
        base = f">>> {v1} = [" + ", ".join(w) + f"]\n>>> {v1}[{{q}}]\n"
        return base.format(q=i), w[i], w[j], base.format(q=j), w[j], {"kind": kind}
    if kind == "func":
        base = f">>> def f({v1}, {v2}):\n...     return {{q}}\n>>> f({x}, {y})\n"
        return base.format(q=v1), x, y, base.format(q=v2), y, {"kind": kind}
    if kind == "compare":
        lo, hi = sorted((x, y))
        base = f">>> {lo} {{q}} {hi}\n"
        return base.format(q="<"), "True", "False", base.format(q=">"), "False", {"kind": kind}
    if kind == "dict":
        base = f">>> d = {{{{'{v1}': {x}, '{v2}': {y}}}}}\n>>> d['{{q}}']\n"
        return base.format(q=v1), x, y, base.format(q=v2), y, {"kind": kind}
    if kind == "minmax":
        lo, hi = sorted((x, y))
        base = f">>> {{q}}({x}, {y})\n"
        return base.format(q="max"), hi, lo, base.format(q="min"), lo, {"kind": kind}
    a, b = rng.sample(WORDVALS, 2)
    base = f">>> {v1} = '{a}'\n>>> {v2} = '{b}'\n>>> print({{q}})\n"
    return base.format(q=v1), a, b, base.format(q=v2), b, {"kind": kind}


def _spell_pairs() -> list[tuple[str, str]]:
    ws = sorted(set(L.SPELL_WORDS))
    return [(a, b) for a in ws for b in ws if a != b and len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=False)) == 1]


_SPELL = _spell_pairs()


def deobfuscation(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    w, z = rng.choice(_SPELL)
    if variant == "synthetic":
        style = rng.choice(["dash", "space", "dot", "reverse"])
        enc = {"dash": "-".join, "space": " ".join, "dot": ".".join, "reverse": lambda s: " ".join(reversed(s))}[style]
        tpl = rng.choice(["Spelled: {x}\nWord:", "Decode: {x} ->", "Letters: {x}\nThe word is"])
        if style == "reverse":
            tpl = rng.choice(["Reversed letters: {x}\nWord:", "Backwards: {x} ->"])
    else:
        style = "comma"
        enc = ", ".join
        tpl = rng.choice(["My little brother spelled out a word letter by letter: {x}. The word he spelled was",
                          "On the note, the letters {x} were written in a row. Together they spell the word"])
    return tpl.format(x=enc(w)), " " + w, " " + z, tpl.format(x=enc(z)), " " + z, {"style": style}
