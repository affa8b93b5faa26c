"""Judges of generated answers behind one small interface: `Judge.score(prompt, answer, reference) -> float` on a
1-10 scale (`score_batch` for many), plus how far two judges agree.

- `RubricJudge` (the default; no network, deterministic): reference-guided. An exact check where the reference is
  checkable (a JSON value: the first JSON in the answer equals it; a short reference of at most `SHORT` words:
  the answer's first line equals it, half credit when it contains it as a phrase), token F1 overlap with the
  reference, format adherence (non-empty, no leaked role markers or prompt scaffolding), and penalties for
  length (far longer than the reference) and repetition (`evidence.text_quality`). `parts` shows each part.
- `ApiJudge`: an OpenAI-compatible chat-completions endpoint over urllib. URL, model and key come from the
  environment (`ApiJudge.from_env`: ATLAS_JUDGE_URL, ATLAS_JUDGE_MODEL, ATLAS_JUDGE_KEY); the key is read from
  the environment at each request and is never stored, logged, put in an error message or in a cache key.
  Reference-guided 1-10 prompt ("Rating: [[N]]"), a pairwise mode that asks in both orders (position bias),
  retries with exponential backoff on 429 / 5xx / network errors, and a cache keyed by content under
  ``results/judge/`` (so a re-run sends nothing it already sent).
- `rank_agreement`: Spearman and Pearson correlation of two score lists with Fisher-z 95% intervals (Bonett-Wright
  variance for Spearman) and a permutation p (exact up to 8 points, seeded Monte Carlo above).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ..paths import content_key, read_json, results_dir, write_json_atomic
from . import text_quality
from .stats import spearman_perm

SHORT = 5  # a reference of at most this many words is checked exactly
ENV = {"url": "ATLAS_JUDGE_URL", "model": "ATLAS_JUDGE_MODEL", "key": "ATLAS_JUDGE_KEY"}
PROMPT_VERSION = 1  # part of the API judge's cache key: change it when the prompts change
ROLE_LEAK = re.compile(r"(^|\n)\s*(user|assistant|system|human|instruction|input|response|question|answer)\s*:|"
                       r"<\|[a-z_]+\|>|###", re.IGNORECASE)
WORDS = re.compile(r"[a-z0-9]+")


class Judge:
    """A judge scores an answer to a prompt against a reference on a 1-10 scale (higher is better)."""

    name = "judge"

    def score(self, prompt: str, answer: str, reference: str) -> float:
        """The answer's score, 1-10 (NaN when the judge could not score it)."""
        raise NotImplementedError

    def score_batch(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        """Scores of (prompt, answer, reference) triples, in order."""
        return [self.score(p, a, r) for p, a, r in items]


def first_json(text: str, opening: str = "{["):
    """The JSON value that starts at the first of the `opening` characters in `text` (default: an object or a
    list; "{": an object), or None when there is none or it does not parse."""
    s = text.lstrip()
    for i, ch in enumerate(s):
        if ch in opening:
            try:
                return json.JSONDecoder().raw_decode(s[i:])[0]
            except json.JSONDecodeError:
                return None
    return None


def _norm(text: str) -> str:
    return " ".join(WORDS.findall(text.lower()))


def token_f1(answer: str, reference: str) -> float:
    """Token F1 between lower-cased alphanumeric words of answer and reference (0 when either is empty)."""
    a, r = WORDS.findall(answer.lower()), WORDS.findall(reference.lower())
    if not a or not r:
        return 0.0
    common = sum(min(a.count(w), r.count(w)) for w in set(r))
    if common == 0:
        return 0.0
    p, q = common / len(a), common / len(r)
    return 2 * p * q / (p + q)


@dataclass(frozen=True)
class RubricJudge(Judge):
    """Deterministic reference-guided rubric (see the module docstring); `parts` gives each component."""

    name: str = "rubric"

    def parts(self, prompt: str, answer: str, reference: str) -> dict:
        """exact (None when the reference is not checkable), overlap, format, length and repetition penalties."""
        ref = reference.strip()
        exact = None
        ref_json = first_json(ref) if ref[:1] in "{[" else None
        if ref_json is not None:
            exact = float(first_json(answer) == ref_json)
        elif 0 < text_quality.words(ref) <= SHORT:
            line = _norm(answer.strip().split("\n")[0]) if answer.strip() else ""
            target = _norm(ref)
            exact = 1.0 if line == target else 0.5 if target and f" {target} " in f" {line} " else 0.0
        empty = not answer.strip()
        fmt = 0.0 if empty else 1.0 - 0.5 * bool(ROLE_LEAK.search(answer))
        ratio = text_quality.words(answer) / max(text_quality.words(ref), 1)
        length = 0.0 if ratio <= 2 or text_quality.words(answer) <= text_quality.words(ref) + 4 else \
            min(1.0, math.log2(ratio / 2) / 3)
        rep = 1.0 if (not empty and text_quality.degenerate(answer)) else text_quality.repetition(answer)
        return {"exact": exact, "overlap": token_f1(answer, ref), "format": fmt, "length_penalty": length,
                "repetition": float(rep)}

    def score(self, prompt: str, answer: str, reference: str) -> float:
        p = self.parts(prompt, answer, reference)
        q = (0.55 * p["exact"] + 0.25 * p["overlap"] + 0.2 * p["format"] if p["exact"] is not None
             else 0.7 * p["overlap"] + 0.3 * p["format"])
        q *= (1 - 0.5 * p["length_penalty"]) * (1 - 0.5 * p["repetition"])
        return float(1 + 9 * q)


SYSTEM = ("You are a strict, impartial grader of an AI assistant's answers. Compare the answer with the reference "
          "answer for correctness first, then helpfulness and format.")
SINGLE = ("[Question]\n{prompt}\n\n[Reference answer]\n{reference}\n\n[Assistant's answer]\n{answer}\n\n"
          "Rate the assistant's answer on a scale of 1 to 10. Reply with a one-sentence reason, then the rating "
          "exactly as 'Rating: [[N]]'.")
PAIR = ("[Question]\n{prompt}\n\n[Reference answer]\n{reference}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
        "Which answer is better? Reply with a one-sentence reason, then exactly '[[A]]', '[[B]]' or '[[C]]' for a tie.")
RETRY_CODES = (408, 409, 429, 500, 502, 503, 504)


class JudgeError(RuntimeError):
    """The API judge could not get a reply (its message never contains the key)."""


@dataclass
class ApiJudge(Judge):
    """An OpenAI-compatible chat-completions judge (see the module docstring). Holds the name of the key's
    environment variable, never the key."""

    url: str
    model: str
    key_env: str = ENV["key"]
    retries: int = 4
    backoff: float = 1.0
    timeout: float = 60.0
    cache_dir: Path | None = None
    name: str = "api"

    @classmethod
    def from_env(cls, **kw) -> ApiJudge | None:
        """The judge the environment configures (ATLAS_JUDGE_URL and ATLAS_JUDGE_MODEL; key in ATLAS_JUDGE_KEY),
        or None when the URL or model is not set."""
        url, model = os.environ.get(ENV["url"], "").strip(), os.environ.get(ENV["model"], "").strip()
        return cls(url, model, **kw) if url and model else None

    def _endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def _cache(self, messages: list[dict]) -> Path:
        key = content_key(PROMPT_VERSION, self._endpoint(), self.model, messages)
        return Path(self.cache_dir or results_dir() / "judge") / f"{key}.json"

    def ask(self, user: str) -> str:
        """The judge model's reply to one user message (temperature 0), from the cache when it was asked before."""
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        path = self._cache(messages)
        if (hit := read_json(path)) and "reply" in hit:
            return hit["reply"]
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0, "max_tokens": 200}).encode()
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self.key_env, ""):
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self._endpoint(), data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode())["choices"][0]["message"]["content"]
                write_json_atomic(path, {"model": self.model, "reply": reply})
                return reply
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code not in RETRY_CODES:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = type(err).__name__
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                last = "a reply without choices[0].message.content"
        raise JudgeError(f"judge {self.model} at {self._endpoint()}: {last} after {attempt + 1} attempt(s)")

    def score(self, prompt: str, answer: str, reference: str) -> float:
        reply = self.ask(SINGLE.format(prompt=prompt, reference=reference, answer=answer))
        m = re.search(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", reply) or re.search(r"Rating:\s*(\d+(?:\.\d+)?)", reply)
        return float(min(10.0, max(1.0, float(m.group(1))))) if m else float("nan")

    def prefer(self, prompt: str, a: str, b: str, reference: str) -> dict:
        """Pairwise: asked with A first and with B first. p_a = the share of A wins (ties count half) over the two
        orders (NaN where a reply had no verdict); consistent = both orders name the same answer."""
        def verdict(reply: str) -> float:
            m = re.search(r"\[\[\s*([ABC])\s*\]\]", reply)
            return {"A": 1.0, "B": 0.0, "C": 0.5}[m.group(1)] if m else float("nan")
        first = verdict(self.ask(PAIR.format(prompt=prompt, reference=reference, a=a, b=b)))
        second = 1.0 - verdict(self.ask(PAIR.format(prompt=prompt, reference=reference, a=b, b=a)))
        return {"p_a": (first + second) / 2, "first_order": first, "second_order": second,
                "consistent": bool(first == second)}


def _fisher(r: float, n: int, spearman: bool, alpha: float = 0.05) -> tuple[float, float]:
    if n <= 3 or not np.isfinite(r):
        return float("nan"), float("nan")
    se = math.sqrt(((1 + r * r / 2) if spearman else 1.0) / (n - 3))
    z, q = math.atanh(max(-0.999999, min(0.999999, r))), norm.ppf(1 - alpha / 2)
    return math.tanh(z - q * se), math.tanh(z + q * se)


def rank_agreement(a: Sequence[float], b: Sequence[float], n_mc: int = 20000, seed: int = 0) -> dict:
    """Spearman and Pearson correlation of paired scores (NaN pairs dropped) with Fisher-z 95% intervals
    (Bonett-Wright variance for Spearman; NaN below 4 points), the Spearman permutation p (two-sided; exact up
    to 8 points, seeded Monte Carlo above: `exact` says which) and n. NaN correlations for a constant input."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(x.size), "exact": bool(x.size <= 8)}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, **dict.fromkeys(["spearman", "spearman_lo", "spearman_hi", "pearson", "pearson_lo",
                                        "pearson_hi", "p_value"], float("nan"))}
    rho, p, _ = spearman_perm(x, y, n_mc, seed)
    r = float(np.corrcoef(x, y)[0, 1])
    (slo, shi), (plo, phi) = _fisher(rho, x.size, True), _fisher(r, x.size, False)
    return {**out, "spearman": rho, "spearman_lo": slo, "spearman_hi": shi, "pearson": r, "pearson_lo": plo,
            "pearson_hi": phi, "p_value": p}
