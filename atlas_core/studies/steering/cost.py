"""What steering costs: greedy generation with a steering unit applied (`generate`) and the teacher-forced NLL per
token of unrelated text with a direction added at every position (`nll`, `fluency`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ...engine import tracing
from ...engine.batch import Batch
from ...engine.batch import generate as traced_generate
from ...engine.interventions import Unit
from ...evidence import stats
from ...model.subject import Subject
from .pipeline import Study
from .units import steer_unit

FLUENCY_BUDGET = 0.1  # nats per token on unrelated text: the cost a "beats prompting" claim may pay


def generate(subject: Subject, prompts: Sequence[str], unit: Unit | None = None, max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations with a steering unit's edits applied at every forward of generation
    (position 'all': every token; 'last': the newest token of each forward): `engine.batch.generate`."""
    return traced_generate(subject, list(prompts), unit, max_new_tokens)


def _all_logits(subject: Subject, b: Batch, unit: Unit | None) -> torch.Tensor:
    """(B, T, V) logits at every position of `b`'s clean prompts with `unit` applied (one traced forward)."""
    steps = [b.step(e) for e in unit.edits] if unit is not None else ()
    with torch.inference_mode():
        return tracing.forward(subject.nn, subject.arch.paths.layers, b.runs["clean"]["ids"], b.mask, steps=steps,
                               all_logits=True)["logits"]


def nll(subject: Subject, texts: Sequence[str], units: Sequence[Unit | None], batch_size: int = 16) -> np.ndarray:
    """Teacher-forced NLL per token (nats, mean over each text's predicted tokens) of every text under every unit
    (None: the model as is): (len(units), len(texts)), one forward per (batch of texts, unit)."""
    out = np.full((len(units), len(texts)), np.nan)
    for i in range(0, len(texts), batch_size):
        b = Batch(subject, list(texts[i:i + batch_size]))
        ids, m = b.runs["clean"]["ids"], b.mask.bool()
        valid = (m[:, :-1] & m[:, 1:]).float()
        for j, u in enumerate(units):
            lp = torch.log_softmax(_all_logits(subject, b, u)[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            out[j, i:i + len(ids)] = (-(lp * valid).sum(1) / valid.sum(1).clamp_min(1)).cpu().numpy()
    return out


def fluency(subject: Subject, st: Study, sm: pd.DataFrame, sentences: Sequence[str],
            alphas: Sequence[float] | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Fluency cost on unrelated `sentences`: each testable target's direction added at every position of its chosen
    layer (as when generating), in its chosen sign, at the graded |α| and each of `alphas`. Per (family,
    α): base and steered NLL per token and `nll_cost`, the mean over sentences of their difference, with a
    bootstrap 95% CI."""
    cols = ["family", "layer", "alpha", "nll_base", "nll", "nll_cost", "nll_cost_lo", "nll_cost_hi", "n_sentences"]
    cells, us = [], []
    for r in sm[sm["testable"]].itertuples():
        for a in sorted({abs(x) for x in alphas or ()} | {abs(r.alpha)}):
            us.append(steer_unit(st.dirs[r.family], "real", 0, int(r.layer), r.sign * abs(a), "all"))
            cells.append((r.family, int(r.layer), r.sign * abs(a)))
    if not us:
        return pd.DataFrame(columns=cols)
    v = nll(subject, sentences, [None, *us], batch_size)
    return pd.DataFrame([(*c, v[0].mean(), x.mean(), *stats.bootstrap_ci(x - v[0]), len(sentences))
                         for c, x in zip(cells, v[1:], strict=True)], columns=cols)
