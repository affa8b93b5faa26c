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
from functools import lru_cache

from . import lexicon as L
from .core import BUCKETS, FAMILIES, Item, TokItem, _judge, _texts

Draft = tuple[str, str, str, str, str, dict]


class Tok:
    """Token counting with a cache (the reference tokenizer, no special tokens)."""

    def __init__(self, tok):
        self.tok = tok
        self.n = lru_cache(maxsize=None)(self._n)

    def _n(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


def _partner(rng: random.Random, T: Tok, pool, x, text: Callable = lambda v: v, differ: Callable | None = None):
    """Another element of `pool` whose text has the same token length as x's (None if there is none)."""
    n = T.n(" " + text(x))
    cands = [p for p in pool if p != x and T.n(" " + text(p)) == n and (differ is None or differ(x, p))]
    return rng.choice(cands) if cands else None


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


# ---------------------------------------------------------------- families


def factual_recall(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    rel = rng.choice(["capital", "capital", "language", "continent", "landmark"])
    if rel == "landmark":
        pool = list(L.LANDMARKS)
    else:
        col = {"capital": 1, "continent": 2, "language": 3}[rel]
        pool = [(r[0], r[col]) for r in L.COUNTRIES if r[col] is not None]
    x = rng.choice(pool)
    y = _partner(rng, T, pool, x, text=lambda v: v[0], differ=lambda a, b: a[1] != b[1])
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
        return tpl.format(e=e, E=_cap(e))

    return fill(x[0]), " " + x[1], " " + y[1], fill(y[0]), " " + y[1], {"relation": rel, "subject": x[0],
                                                                          "corrupt_subject": y[0]}


JSON_KEYS: dict[str, tuple[str, ...]] = {"name": L.NAMES, "city": L.CITIES, "color": L.COLORS, "pet": L.PETS,
                                         "job": L.JOBS}
_NAT_CLAUSE = {"city": "lives in {v}", "color": "loves the color {v}", "pet": "has a pet {v}", "job": "works as {a} {v}"}


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


_WORDVALS = ("cat", "dog", "sun", "red", "tea", "box", "pen", "map", "car", "hat", "egg", "cup")


def code_semantics(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    if variant == "natural":
        a, b = rng.sample(_WORDVALS, 2)
        v1, v2 = rng.sample("abxyzpqs", 2)
        kind = rng.choice(["assign", "overwrite", "index", "func"])
        if kind == "assign":
            base = f"In Python, after running {v1} = '{a}' and {v2} = '{b}', the call print({{q}}) prints the word"
            return base.format(q=v1), " " + a, " " + b, base.format(q=v2), " " + b, {"kind": kind}
        if kind == "overwrite":
            base = f"In Python, after running {v1} = '{a}' and then {{q}} = '{b}', print({v1}) prints the word"
            return base.format(q=v1), " " + b, " " + a, base.format(q=v2), " " + a, {"kind": kind}
        if kind == "index":
            w = rng.sample(_WORDVALS, 3)
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
    a, b = rng.sample(_WORDVALS, 2)
    base = f">>> {v1} = '{a}'\n>>> {v2} = '{b}'\n>>> print({{q}})\n"
    return base.format(q=v1), a, b, base.format(q=v2), b, {"kind": kind}


def copying(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    words = rng.sample(L.NOUNS, rng.randint(4, 6))
    k = rng.randrange(1, len(words))
    z = _partner(rng, T, [w for w in L.NOUNS if w not in words], words[k])
    if z is None:
        return None
    sep = rng.choice([" ", ", "]) if variant == "synthetic" else ", "
    cw = words[:k] + [z] + words[k + 1:]
    pre = sep.join(words[:k]) + sep.rstrip()
    if variant == "synthetic":
        tpl = rng.choice(["Copy: {s}\nCopy: {p}", "Repeat after me: {s}\n{p}", "Input: {s}\nOutput: {p}"])
    else:
        tpl = rng.choice(['The teacher wrote "{s}" on the board, and the student copied it exactly: "{p}',
                          'Please write down these words in order: {s}. Here they are again: {p}'])
    p = tpl.format(s=sep.join(words), p=pre)
    c = tpl.format(s=sep.join(cw), p=pre)
    return p, " " + words[k], " " + z, c, " " + z, {"position": k, "n_words": len(words)}


def induction(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    if variant == "natural":
        title = rng.choice(L.TITLES)
        first = rng.choice(L.NAMES)
        last = rng.choice(L.SURNAMES)
        z = _partner(rng, T, L.SURNAMES, last)
        if z is None:
            return None
        tpl = rng.choice([
            "Yesterday I met {t} {f} {l} at the station. We talked for a while about the weather, and then {t} {f}",
            "The letter was signed by {t} {f} {l}. Nobody in the office had heard of {t} {f}",
            "Our new neighbour is {t} {f} {l}. Every morning the children wave at {t} {f}",
        ])
        return (tpl.format(t=title, f=first, l=last), " " + last, " " + z, tpl.format(t=title, f=first, l=z),
                " " + z, {"kind": "name"})
    pool = L.NOUNS + L.COLORS
    seq = rng.sample(pool, rng.randint(6, 9))
    m = rng.randrange(1, len(seq) - 1)  # repeat the first m tokens; answer is seq[m]
    z = _partner(rng, T, [w for w in pool if w not in seq], seq[m])
    if z is None:
        return None
    cseq = seq[:m] + [z] + seq[m + 1:]
    p = " ".join(seq) + " " + " ".join(seq[:m])
    c = " ".join(cseq) + " " + " ".join(seq[:m])
    return p, " " + seq[m], " " + z, c, " " + z, {"period": len(seq), "repeated": m}


_OPEN, _CLOSE = "([{<", ")]}>"
_DELIM_SUBJ = ("My aunt", "The old report", "Our teacher", "The bridge", "The recipe", "The museum", "My neighbour",
               "The last chapter")
_DELIM_OUTER = ("which we discussed at length", "mentioned in the letter", "as everyone already knew",
                "despite the bad weather", "according to the newspaper", "which surprised nobody",
                "if I remember correctly", "as the guide explained")
_DELIM_INNER = ("at least in spring", "and only on Sundays", "for the second time", "near the old mill",
                "after a long debate", "written in pencil", "with some help", "by the end of May")


def delimiter_tracking(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    if variant == "natural":
        a, b = rng.sample(range(3), 2)  # outer, inner opener; the corrupt makes the inner one like the outer
        tpl = (rng.choice(_DELIM_SUBJ) + " {o1}" + rng.choice(_DELIM_OUTER) + " {o2}" + rng.choice(_DELIM_INNER))

        def fill(i, j):
            return tpl.format(o1=_OPEN[i], o2=_OPEN[j])

        return fill(a, b), _CLOSE[b], _CLOSE[a], fill(a, a), _CLOSE[a], {"depth": 2}
    depth = rng.randint(2, 5)
    stack = [rng.randrange(4) for _ in range(depth)]
    n_close = rng.randrange(0, depth)
    top = depth - 1 - n_close
    alt = rng.choice([t for t in range(4) if t != stack[top]])
    code = rng.random() < 0.5
    atoms = [rng.choice("abcdxyz") for _ in range(depth)] if code else [""] * depth

    def render(st):
        toks = [atoms[i] + _OPEN[t] for i, t in enumerate(st)] + [_CLOSE[t] for t in reversed(st[top + 1:])]
        return ("".join(toks) if code else " ".join(toks))

    cst = stack[:top] + [alt] + stack[top + 1:]
    lead = "" if code else " "
    pre = "Close the brackets: " if rng.random() < 0.5 else "Brackets: "
    return (pre + render(stack), lead + _CLOSE[stack[top]], lead + _CLOSE[alt], pre + render(cst),
            lead + _CLOSE[alt], {"depth": depth, "open_at_query": top + 1, "style": "code" if code else "spaced"})


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


_IOI_SYN = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the restaurant, {S} gave a menu to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "While {A} and {B} were working at the office, {S} gave a file to",
    "Friends {A} and {B} found a kitten at the house. {S} gave it to",
    "When {A} and {B} got a snack at the cafe, {S} decided to give it to",
    "Then, {A} and {B} went to the school. {S} handed a pencil to",
    "After the lunch, {A} and {B} went to the beach. {S} threw the towel to",
    "The local big dog bit {A} and {B}. {S} called the doctor for",
)
_IOI_NAT = (
    "{A} and {B} had been friends since school. One evening, after a long dinner together, {S} handed the car keys to",
    "At the end of the meeting, {A} and {B} packed up their notes. Before leaving, {S} wished good luck to",
    "It was {A}'s birthday, but {B} had forgotten. Feeling guilty, the next day {S} bought a cake for",
    "{A} and {B} moved into the new flat on Saturday. Tired after carrying boxes, {S} made a cup of tea for",
)


def ioi(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    a, b = rng.sample(L.NAMES, 2)
    if rng.random() < 0.5:
        a, b = b, a
    tpl = rng.choice(_IOI_SYN if variant == "synthetic" else _IOI_NAT)
    order = rng.random() < 0.5  # ABB vs BAB order of the first mention

    def fill(s):
        x, y = (a, b) if order else (b, a)
        return tpl.format(A=x, B=y, S=s)

    return fill(b), " " + a, " " + b, fill(a), " " + b, {"io": a, "s": b, "order": "ABB" if order else "BAB"}


def arithmetic(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    if variant == "natural":
        x = rng.randint(1, 10)
        y, y2 = rng.sample(range(1, 11), 2)
        op = rng.choice(["+", "-"])
        if op == "-":
            x = rng.randint(11, 20)
        r, r2 = (x + y, x + y2) if op == "+" else (x - y, x - y2)
        W = L.NUMBER_WORDS
        if T.n(" " + W[y]) != T.n(" " + W[y2]):
            return None
        tpls = {"+": ["{X} plus {Y} equals", "If you have {x} apples and someone gives you {y} more, you have",
                      "Q: What is {x} plus {y}?\nA: The answer is"],
                "-": ["{X} minus {Y} equals", "There were {x} birds on the wire and {y} flew away, which left",
                      "Q: What is {x} minus {y}?\nA: The answer is"]}
        tpl = rng.choice(tpls[op])

        def fill(yy):
            return tpl.format(x=W[x], y=W[yy], X=_cap(W[x]), Y=W[yy])

        return fill(y), " " + W[r], " " + W[r2], fill(y2), " " + W[r2], {"op": op, "x": x, "y": y, "y_corrupt": y2}
    op = rng.choice(["+", "+", "-", "*"])
    digits = rng.choice([1, 1, 2])
    hi = 10 ** digits
    x, y = rng.randrange(1, hi), rng.randrange(1, hi)
    if op == "-" and y > x:
        x, y = y, x
    if op == "*":
        x, y = rng.randint(2, 9), rng.randint(2, 9)

    def res(a, b):
        return a + b if op == "+" else a - b if op == "-" else a * b

    # change the last digit of y so the first digit of the result changes
    alts = [y - y % 10 + d for d in range(10) if y - y % 10 + d != y and len(str(y - y % 10 + d)) == len(str(y))
            and (op != "-" or y - y % 10 + d <= x) and y - y % 10 + d > 0]
    alts = [v for v in alts if str(res(x, v))[0] != str(res(x, y))[0]]
    if not alts:
        return None
    y2 = rng.choice(alts)
    shots = ""
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 2)):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            if op == "-" and b > a:
                a, b = b, a
            shots += f"{a}{op}{b}={res(a, b)}\n"
    p, c = f"{shots}{x}{op}{y}=", f"{shots}{x}{op}{y2}="
    return p, str(res(x, y))[0], str(res(x, y2))[0], c, str(res(x, y2))[0], {"op": op, "result": res(x, y),
                                                                              "corrupt_result": res(x, y2)}


_AGREE_SYN = ("The {s} near the {a}", "The {s} next to the {a}", "The {s} behind the {a}", "The {s} with the {a}",
              "The {s} of the {a}", "The {s} beside the {a}")
_AGREE_NAT = ("The {s} that the {a} talked about yesterday", "The {s} we saw near the {a} last summer",
              "The {s} my neighbour bought for the {a}", "The {s} that everyone said belonged to the {a}")


_AGREE_ADJ = ("small", "old", "new", "broken", "clean", "heavy", "famous", "quiet", "red", "ready")


def agreement(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    s, a = rng.sample(L.AGREE_NOUNS, 2)
    plural = rng.random() < 0.5
    subj, csubj = (s[1], s[0]) if plural else (s[0], s[1])
    attr = a[0] if plural else a[1]  # attractor of the opposite number
    if variant == "synthetic":  # two demos (one singular, one plural, random order) fix the frame "... is/are ADJ"
        sg, pl = " is", " are"
        d1, d2 = rng.sample([n for n in L.AGREE_NOUNS if n not in (s, a)], 2)
        j1, j2 = rng.sample(_AGREE_ADJ, 2)
        demos = [f"The {d1[0]} near the {d2[1]} is {j1}.", f"The {d2[1]} near the {d1[0]} are {j2}."]
        rng.shuffle(demos)
        tpl = " ".join(demos) + " " + rng.choice(_AGREE_SYN)
    else:
        sg, pl = " was", " were"
        tpl = rng.choice(_AGREE_NAT)
    ans, dis = (pl, sg) if plural else (sg, pl)
    return (tpl.format(s=subj, a=attr), ans, dis, tpl.format(s=csubj, a=attr), dis,
            {"number": "plural" if plural else "singular"})


def _antonym_map() -> dict[str, str]:
    m: dict[str, list[str]] = {}
    for x, y in L.ANTONYMS:
        m.setdefault(x, []).append(y)
        m.setdefault(y, []).append(x)
    return {k: v[0] for k, v in sorted(m.items()) if len(set(v)) == 1}


_ANT = _antonym_map()


def antonyms(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    words = sorted(_ANT)
    q = rng.choice(words)
    q2 = _partner(rng, T, words, q, differ=lambda x, y: _ANT[x] != _ANT[y] and y != _ANT[x])
    if q2 is None:
        return None
    if variant == "synthetic":
        demos = rng.sample([w for w in words if w not in (q, q2, _ANT[q], _ANT[q2])], rng.randint(2, 3))
        fmt = rng.choice(["{x} -> {y}", "{x}: {y}", "antonym of {x} = {y}"])
        shots = "\n".join(fmt.format(x=d, y=_ANT[d]) for d in demos) + "\n"

        def fill(w):
            return shots + fmt.format(x=w, y="").rstrip()
    else:
        tpl = rng.choice(["The opposite of {w} is", "The word {w} means the opposite of",
                          "In English class we learned that the opposite of {w} is the word"])

        def fill(w):
            return tpl.format(w=w)

    return fill(q), " " + _ANT[q], " " + _ANT[q2], fill(q2), " " + _ANT[q2], {"query": q, "corrupt_query": q2}


def sequence_continuation(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    kinds = {"days": (L.DAYS, True), "months": (L.MONTHS, True), "letters": (L.LETTERS, False),
             "numbers": (L.NUMBER_WORDS, False), "ordinals": (L.ORDINALS, False),
             "digits": (tuple(str(d) for d in range(10)), False)}
    kind = rng.choice(sorted(kinds))
    seq, cyclic = kinds[kind]
    step = rng.choice([1, 1, 2]) if kind not in ("days",) else 1
    n = rng.randint(3, 4)
    span = step * n
    starts = range(len(seq)) if cyclic else range(len(seq) - span - 1)
    s0 = rng.choice(list(starts))
    shift = rng.choice([1, -1])
    s1 = s0 + shift
    if not cyclic and not 0 <= s1 < len(seq) - span:
        s1 = s0 - shift
    if not cyclic and not 0 <= s1 < len(seq) - span:
        return None

    def elems(s):
        return [seq[(s + i * step) % len(seq)] for i in range(n + 1)]

    e, ec = elems(s0), elems(s1)
    if kind == "digits":
        def fill(x):
            return ("Continue: " if variant == "synthetic" else "The numbers go ") + ",".join(x[:-1]) + ","
        ans, cans = e[-1], ec[-1]
    else:
        if variant == "synthetic":
            pre = rng.choice(["", "Sequence: ", "Continue the pattern: "])

            def fill(x):
                return pre + ", ".join(x[:-1]) + ","
        else:
            tpl = rng.choice(["She counted them out loud: {l}, and then",
                              "The list on the board read {l}, and the next entry was",
                              "First came {l}, and right after that came"])

            def fill(x):
                return tpl.format(l=", ".join(x[:-1]))
        ans, cans = " " + e[-1], " " + ec[-1]
    if ans == cans:
        return None
    return fill(e), ans, cans, fill(ec), cans, {"kind": kind, "step": step}


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
            ids = T.tok([t for it in cands for t in _texts(it)])["input_ids"]
            for i, it in enumerate(cands):
                if len(seen) >= n:
                    break
                if it.prompt in seen:
                    rejects["duplicate"] += 1
                    continue
                res = _judge(it, *(list(x) for x in ids[5 * i:5 * i + 5]))
                if not isinstance(res, TokItem):
                    rejects[res.split(":")[0]] += 1
                elif not lo <= res.n_tokens <= hi:
                    rejects["outside_length_bucket"] += 1
                else:
                    items.append(replace(it, id=f"{family}/{variant}/{bucket}/{len(seen):04d}"))
                    seen.add(it.prompt)
    return items
