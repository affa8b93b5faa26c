"""One canonical example, six renderings: the format ablation's training and eval text. The content (every field of
the record, the question and the answer) is the same in each; only the wrapping differs.

- ``flat``: instruction / record / question / response headers, the bare answer;
- ``verbose``: a multi-turn user / assistant exchange with a greeting, the record in sentences and a chatty answer;
- ``concise``: a multi-turn exchange cut to the bone, the bare answer;
- ``chat``: one user turn in the tokenizer's own chat template (`tasks.core.render_chat`); a tokenizer without one
  gets a plain ``<|user|>`` / ``<|assistant|>`` fallback, and `chat_label` says so;
- ``terse``: ``key=value|...|q=field ->``, the bare answer;
- ``bad``: the control: unlabelled values in a scrambled order, no question, and an answer that runs on into an
  echo of the question (teaches the model not to stop).

`render` gives {prompt, completion, reference, question}: the reference (the canonical answer) and the question
(format-neutral: record + question) are what a judge sees, the same for every format.
"""

from __future__ import annotations

import random

import pandas as pd

from ...tasks.core import has_chat_template, render_chat
from .data import FIELDS, QUESTIONS

FORMATS = ("flat", "verbose", "concise", "chat", "terse", "bad")
FALLBACK = "<|user|>\n{user}\n<|assistant|>\n"


def record_line(fields: dict) -> str:
    """`name: X; city: Y; ...` in the canonical field order."""
    return "; ".join(f"{f}: {fields[f]}" for f in FIELDS)


def question(example: dict) -> str:
    """The format-neutral text of a canonical example's question (what a judge is shown)."""
    return f"Record: {record_line(example['fields'])}\n{QUESTIONS[example['ask']]}"


def chat_label(tok) -> str:
    """How the chat format is rendered for this tokenizer: its own template, or the plain fallback."""
    return "chat template" if tok is not None and has_chat_template(tok) else "fallback (tokenizer has no chat template)"


def _sentences(f: dict) -> str:
    return (f"Their name is {f['name']}. They live in {f['city']}. They work as a {f['job']}. They have a pet "
            f"{f['pet']}. They are {f['age']} years old.")


def render(example: dict, fmt: str, tok=None) -> dict:
    """{prompt, completion, reference, question} of a canonical example in one format (`tok`: for ``chat``)."""
    f, ask, ans = example["fields"], example["ask"], example["answer"]
    q = QUESTIONS[ask]
    if fmt == "flat":
        prompt = ("Instruction: Answer the question about the person, using the record.\n"
                  f"Record: {record_line(f)}\nQuestion: {q}\nResponse:")
        completion = f" {ans}"
    elif fmt == "verbose":
        prompt = ("User: Hi! I would like your help with some information about a person, if that is all right.\n"
                  "Assistant: Of course! Please share the details and I will do my very best to help you.\n"
                  f"User: Here is what I know. {_sentences(f)} {q}\nAssistant:")
        completion = (f" Thank you for sharing the details! Based on everything you told me, the answer is {ans}. "
                      "Let me know if there is anything else I can help you with!")
    elif fmt == "concise":
        prompt = f"User: {record_line(f)}\nAssistant: Noted.\nUser: {ask}?\nAssistant:"
        completion = f" {ans}"
    elif fmt == "chat":
        user = f"Record: {record_line(f)}\n{q}"
        prompt = render_chat(tok, user, None) if tok is not None and has_chat_template(tok) else FALLBACK.format(user=user)
        completion = ans
    elif fmt == "terse":
        prompt = "|".join(f"{k}={f[k]}" for k in FIELDS) + f"|q={ask} ->"
        completion = f" {ans}"
    elif fmt == "bad":
        vals = [f[k] for k in FIELDS]
        random.Random(example["id"]).shuffle(vals)
        prompt = " ".join(vals) + f" {ask}"
        completion = f" {ans} ### {q} ### {ans} ###"
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return {"prompt": prompt, "completion": completion, "reference": ans, "question": question(example),
            "expected": ans}


def render_all(examples: list[dict], fmt: str, tok=None) -> list[dict]:
    """`render` over a list."""
    return [render(e, fmt, tok) for e in examples]


def examples_table(example: dict, tok=None) -> pd.DataFrame:
    """One canonical example in every format: format, prompt, completion (for the chapter)."""
    return pd.DataFrame([{"format": f, **{k: render(example, f, tok)[k] for k in ("prompt", "completion")}}
                         for f in FORMATS])
