"""Families that follow the prompt's structure: copying, induction, delimiters, sequence continuation."""

from __future__ import annotations

import random

from .. import lexicon as L
from .base import Draft, Tok, partner


def copying(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    words = rng.sample(L.NOUNS, rng.randint(4, 6))
    k = rng.randrange(1, len(words))
    z = partner(rng, T, [w for w in L.NOUNS if w not in words], words[k])
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
        z = partner(rng, T, L.SURNAMES, last)
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
    z = partner(rng, T, [w for w in pool if w not in seq], seq[m])
    if z is None:
        return None
    cseq = seq[:m] + [z] + seq[m + 1:]
    p = " ".join(seq) + " " + " ".join(seq[:m])
    c = " ".join(cseq) + " " + " ".join(seq[:m])
    return p, " " + seq[m], " " + z, c, " " + z, {"period": len(seq), "repeated": m}


DELIM_SUBJ = ("My aunt", "The old report", "Our teacher", "The bridge", "The recipe", "The museum", "My neighbour",
               "The last chapter")


DELIM_OUTER = ("which we discussed at length", "mentioned in the letter", "as everyone already knew",
                "despite the bad weather", "according to the newspaper", "which surprised nobody",
                "if I remember correctly", "as the guide explained")


DELIM_INNER = ("at least in spring", "and only on Sundays", "for the second time", "near the old mill",
                "after a long debate", "written in pencil", "with some help", "by the end of May")


_OPEN, _CLOSE = "([{<", ")]}>"


def delimiter_tracking(rng: random.Random, variant: str, T: Tok) -> Draft | None:
    if variant == "natural":
        a, b = rng.sample(range(3), 2)  # outer, inner opener; the corrupt makes the inner one like the outer
        tpl = (rng.choice(DELIM_SUBJ) + " {o1}" + rng.choice(DELIM_OUTER) + " {o2}" + rng.choice(DELIM_INNER))

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
