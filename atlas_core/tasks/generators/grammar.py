"""Families that use grammar and reasoning: indirect objects (IOI), arithmetic, agreement, antonyms."""

from __future__ import annotations

import random

from .. import lexicon as L
from .base import Draft, Tok, cap, partner

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
            return tpl.format(x=W[x], y=W[yy], X=cap(W[x]), Y=W[yy])

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


AGREE_ADJ = ("small", "old", "new", "broken", "clean", "heavy", "famous", "quiet", "red", "ready")


def agreement(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    s, a = rng.sample(L.AGREE_NOUNS, 2)
    plural = rng.random() < 0.5
    subj, csubj = (s[1], s[0]) if plural else (s[0], s[1])
    attr = a[0] if plural else a[1]  # attractor of the opposite number
    if variant == "synthetic":  # two demos (one singular, one plural, random order) fix the frame "... is/are ADJ"
        sg, pl = " is", " are"
        d1, d2 = rng.sample([n for n in L.AGREE_NOUNS if n not in (s, a)], 2)
        j1, j2 = rng.sample(AGREE_ADJ, 2)
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
    q2 = partner(rng, T, words, q, differ=lambda x, y: _ANT[x] != _ANT[y] and y != _ANT[x])
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
