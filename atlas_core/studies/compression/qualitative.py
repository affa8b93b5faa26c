"""A fixed qualitative check: 32 prompts with constraints a program can verify (word limits, lists, formats,
required or forbidden words), generated greedily by every configuration and scored for constraint adherence,
repetition and degeneration (`evidence.text_quality`) and speed. Instruction-tuned models get their chat template.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Sequence

import pandas as pd

from ...evidence import text_quality as tq
from ...evidence.judges import first_json
from ...evidence.stats import sign_flip_p
from ...model.subject import Subject
from ...tasks.core import has_chat_template, render_chat
from ..adapters import generate

# (prompt, check, argument): the checks are defined in CHECKS below
PROMPTS: tuple[tuple[str, str, object], ...] = (
    ("Describe the sea in at most 10 words.", "max_words", 10),
    ("Name a colour. Answer with one word only.", "max_words", 1),
    ("In at most 15 words, explain what a bridge is for.", "max_words", 15),
    ("Give a one-sentence definition of a library, under 20 words.", "max_words", 20),
    ("Summarize the idea of rain in at most 12 words.", "max_words", 12),
    ("What is a train? Reply in no more than 8 words.", "max_words", 8),
    ("List three fruits as a bulleted list, one per line starting with '-'.", "list", 3),
    ("List four animals, one per line, each line starting with '- '.", "list", 4),
    ("Write a numbered list (1., 2., 3.) of three things found in a kitchen.", "list", 3),
    ("List three countries in Europe, one per line, starting each line with '-'.", "list", 3),
    ("Give a numbered list of three tools a carpenter uses.", "list", 3),
    ("List two planets as bullet points.", "list", 2),
    ('Return a JSON object with keys "name" and "age" for a person called Ann aged 30.', "json", None),
    ('Write a JSON object with the key "city" set to "Paris".', "json", None),
    ('Output only a JSON object {"ok": true} and nothing else.', "json", None),
    ('Give a JSON object with keys "x" and "y", both numbers.', "json", None),
    ("What is 7 plus 5? Answer with a number.", "number", None),
    ("How many days are in a week? Answer with a number.", "number", None),
    ("How many legs does a spider have? Reply with the number.", "number", None),
    ("Write the year the Second World War ended, as digits.", "number", None),
    ("Write a sentence about a dog that contains the word 'park'.", "contains", "park"),
    ("Write one sentence about winter that uses the word 'snow'.", "contains", "snow"),
    ("Write a short sentence about coffee that includes the word 'morning'.", "contains", "morning"),
    ("Describe a forest in one sentence using the word 'green'.", "contains", "green"),
    ("Describe the sun without using the word 'hot'.", "lacks", "hot"),
    ("Describe a cat without using the word 'fur'.", "lacks", "fur"),
    ("Write the word HELLO in capital letters only.", "upper", None),
    ("Reply with the single word YES in capital letters.", "upper", None),
    ("Answer yes or no: is water wet?", "yes_no", None),
    ("Answer yes or no: is the moon made of cheese?", "yes_no", None),
    ("Start your answer with 'Sure'. Tell me a fact about the ocean.", "starts", "sure"),
    ("Begin your reply with the word 'Today'. Describe the weather.", "starts", "today"),
)


def _list_items(text: str) -> int:
    return sum(bool(re.match(r"\s*(?:[-*•]|\d+[.)])\s+\S", line)) for line in text.splitlines())


def _first_word(text: str) -> str:
    w = re.findall(r"[A-Za-z]+", text)
    return w[0].lower() if w else ""


CHECKS: dict[str, Callable[[str, object], bool]] = {
    "max_words": lambda t, n: 0 < tq.words(t) <= n,
    "list": lambda t, n: _list_items(t) >= n,
    "json": lambda t, _: isinstance(first_json(t, "{"), dict),  # nested objects too
    "number": lambda t, _: bool(re.search(r"\d", t)),
    "contains": lambda t, w: w in t.lower(),
    "lacks": lambda t, w: bool(t.strip()) and w not in re.findall(r"[a-z]+", t.lower()),
    "upper": lambda t, _: any(c.isalpha() for c in t) and t.strip() == t.strip().upper(),
    "yes_no": lambda t, _: _first_word(t) in ("yes", "no"),
    "starts": lambda t, w: _first_word(t) == w,
}


def check(text: str, kind: str, arg: object = None) -> bool:
    """Whether a generated text meets a prompt's constraint."""
    if kind not in CHECKS:
        raise ValueError(f"unknown check {kind!r}; known: {', '.join(CHECKS)}")
    return bool(CHECKS[kind](text, arg))


def render(subject: Subject, prompts: Sequence[str]) -> list[str]:
    """The prompts as the model expects them: its chat template when it has one, else the plain text + newline."""
    tok = subject.tokenizer
    return [render_chat(tok, p, None) if has_chat_template(tok) else p + "\n" for p in prompts]


def run(name: str, subject: Subject, n: int, max_new_tokens: int, model_note: str = "") -> pd.DataFrame:
    """Greedy answers of the subject as it is now (an attached adapter included) to the first `n` PROMPTS, with
    each answer's checks and the configuration's generation speed (tokens of the answers / wall time)."""
    ps = PROMPTS[:n]
    t0 = time.perf_counter()
    texts = generate(subject, render(subject, [p for p, _, _ in ps]), max_new_tokens)
    secs = time.perf_counter() - t0
    n_tok = sum(len(subject.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return pd.DataFrame([{"config": name, "prompt": p, "check": k, "text": t, "ok": check(t, k, a),
                          "repetition": tq.repetition(t), "degenerate": tq.degenerate(t), "words": tq.words(t),
                          "tok_s": n_tok / secs, "note": model_note} for (p, k, a), t in zip(ps, texts, strict=True)])


def summary(qual: pd.DataFrame, ref: str = "fp32") -> pd.DataFrame:
    """Per configuration: constraint adherence, repetition, degeneration rate (`text_quality`), words, tok/s,
    and the paired difference in adherence vs `ref` over the same prompts with its exact two-sided sign-flip p."""
    base = qual[qual.config == ref].set_index("prompt").ok.astype(float)
    rows = []
    for c, g in qual.groupby("config", sort=False):
        s = tq.summary(list(g.text))
        d = g.set_index("prompt").ok.astype(float) - base.reindex(g.prompt).to_numpy()
        nz = d[d != 0].to_numpy()
        rows.append({"config": c, "adherence": float(g.ok.mean()), "repetition": s["repetition"],
                     "degenerate": s["degenerate"], "words": s["words"], "tok_s": float(g.tok_s.iloc[0]),
                     "d_adherence": float(d.mean()), "n_discordant": int(nz.size),
                     "p_vs_ref": float(sign_flip_p(nz, "two-sided")) if nz.size else 1.0, "n": len(g)})
    return pd.DataFrame(rows)


def details_html(qual: pd.DataFrame) -> str:
    """Every generated text, one collapsed <details> block per configuration (prompt, check, pass, text)."""
    parts = []
    for c, g in qual.groupby("config", sort=False):
        rows = "".join(f"<tr><td>{html.escape(r.prompt)}</td><td>{r.check}</td><td>{'✓' if r.ok else '✗'}</td>"
                       f"<td><pre style='white-space:pre-wrap'>{html.escape(r.text)}</pre></td></tr>"
                       for r in g.itertuples())
        parts.append(f"<details><summary>{html.escape(c)}: {int(g.ok.sum())}/{len(g)} constraints met</summary>"
                     f"<table><tr><th>prompt</th><th>check</th><th>ok</th><th>text</th></tr>{rows}</table></details>")
    return "\n".join(parts)

