"""The prompting baseline (AxBench, Wu et al. 2025): an instruction and a one-shot prompt aimed where steering
aims, on the same held-out items and metric (`prompting`), greedy generations scored offline
(`scored_generations`), and steering against both at its graded cell and fluency cost (`versus_prompting`);
`cost_and_prompting` runs them all for a chapter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...engine.batch import Batch
from ...evidence import stats
from ...model.subject import Subject
from ...tasks.core import has_chat_template, render_chat
from .cost import FLUENCY_BUDGET, fluency, generate
from .pipeline import Study, bucket_items
from .probes import polarity
from .units import steer_unit


def _aim(st: Study, target: str, sign: int, it: Any) -> tuple[str, int]:
    """The word (and token id) that steering `target` with this sign pushes item `it` toward."""
    return (it.distractor, it.distractor_id) if st.sign[target] * sign > 0 else (it.answer, it.answer_id)


def prompted(subject: Subject, st: Study, target: str, sign: int, items: Sequence, demos: Sequence) -> dict[str, list[str]]:
    """The prompting baselines for `items`, aimed where steering `target` with `sign` aims: an *instruction* (the word
    to say, for a family; the polarity, for a concept), inside the tokenizer's chat template when it has one, and a
    *one-shot* prompt (a selection item followed by its own aimed-at word, then the item)."""
    out: dict[str, list[str]] = {"instruction": [], "one-shot": []}
    for i, it in enumerate(items):
        text = (f"Continue the text in a {'positive' if sign > 0 else 'negative'} tone." if st.sign[target] == -1
                else f'Continue the text. The next word is "{_aim(st, target, sign, it)[0].strip()}".')
        head = render_chat(subject.tokenizer, text, None) if has_chat_template(subject.tokenizer) else f"{text}\n\n"
        d = demos[i % len(demos)]
        out["instruction"].append(head + it.prompt)
        out["one-shot"].append(f"{d.prompt}{_aim(st, target, sign, d)[0]}\n\n{it.prompt}")
    return out


def _lds(subject: Subject, prompts: Sequence[str], items: Sequence, batch_size: int = 16) -> np.ndarray:
    """Logit difference answer − distractor at the last token of each prompt (items give the token ids)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        its = items[i:i + batch_size]
        lg = Batch(subject, list(prompts[i:i + batch_size])).logits()
        r = torch.arange(len(its))
        out.append((lg[r, [it.answer_id for it in its]] - lg[r, [it.distractor_id for it in its]]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def prompting(subject: Subject, st: Study, sm: pd.DataFrame, batch_size: int = 16) -> pd.DataFrame:
    """Per held-out item of each testable target, each prompting baseline (`prompted`, aimed as the target's graded
    sign) on the steering metric: effect = sign_t · (LD_plain − LD_prompted), as `sweep_units` reads steering."""
    rows = []
    for r in sm[sm["testable"]].itertuples():
        t, its = r.family, st.items[r.family]
        base = _lds(subject, [it.prompt for it in its], its, batch_size)
        for name, ps in prompted(subject, st, t, int(r.sign), its, st.splits[t].select).items():
            e = st.sign[t] * (base - _lds(subject, ps, its, batch_size))
            rows += [{"family": t, "item_id": it.id, "prompt": name, "effect": float(x)} for it, x in zip(its, e, strict=True)]
    return pd.DataFrame(rows, columns=["family", "item_id", "prompt", "effect"])


def scored_generations(subject: Subject, st: Study, sm: pd.DataFrame, n: int, openings: Sequence[str] = (),
                       seed: int = 0, max_new_tokens: int = 12) -> pd.DataFrame:
    """Greedy continuations of held-out prompts per testable target: unsteered (`none`), steered (its graded layer,
    sign and α, added at every position, `generate`) and under each prompting baseline (`prompted`), with `hit`.
    Family: up to `n` items sharing no template or text with its fit and selection prompts (`bucket_items`); hit = the
    first generated word is the aimed-at answer (2 new tokens). Concept: the first `n` `openings` (unrelated sentence
    openings); hit = the continuation's `polarity` has the aimed sign."""
    rows = []
    for r in sm[sm["testable"]].itertuples():
        t, s, concept = r.family, int(r.sign), st.sign[r.family] == -1
        its = ([SimpleNamespace(id=f"opening{i}", prompt=o) for i, o in enumerate(openings[:n])] if concept
               else bucket_items(subject, st, t, "short", n, seed))
        if not its:
            continue
        plain = [it.prompt for it in its]
        runs = {"none": (plain, None), "steering": (plain, steer_unit(st.dirs[t], "real", 0, int(r.layer), r.alpha, "all")),
                **{k: (v, None) for k, v in prompted(subject, st, t, s, its, st.splits[t].select).items()}}
        for cond, (ps, u) in runs.items():
            for it, p, g in zip(its, ps, generate(subject, ps, u, max_new_tokens if concept else 2), strict=True):
                hit = np.sign(polarity(g)) == s if concept else (re.findall(r"\w+", g) or [""])[0] == _aim(st, t, s, it)[0].strip()
                rows.append({"family": t, "condition": cond, "item_id": it.id, "prompt": p, "text": g, "hit": bool(hit)})
    return pd.DataFrame(rows, columns=["family", "condition", "item_id", "prompt", "text", "hit"])


def versus_prompting(st: Study, sm: pd.DataFrame, prompts: pd.DataFrame, fluency: pd.DataFrame | None = None,
                     generations: pd.DataFrame | None = None, level: float = 0.05,
                     budget: float = FLUENCY_BUDGET) -> pd.DataFrame:
    """Per testable target, steering at its graded cell against the better prompting baseline on the same held-out
    items and metric: `prompt` (the better of instruction / one-shot by mean aimed effect on these very items, which
    favours prompting), `prompt_effect` (in the real α's sign), `p_prompt` / `p_prompt_better`: exact paired sign-flip
    p of steering beating the prompt / the prompt beating steering; `nll_cost` at the graded α (`fluency`); generation
    hits out of `gen_n` unsteered, steered and with the better prompt. `beats_prompting` = p_prompt ≤ level and
    nll_cost ≤ budget (False when the cost was not measured)."""
    rows, pp = [], st.per_prompt
    for r in sm[sm["testable"]].itertuples():
        real = pp[(pp["family"] == r.family) & (pp["kind"] == "real") & (pp["layer"] == r.layer)
                  & (pp["alpha"] == r.alpha)].set_index("item_id")["effect"]
        pr = prompts[prompts["family"] == r.family].pivot_table(index="item_id", columns="prompt", values="effect")
        if pr.empty or real.empty:
            continue
        best = (r.sign * pr.mean()).idxmax()
        d = (r.sign * (real - pr[best])).dropna().to_numpy()
        row = {"family": r.family, "alpha": r.alpha, "prompt": best, "prompt_effect": float(pr[best].mean()),
               "p_prompt": stats.sign_flip_p(d, "greater"), "p_prompt_better": stats.sign_flip_p(-d, "greater"),
               "n_prompted": len(d), "fluency_budget": budget}
        f = None if fluency is None else fluency[(fluency["family"] == r.family) & np.isclose(fluency["alpha"], r.alpha)]
        if f is not None and len(f):
            row |= f.iloc[0][["nll_base", "nll_cost", "nll_cost_lo", "nll_cost_hi", "n_sentences"]].to_dict()
        g = None if generations is None else generations[generations["family"] == r.family]
        if g is not None and len(g):
            hits = g.groupby("condition")["hit"].sum()
            gp = hits.drop(["none", "steering"]).idxmax()
            row |= {"gen_n": int(g.groupby("condition").size().max()), "gen_none": int(hits["none"]),
                    "gen_steering": int(hits["steering"]), "gen_prompt": int(hits[gp]), "gen_prompt_kind": gp}
        row["beats_prompting"] = bool(row["p_prompt"] <= level and row.get("nll_cost", np.inf) <= budget)
        rows.append(row)
    return pd.DataFrame(rows)


def openings(sentences: Sequence[str]) -> list[str]:
    """The first half of each sentence (at least 3 words): an unrelated opening to continue."""
    return [" ".join(t.split()[: max(3, len(t.split()) // 2)]) for t in sentences]


@dataclass
class Baselines:
    """Steering's cost and its prompting baseline at each testable target's graded cell (`cost_and_prompting`)."""

    fluency: pd.DataFrame  # `fluency`
    prompting: pd.DataFrame  # `prompting`, per held-out item
    generations: pd.DataFrame  # `scored_generations`
    versus: pd.DataFrame  # `versus_prompting`


def cost_and_prompting(subject: Subject, st: Study, sm: pd.DataFrame, sentences: Sequence[str], n_nll: int,
                       n_gen: int, alphas: Sequence[float] = (), seed: int = 0, max_new_tokens: int = 12) -> Baselines:
    """Fluency cost on the first `n_nll` unrelated `sentences` (at the graded |α| and `alphas`), both prompting
    baselines, `n_gen` scored generations (a concept continues `openings` of the sentences after the first `n_nll`;
    `seed` samples a family's items) and steering against them all (`versus_prompting`)."""
    fl = fluency(subject, st, sm, sentences[:n_nll], alphas=alphas)
    pr = prompting(subject, st, sm)
    gens = scored_generations(subject, st, sm, n_gen, openings(sentences[n_nll:]), seed=seed,
                              max_new_tokens=max_new_tokens)
    return Baselines(fl, pr, gens, versus_prompting(st, sm, pr, fl, gens))
