"""Steering and knockout with contrastive directions, always graded against controls on held-out prompts.

A *target* is what we steer: a task family (direction = mean corrupt − mean clean residual at the last
token, so +α pushes the model from the clean answer toward the corrupt answer) or a concept such as
sentiment (direction = mean positive − mean negative sentence). Every steering run is a unit of the
atlas vocabulary, `Unit.of(Site("resid", L, position=...), Op.add(v̂ · ‖h_L‖, α))`, executed by `sweep`
(cached, resumable): α is in multiples of the layer's typical residual norm ‖h_L‖ (median over the fit
prompts at the last token), so strengths are comparable across layers and models.

Held-out: each target has three samples — *fit* (the direction), *select* (the best layer and sign) and
*eval* (every graded number) — that share no template and no text (`split_by_template`; a template is a
prompt with its lexicon fillers masked, `template`). A concept's fit sentences never contain the probe words
it is graded by. `audit` checks all of this for every study a chapter runs.

Effect (logits): ``effect = sign · (LD_clean − LD_steered)`` with LD = logit(answer) − logit(distractor),
sign = +1 for families (the shift toward the corrupt answer, = `ld_drop`) and −1 for concepts (the
shift toward the positive token). Controls, of the same norm: random directions drawn from N(0, Σ), Σ the
covariance of the fit activations at that layer (`random_directions`: the residual stream is anisotropic, so an
isotropic null is weak), and shuffled-label directions (labels permuted before averaging). The real direction's
layer and sign are the best of many cells on the select prompts, so its controls get the same selection: the first
`n_screen_controls` of each kind are screened over the same layers at the control strength of each sign, each picks
its own best (layer, sign) by the same rule, and the real direction (at its best cell) is graded against the
*strongest* of them (each at its own best cell, same |α|) by an exact paired sign-flip test over the held-out
prompts (`p_control`). Every control also runs at the real direction's own layer and α: the claim also needs the
empirical p against the shuffled-label draws there (`p_shuffled`, never below 1/(draws + 1), so too few draws
cannot pass); z-scores against the random draws are descriptive. A task family the model does not solve
(`tasks.gate`, or `tasks.solved` on the select + eval items) is not testable: its claims say so instead of steering it.

Knockout is directional ablation (Arditi et al. 2024): the family's direction projected out of the residual stream
after every layer, at every position (`knockout_unit`, necessity); mode "push" keeps the +α addition at one layer
(sufficiency of a push). Selectivity = target effect − mean |off-target effect|, each a fraction of that family's
clean−corrupt gap (ratio of means, defined only where the gap's 95% CI excludes 0, else NaN = "undefined"), with a
bootstrap CI over prompts.

Cost and baselines (AxBench, Wu et al. 2025: prompting beats steering): `fluency` = ΔNLL per token on unrelated
sentences with the direction added at every position; `prompting` = an instruction and a one-shot prompt aimed
where steering aims, on the same held-out items and metric; `scored_generations` = greedy continuations scored
offline; `versus_prompting` compares them at the graded cell. `steering_claims` turns the measured tables into
claims whose wording, direction and confidence all come from the evidence.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..engine.batch import Batch
from ..engine.interventions import Edit, Op, Site, Unit
from ..evidence import stats
from ..evidence.claims import Claim
from ..model.subject import Subject

# Probe prompts for sentiment: neutral openings whose next word is an evaluative adjective. They avoid the
# subjects and frames of the contrastive fit sentences (data/contrastive/sentiment.jsonl), and the probe words
# below are dropped from the fit sentences (`concept_target`), so fit and probe share no template, text or word.
SENTIMENT_TEMPLATES = (
    "Last night we finally saw the show. It was", "The food at that place was", "My first day at the new job was",
    "The laptop I bought last month is", "Her acting in the school play was", "The drive home this weekend was",
    "The staff at the front desk were", "Overall, the novel was", "The view from our room was",
    "My experience with their support team was", "The second album by that band is", "Our neighbours' garden looks",
    "The match on Sunday was", "The museum tour yesterday was", "This new recipe for soup tastes",
    "The flight back from the conference was",
)
SENTIMENT_TOKENS = ((" good", " bad"), (" great", " terrible"), (" wonderful", " awful"), (" excellent", " poor"))


# ---------------------------------------------------------------------------------- held-out splits
@lru_cache(maxsize=1)
def _filler_rx() -> re.Pattern:
    """Every slot filler of the generators (names, nouns, cities, numbers, adjectives, filler sentences, ...),
    single letters and numbers, longest first, matched case-insensitively as whole words."""
    from ..tasks import generators as G
    from ..tasks import lexicon as L

    words: set[str] = set()
    for tup in (L.NAMES, L.NOUNS, L.COLORS, L.CITIES, L.PETS, L.JOBS, L.NUMBER_WORDS, L.ORDINALS, L.DAYS, L.MONTHS,
                L.SPELL_WORDS, L.FILLER, L.SURNAMES, L.TITLES, L.SENTIMENT_SUBJ, G._AGREE_ADJ, G._WORDVALS,
                G._DELIM_SUBJ, G._DELIM_OUTER, G._DELIM_INNER):
        words |= set(tup)
    for rows in (L.COUNTRIES, L.LANDMARKS, L.AGREE_NOUNS, L.ANTONYMS, L.SENTIMENT_ADJ, SENTIMENT_TOKENS):
        words |= {w.strip() for r in rows for w in r if w}
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alts}|[A-Za-z]|\d+)(?!\w)", re.IGNORECASE)


def template(text: str) -> str:
    """A prompt's template: its fillers masked as `_`, runs of slots (word lists) and repeated lines (few-shot
    demos) collapsed, a leading filler paragraph dropped. A prompt with no text left besides slots (a random
    word sequence) is its own template."""
    k = re.sub(r"_(?:[ ,]+_)+", "_", _filler_rx().sub("_", text))
    lines = k.split("\n")
    k = re.sub(r"^_\s*\n\n", "", "\n".join(x for i, x in enumerate(lines) if i == 0 or x != lines[i - 1]))
    return k if re.sub(r"[_\s,]", "", k) else text


def texts(x: Any) -> tuple[str, ...]:
    """The texts of a fit pair (both sentences) or of an item (clean and corrupt prompt)."""
    return tuple(x) if isinstance(x, tuple) else tuple(dict.fromkeys((x.prompt, x.corrupt)))


def _templates(x: Any) -> set[str]:
    return {template(t) for t in texts(x)}


def _order(s: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()


def split_by_template(units: Sequence, sizes: Sequence[int], seed: int,
                      keys: Callable[[Any], Iterable[str]] = _templates) -> list[list]:
    """Disjoint samples of at most `sizes` units: no key (template, or the text of a template-free prompt) in two
    of them, and no text inside a text of an earlier part. Units sharing a key form one group; whole groups go,
    in a seeded order, to the part missing the largest share of its units (then to the one with the fewest groups
    per unit wanted), and each part is sampled round-robin over its groups. A part stays short (or empty) when
    there are too few groups."""
    from .. import tasks

    parent = list(range(len(units)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    ukeys = [sorted(keys(u)) for u in units]
    for i, ks in enumerate(ukeys):
        for k in ks:
            parent[root(i)] = root(first.setdefault(k, i))
    groups: dict[int, list] = {}
    for i in range(len(units)):
        groups.setdefault(root(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: _order(min(ukeys[g[0]]), seed))
    parts: list[list[list]] = [[] for _ in sizes]
    have = [0] * len(sizes)
    for g in ordered:
        need = [(s - h) / s if s else -np.inf for s, h in zip(sizes, have, strict=True)]
        i = int(np.argmax(need)) if max(need) > 0 else int(np.argmin([len(p) / max(s, 1e-9) for p, s in
                                                                      zip(parts, sizes, strict=True)]))
        parts[i].append(tasks.sample([units[j] for j in g], len(g), seed))
        have[i] += len(g)
    out: list[list] = []
    taken: list[str] = []
    for p, s in zip(parts, sizes, strict=True):
        pick = _round_robin([[u for u in g if not any(a in b or b in a for a in texts(u) for b in taken)] for g in p])[:s]
        out.append(pick)
        taken += [t for u in pick for t in texts(u)]
    return out


def _round_robin(groups: list[list]) -> list:
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def _has_word(text: str, words: Iterable[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(w.strip())}(?!\w)", text, re.IGNORECASE) for w in words)


def leaks(parts: dict[str, Sequence], probe_words: Sequence[str] = ()) -> list[str]:
    """What two parts share: a template, or a text (equal or one inside the other); and any probe word inside a
    fit text (parts named 'fit...'). Empty when the parts are properly held out from one another."""
    out = []
    names = list(parts)
    tpl = {n: {t for x in parts[n] for t in _templates(x)} for n in names}
    txt = {n: {t for x in parts[n] for t in texts(x)} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if shared := tpl[a] & tpl[b]:
                out.append(f"{a} and {b} share {len(shared)} template(s), e.g. {sorted(shared)[0]!r}")
            if inside := [(x, y) for x in txt[a] for y in txt[b] if x in y or y in x]:
                out.append(f"{a} and {b} share {len(inside)} text(s), e.g. {inside[0][0]!r} / {inside[0][1]!r}")
    for n in names:
        if n.startswith("fit") and probe_words and (hit := [t for t in txt[n] if _has_word(t, probe_words)]):
            out.append(f"{n}: {len(hit)} text(s) contain a probe word, e.g. {hit[0]!r}")
    return out


@dataclass
class Split:
    """One target's held-out samples: fit pairs (direction), select items (layer and sign), eval items (grades)."""

    target: str
    fit: list[tuple[str, str]]
    select: list
    eval: list
    probe_words: tuple[str, ...] = ()  # the answer words a concept is graded by (never in its fit texts)

    def leaks(self) -> list[str]:
        return leaks({"fit": self.fit, "select": self.select, "eval": self.eval}, self.probe_words)


# ---------------------------------------------------------------------------------- directions
def last_resid(subject: Subject, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Residual stream after every layer at each prompt's last token: (n_layers, N, d), from the engine's cache."""
    n = subject.arch.n_layers
    out = []
    for i in range(0, len(prompts), batch_size):
        b = Batch(subject, list(prompts[i:i + batch_size]))
        out.append(torch.stack([b.value("clean", Edit(Site("resid", layer), Op.zero()))[:, -1] for layer in range(n)]))
    return torch.cat(out, 1).float().cpu()


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean(positive) − mean(negative) over the sample axis (-2)."""
    return pos.mean(-2) - neg.mean(-2)


def shuffled_diff(pos: torch.Tensor, neg: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean difference after permuting the pos/neg labels of the pooled samples: (direction, permutation).
    Rows perm[:n_pos] of cat(pos, neg) act as 'positive'."""
    x = torch.cat([pos, neg], -2)
    perm = torch.randperm(x.shape[-2], generator=gen)
    k = pos.shape[-2]
    return x[..., perm[:k], :].mean(-2) - x[..., perm[k:], :].mean(-2), perm


def random_directions(d: int, k: int, seed: int, acts: torch.Tensor | None = None) -> torch.Tensor:
    """k seeded random unit vectors in R^d: (k, d). With `acts` (N, d), each is drawn from N(0, Σ), Σ the covariance
    of those activations, then normalised: a null with the residual stream's anisotropy (isotropic without `acts`,
    or when the activations do not vary)."""
    gen = torch.Generator().manual_seed(seed)
    x = None if acts is None else acts.double() - acts.double().mean(0)
    if x is None or float(x.abs().max()) == 0:
        return _unit(torch.randn(k, d, generator=gen))
    return _unit((torch.randn(k, x.shape[0], generator=gen, dtype=torch.float64) @ x).float())  # cov ∝ Xcᵀ Xc


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class Directions:
    """Unit directions per layer for one target, with their controls and the layer norms that scale α."""

    target: str
    model: str
    real: torch.Tensor  # (L, d)
    random: torch.Tensor  # (L, k, d)
    shuffled: torch.Tensor  # (L, m, d)
    norm: torch.Tensor  # (L,) median residual norm at the last token
    raw_norm: torch.Tensor  # (L,) ‖mean difference‖ before normalising

    def vector(self, kind: str, layer: int, i: int = 0) -> torch.Tensor:
        """The direction scaled to the layer norm (α = 1 adds one typical residual norm)."""
        v = self.real[layer] if kind == "real" else getattr(self, kind)[layer, i]
        return v * self.norm[layer]

    @property
    def d(self) -> int:
        return self.real.shape[-1]


def fit(subject: Subject, pairs: Sequence[tuple[str, str]], target: str, n_random: int = 10, n_shuffled: int = 5,
        seed: int = 0) -> Directions:
    """Directions from (positive, negative) text pairs at every layer, plus random directions matched to the fit
    activations' covariance at that layer and shuffled-label controls."""
    pos = last_resid(subject, [p for p, _ in pairs])
    neg = last_resid(subject, [q for _, q in pairs])
    L, _, d = pos.shape
    raw = mean_diff(pos, neg)
    gen = torch.Generator().manual_seed(seed)
    shuf = torch.stack([shuffled_diff(pos, neg, gen)[0] for _ in range(n_shuffled)], 1) if n_shuffled else torch.zeros(L, 0, d)
    acts = torch.cat([pos, neg], 1)
    rnd = torch.stack([random_directions(d, n_random, seed * 1000 + layer, acts[layer]) for layer in range(L)])
    norm = acts.norm(dim=-1).median(dim=1).values
    return Directions(target, subject.name, _unit(raw), rnd, _unit(shuf), norm, raw.norm(dim=-1))


def transfer(dirs: Directions, src: Subject, dst: Subject) -> Directions:
    """Use a direction found in `src` in `dst` (same width required); α stays relative to dst's own layer norms
    where the depth matches, else to the src norms."""
    a, b = src.arch.d_model, dst.arch.d_model
    if a != b:
        raise ValueError(f"cannot transfer a direction from {src.name} (d_model={a}) to {dst.name} (d_model={b}): widths differ")
    if src.arch.n_layers != dst.arch.n_layers:
        raise ValueError(f"cannot transfer per-layer directions from {src.name} ({src.arch.n_layers} layers) "
                         f"to {dst.name} ({dst.arch.n_layers} layers)")
    return Directions(dirs.target, dst.name, dirs.real, dirs.random, dirs.shuffled, dirs.norm, dirs.raw_norm)


# ---------------------------------------------------------------------------------- targets
def family_target(subject: Subject, family: str, n: int, n_fit: int, seed: int = 0, bucket: str = "short") -> Split:
    """Fit pairs (corrupt, clean), select items and eval items of a family: validated items, disjoint in
    templates and texts (`split_by_template`)."""
    from .. import tasks

    items, _ = tasks.validate(tasks.load_items(family, "synthetic", bucket), subject.tokenizer)
    fit_items, sel, ev = split_by_template(items, (n_fit, n, n), seed)
    if not (fit_items and sel and ev):
        raise ValueError(f"{family}: its {len(items)} items fall into fewer than 3 template groups, so fit, select and "
                         "eval prompts cannot be held out from one another")
    return Split(family, [(it.corrupt, it.prompt) for it in fit_items], sel, ev)


def concept_items(subject: Subject, concept: str = "sentiment") -> list:
    """Probe items for a concept: neutral templates × (positive, negative) single-token pairs; LD = pos − neg."""
    if concept != "sentiment":
        raise ValueError(f"no probe prompts for concept {concept!r}; known: sentiment")
    tok = subject.tokenizer
    pairs = [(a, b, tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"])
             for a, b in SENTIMENT_TOKENS]
    pairs = [(a, b, x[0], y[0]) for a, b, x, y in pairs if len(x) == 1 and len(y) == 1]
    if not pairs:
        raise ValueError(f"no {concept} word pair is a single token under {subject.name}'s tokenizer; "
                         "add pairs to steering.SENTIMENT_TOKENS")
    return [SimpleNamespace(id=f"{concept}{i}-{j}", family=concept, prompt=t, corrupt=t, answer=a, distractor=b,
                            answer_id=x, distractor_id=y, diff_pos=0, bucket="short", variant="concept")
            for i, t in enumerate(SENTIMENT_TEMPLATES) for j, (a, b, x, y) in enumerate(pairs)]


def concept_target(subject: Subject, concept: str, n: int, n_fit: int, seed: int = 0) -> Split:
    """Fit pairs (positive, negative), select and eval probe items of a concept. Probe templates are split between
    select and eval; fit sentences sharing a template or text with any probe prompt, or containing a probe word,
    are dropped before sampling."""
    from .. import tasks

    items = concept_items(subject, concept)
    sel, ev = split_by_template(items, (n, n), seed)
    words = tuple(sorted({w.strip() for it in items for w in (it.answer, it.distractor)}))
    probe_tpl = {template(it.prompt) for it in items}
    probe_txt = {it.prompt for it in items}
    pool = [p for p in tasks.contrastive(concept) if not _has_word(" ".join(p), words) and not _templates(p) & probe_tpl
            and not any(q in t or t in q for t in p for q in probe_txt)]
    if not pool:
        raise ValueError(f"{concept}: every fit sentence shares a template, a text or a probe word with the probe prompts")
    return Split(concept, split_by_template(pool, (n_fit,), seed)[0], sel, ev, words)


def bucket_items(subject: Subject, st: Study, family: str, bucket: str, n: int, seed: int) -> list:
    """Eval items of a family in a length bucket: none shares a template or text with its fit or select prompts
    (the short bucket gives the study's own eval items, or more held-out items when `n` exceeds them)."""
    from .. import tasks

    sp = st.splits[family]
    if bucket == "short" and n <= len(sp.eval):
        return sp.eval[:n]
    its, _ = tasks.validate(tasks.load_items(family, "synthetic", bucket), subject.tokenizer)
    held = {t for x in [*sp.fit, *sp.select] for t in _templates(x)}
    held_txt = [t for x in [*sp.fit, *sp.select] for t in texts(x)]
    its = [it for it in its if not _templates(it) & held and not any(h in t for t in texts(it) for h in held_txt)]
    return tasks.sample(its, n, seed)


# ---------------------------------------------------------------------------------- units and effects
def steer_unit(dirs: Directions, kind: str, i: int, layer: int, alpha: float,
               position: str = "last") -> tuple[Unit, dict]:
    """One steering unit (direction `kind` #i at `layer`, strength α) and its meta row."""
    u = Unit.of(Site("resid", layer, position=position), Op.add(dirs.vector(kind, layer, i), alpha))
    return u, {"unit": u.key, "target": dirs.target, "kind": kind, "idx": i, "layer": layer, "alpha": alpha}


def units(dirs: Directions, layers: Sequence[int], alphas: Sequence[float], kinds: Sequence[str] = ("real",),
          position: str = "last", count: int | None = None) -> tuple[list[Unit], pd.DataFrame]:
    """Steering units for every (kind, index, layer, α) — at most `count` directions of each control kind — and a
    table mapping unit keys to them."""
    out, meta = [], []
    for kind in kinds:
        k = 1 if kind == "real" else getattr(dirs, kind).shape[1]
        for i in range(k if count is None else min(k, count)):
            for layer in layers:
                for a in alphas:
                    u, m = steer_unit(dirs, kind, i, layer, a, position)
                    out.append(u)
                    meta.append(m)
    return out, pd.DataFrame(meta, columns=["unit", "target", "kind", "idx", "layer", "alpha"])


def multi_layer(dirs: Directions, layers: Sequence[int], alpha: float, position: str = "last") -> Unit:
    """One unit steering several layers at once, α split evenly (each in its own layer's norm)."""
    return Unit(tuple(Edit(Site("resid", layer, position=position), Op.add(dirs.vector("real", layer), alpha / len(layers)))
                      for layer in layers))


def effects(df: pd.DataFrame, meta: pd.DataFrame, sign: int) -> pd.DataFrame:
    """Per-prompt sweep rows joined to their unit meta, with `effect` = sign · (LD_clean − LD_steered)."""
    out = df.drop(columns=["layer", "alpha"]).merge(meta.drop_duplicates("unit"), on="unit")
    out["effect"] = sign * out["ld_drop"]
    out["sign"] = sign
    return out


def grade(per_prompt: pd.DataFrame, n_boot: int = 1000, control_best: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (family, layer, α): the real effect with a 95% CI over prompts and, where controls ran (same prompts),
    the strongest control, its mean effect and `p_control` — the exact paired sign-flip p of (real − strongest
    control) over prompts, effects read in the direction of each one's α. With `control_best` (each screened
    control's own best (layer, sign), `choose`), the controls are those screened ones, each at its own best cell
    and at |α| (`control_effect` in the real α's sign): they had the selection the real direction had. Without
    it, the controls at the same layer and α (for a cell nobody chose). z / empirical p against the random and
    the shuffled-label draws at the same layer and α are descriptive: with k draws an empirical p cannot go
    below 1/(k + 1)."""
    rows = []
    ctl_rows = per_prompt[per_prompt["kind"] != "real"]
    for (fam, layer, a), g in per_prompt.groupby(["family", "layer", "alpha"]):
        real = g[g["kind"] == "real"]
        if real.empty:
            continue
        est, lo, hi = stats.bootstrap_ci(real["effect"], n_boot=n_boot)
        s = 1.0 if a >= 0 else -1.0
        r = {"family": fam, "layer": layer, "alpha": a, "effect": est, "effect_lo": lo, "effect_hi": hi,
             "kl": real["kl"].mean(), "n": len(real)}
        if control_best is None:
            ctl = g[g["kind"] != "real"]
        else:
            cb = control_best[control_best["family"] == fam]
            ctl = ctl_rows[ctl_rows["family"] == fam].merge(
                cb.assign(alpha=cb["sign"] * abs(a))[["kind", "idx", "layer", "alpha"]], on=["kind", "idx", "layer", "alpha"])
        if len(ctl) and a != 0:
            per = (ctl.assign(signed=ctl["effect"] * np.sign(ctl["alpha"]))
                   .pivot_table(index="item_id", columns=["kind", "idx", "layer", "alpha"], values="signed"))
            k = per.mean().idxmax()
            d = (s * real.set_index("item_id")["effect"] - per[k]).dropna().to_numpy()
            cell = "" if control_best is None else f" (layer {k[2]}, {'+' if k[3] > 0 else '−'}α)"
            r |= {"control": f"{k[0]} #{k[1]}{cell}", "control_effect": s * float(per[k].mean()),
                  "n_controls": per.shape[1], "p_control": stats.sign_flip_p(d, "greater")}
        for kind in ("random", "shuffled"):
            null = g[g["kind"] == kind].groupby("idx")["effect"].mean().to_numpy()
            if null.size and a != 0:
                r |= {f"{kind}_mean": null.mean(), f"{kind}_sd": null.std(ddof=1) if null.size > 1 else np.nan,
                      f"{kind}_max": (s * null).max() * s, f"z_{kind}": stats.zscore(s * est, s * null),
                      f"p_{kind}": stats.empirical_p(s * est, s * null), f"n_{kind}": null.size}
        rows.append(r)
    return pd.DataFrame(rows)


def best_layers(screen: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Per direction (`by`: a target, or a target's control `kind` and `idx`) and sign of α: the layer with the
    largest mean signed effect over that sign's strengths (`signed`), and how many (layer, sign) cells it was
    chosen from (`n_candidates`)."""
    by = list(by)
    d = screen.assign(sign=np.sign(screen["alpha"]).astype(int))
    d = d[d["sign"] != 0]
    m = d.assign(signed=d["effect"] * d["sign"]).groupby([*by, "sign", "layer"])["signed"].mean().reset_index()
    k = m.groupby(by).size().rename("n_candidates").reset_index()
    return m.loc[m.groupby([*by, "sign"])["signed"].idxmax()].merge(k, on=by).reset_index(drop=True)


def choose(best: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Per direction, the (layer, sign) of `best_layers` with the larger mean signed effect: the one it is graded at."""
    return best.loc[best.groupby(list(by))["signed"].idxmax()].reset_index(drop=True)


# ---------------------------------------------------------------------------------- knockout
def gap_defined(gap: np.ndarray) -> bool:
    """Whether a family's clean−corrupt gap can normalize an effect: its 95% CI (over prompts) excludes 0."""
    _, lo, hi = stats.bootstrap_ci(gap)
    return bool(lo > 0 or hi < 0)


def _ratio(ld_drop: np.ndarray, gap: np.ndarray) -> float:
    den = float(np.mean(gap))
    return float(np.mean(ld_drop)) / den if abs(den) > 1e-12 else float("nan")


def normalized(ld_drop: np.ndarray, gap: np.ndarray) -> float:
    """Fraction of the clean−corrupt gap removed, mean(ld_drop) / mean(gap); NaN ("undefined") unless the gap's
    95% CI excludes 0, so a near-zero gap never inflates the effect."""
    return _ratio(ld_drop, gap) if gap_defined(gap) else float("nan")


def selectivity(target: tuple[np.ndarray, np.ndarray], off: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 1000,
                seed: int = 0) -> tuple[float, float, float]:
    """(estimate, lo, hi) of target effect − mean |off-target effect|, each `normalized` (ld_drop, gap) of one
    family: 0 = as much collateral as target effect, bounded by the effects themselves (no ratio to explode).
    Off-target families with an undefined gap are left out; NaN when the target's or every off-target gap is
    undefined. Percentile bootstrap CI, prompts resampled within every family."""
    nan = (float("nan"),) * 3
    offs = [x for x in off.values() if gap_defined(x[1])]
    if not gap_defined(target[1]) or not offs:
        return nan

    def diff(t, o):
        return _ratio(*t) - float(np.mean([abs(_ratio(*x)) for x in o]))

    rng = np.random.default_rng(seed)

    def rs(x):
        i = rng.integers(0, len(x[0]), len(x[0]))
        return np.asarray(x[0])[i], np.asarray(x[1])[i]

    boots = np.array([diff(rs(target), [rs(x) for x in offs]) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return diff(target, offs), float(lo), float(hi)


def knockout_table(per_prompt: pd.DataFrame, n_boot: int = 500) -> pd.DataFrame:
    """Per knockout unit (aimed at `target`): target effect, mean |off-target effect| over the `n_off` families with
    a defined gap, KL (collateral), selectivity (a difference) + CI. `per_prompt` holds the units' sweep rows
    on every family's prompts (columns target, family, ld_drop, ld_clean, ld_corrupt, kl, ...)."""
    rows = []
    for (tgt, layer, a), g in per_prompt.groupby(["target", "layer", "alpha"]):
        fam = {f: (x["ld_drop"].to_numpy(), (x["ld_clean"] - x["ld_corrupt"]).to_numpy()) for f, x in g.groupby("family")}
        if tgt not in fam:
            continue
        off = {f: v for f, v in fam.items() if f != tgt}
        sel, lo, hi = selectivity(fam[tgt], off, n_boot=n_boot)
        offn = [abs(v) for v in (normalized(*x) for x in off.values()) if np.isfinite(v)]
        rows.append({"target": tgt, "layer": layer, "alpha": a, "target_effect": normalized(*fam[tgt]),
                     "off_target_effect": float(np.mean(offn)) if offn else np.nan, "n_off": len(offn),
                     "off_target_kl": g[g["family"] != tgt]["kl"].mean(), "target_kl": g[g["family"] == tgt]["kl"].mean(),
                     "selectivity": sel, "selectivity_lo": lo, "selectivity_hi": hi, "n": len(fam[tgt][0])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- generation
def generate(subject: Subject, prompts: Sequence[str], unit: Unit | None = None, max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations with a steering unit's edits applied at every forward of generation
    (position 'all': every token; 'last': the newest token of each forward): `engine.generate`."""
    from ..engine.batch import generate as traced_generate

    return traced_generate(subject, list(prompts), unit, max_new_tokens)


# ---------------------------------------------------------------------------------- fluency cost and prompting
FLUENCY_BUDGET = 0.1  # nats per token on unrelated text: the cost a "beats prompting" claim may pay


def _all_logits(subject: Subject, b: Batch, unit: Unit | None) -> torch.Tensor:
    """(B, T, V) logits at every position of `b`'s clean prompts with `unit` applied (one traced forward)."""
    from ..engine import tracing

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
            us.append(steer_unit(st.dirs[r.family], "real", 0, int(r.layer), r.sign * abs(a), "all")[0])
            cells.append((r.family, int(r.layer), r.sign * abs(a)))
    if not us:
        return pd.DataFrame(columns=cols)
    v = nll(subject, sentences, [None, *us], batch_size)
    return pd.DataFrame([(*c, v[0].mean(), x.mean(), *stats.bootstrap_ci(x - v[0]), len(sentences))
                         for c, x in zip(cells, v[1:], strict=True)], columns=cols)


def _aim(st: Study, target: str, sign: int, it: Any) -> tuple[str, int]:
    """The word (and token id) that steering `target` with this sign pushes item `it` toward."""
    return (it.distractor, it.distractor_id) if st.sign[target] * sign > 0 else (it.answer, it.answer_id)


def prompted(subject: Subject, st: Study, target: str, sign: int, items: Sequence, demos: Sequence) -> dict[str, list[str]]:
    """The prompting baselines for `items`, aimed where steering `target` with `sign` aims: an *instruction* (the word
    to say, for a family; the polarity, for a concept), inside the tokenizer's chat template when it has one, and a
    *one-shot* prompt (a selection item followed by its own aimed-at word, then the item)."""
    from ..tasks import core

    out: dict[str, list[str]] = {"instruction": [], "one-shot": []}
    for i, it in enumerate(items):
        text = (f"Continue the text in a {'positive' if sign > 0 else 'negative'} tone." if st.sign[target] == -1
                else f'Continue the text. The next word is "{_aim(st, target, sign, it)[0].strip()}".')
        head = core._render(subject.tokenizer, text, None) if core.has_chat_template(subject.tokenizer) else f"{text}\n\n"
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
    sign) on the steering metric: effect = sign_t · (LD_plain − LD_prompted), as `effects` reads steering."""
    rows = []
    for r in sm[sm["testable"]].itertuples():
        t, its = r.family, st.items[r.family]
        base = _lds(subject, [it.prompt for it in its], its, batch_size)
        for name, ps in prompted(subject, st, t, int(r.sign), its, st.splits[t].select).items():
            e = st.sign[t] * (base - _lds(subject, ps, its, batch_size))
            rows += [{"family": t, "item_id": it.id, "prompt": name, "effect": float(x)} for it, x in zip(its, e, strict=True)]
    return pd.DataFrame(rows, columns=["family", "item_id", "prompt", "effect"])


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@lru_cache(maxsize=1)
def polarity_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(positive, negative) words: those that differ within the sentiment contrast pairs, plus the probe words."""
    from .. import tasks

    pos, neg = {a.strip() for a, _ in SENTIMENT_TOKENS}, {b.strip() for _, b in SENTIMENT_TOKENS}
    for p, q in tasks.contrastive("sentiment"):
        a, b = set(_words(p)), set(_words(q))
        pos |= a - b
        neg |= b - a
    return frozenset(pos - neg), frozenset(neg - pos)


def polarity(text: str) -> int:
    """Positive minus negative lexicon words in `text` (`polarity_lexicon`)."""
    pos, neg = polarity_lexicon()
    w = _words(text)
    return sum(x in pos for x in w) - sum(x in neg for x in w)


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
        runs = {"none": (plain, None), "steering": (plain, steer_unit(st.dirs[t], "real", 0, int(r.layer), r.alpha, "all")[0]),
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


# ---------------------------------------------------------------------------------- the chapter's pipeline
@dataclass
class Study:
    """Everything one steering study measured: directions, held-out splits, screen, held-out grading, best layers."""

    dirs: dict[str, Directions]
    sign: dict[str, int]
    splits: dict[str, Split]
    screen: pd.DataFrame  # real directions, every screened layer × α, selection prompts
    graded: pd.DataFrame  # best layers, every α, held-out prompts, with control statistics
    best: pd.DataFrame  # per target and sign: best layer (chosen on the selection prompts)
    per_prompt: pd.DataFrame  # held-out rows of the graded sweep
    solved: pd.DataFrame = field(default_factory=pd.DataFrame)  # `tasks.solved` on each family's select + eval items
    control_screen: pd.DataFrame = field(default_factory=pd.DataFrame)  # screened controls, layer × control α, select
    control_best: pd.DataFrame = field(default_factory=pd.DataFrame)  # each screened control's own (layer, sign)

    @property
    def items(self) -> dict[str, list]:
        """Held-out evaluation items per target."""
        return {t: sp.eval for t, sp in self.splits.items()}

    def untestable(self, target: str) -> str | None:
        """Why a family's claims cannot be tested on this model (None when they can; concepts have no gate)."""
        from .. import tasks

        if self.sign[target] != 1:
            return None
        row = self.solved[self.solved["family"] == target]
        return None if len(row) and bool(row["testable"].iloc[0]) else tasks.untestable_why(row)


def study(subject: Subject, families: Sequence[str], concepts: Sequence[str] = ("sentiment",), n: int = 8,
          n_fit: int = 16, layers: Sequence[int] | None = None, screen_alphas: Sequence[float] = (-0.4, 0.4),
          alphas: Sequence[float] = (-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8), control_alphas: Sequence[float] = (-0.4, 0.4),
          n_random: int = 10, n_shuffled: int = 3, n_screen_controls: int = 2, seed: int = 0, cache=None,
          progress: bool = False, solved: pd.DataFrame | None = None) -> Study:
    """Fit directions per target on its fit split; on its select split, screen the real direction over layers ×
    `screen_alphas` and the first `n_screen_controls` random and shuffled-label controls over the same layers ×
    `control_alphas` (the same strengths of each sign), each direction choosing its own best (layer, sign) by the
    same rule (`best_layers`, `choose`). On the eval split, grade the best layer of each sign against the screened
    controls, each at its own best cell and the same |α| (`grade`); every control also runs at the real
    direction's layer and α (descriptive z / empirical p). Families are gated by `solved` (e.g. `tasks.gate`, on
    more items), else by `tasks.solved` on their select + eval items."""
    from .. import tasks
    from ..engine.sweep import sweep

    if sorted(-a for a in control_alphas if a < 0) != sorted(a for a in control_alphas if a > 0):
        raise ValueError(f"control_alphas {tuple(control_alphas)} must hold the same strengths of both signs: a "
                         "control chooses its sign as the real direction does, and is compared at the same |α|")
    if n_screen_controls < 1 or not (n_random or n_shuffled):
        raise ValueError("steering is graded against screened controls: n_screen_controls >= 1 and at least one "
                         "random or shuffled-label control are needed")
    layers = list(range(subject.arch.n_layers) if layers is None else layers)
    dirs, sign, splits, screens, cscreens, cbest, graded, base = {}, {}, {}, [], [], [], [], []
    for name in [*families, *concepts]:
        is_concept = name in concepts
        sp = (concept_target if is_concept else family_target)(subject, name, n, n_fit, seed)
        d = fit(subject, sp.fit, name, n_random, n_shuffled, seed)
        dirs[name], sign[name], splits[name] = d, -1 if is_concept else 1, sp
        us, meta = units(d, layers, screen_alphas)
        cu, cm = units(d, layers, control_alphas, ("random", "shuffled"), count=n_screen_controls)
        rows = sweep(subject, sp.select, _dedup(us + cu), seed=seed, cache=cache, progress=progress, desc=f"screen {name}")
        sc = grade(effects(rows, meta, sign[name]))
        cs = effects(rows, cm, sign[name]).groupby(["family", "kind", "idx", "layer", "alpha"])["effect"].mean().reset_index()
        cb = choose(best_layers(cs, ("family", "kind", "idx")), ("family", "kind", "idx"))
        screens.append(sc)
        cscreens.append(cs)
        cbest.append(cb)
        us, meta = [], []
        for b in best_layers(sc).itertuples():
            sa = [a for a in alphas if np.sign(a) == b.sign]
            ca = [a for a in control_alphas if np.sign(a) == b.sign]
            for ks, al in ((("real",), sa), (("random", "shuffled"), ca)):
                u, m = units(d, [b.layer], al, kinds=ks)
                us += u
                meta.append(m)
        for c in cb.itertuples():  # each screened control at its own best cell
            for a in control_alphas:
                if np.sign(a) == c.sign:
                    u, m = steer_unit(d, c.kind, c.idx, c.layer, a)
                    us.append(u)
                    meta.append(pd.DataFrame([m]))
        ev = sweep(subject, sp.eval, _dedup(us), seed=seed, cache=cache, progress=progress, desc=f"grade {name}")
        graded.append(effects(ev, pd.concat(meta).drop_duplicates("unit"), sign[name]))
        if not is_concept:
            base += [rows, ev]
    per_prompt = pd.concat(graded, ignore_index=True)
    screen = pd.concat(screens, ignore_index=True)
    control_best = pd.concat(cbest, ignore_index=True)
    if solved is None:
        solved = tasks.solved(pd.concat(base) if base else pd.DataFrame(columns=["family", "item_id", "ld_clean", "ld_corrupt"]))
    return Study(dirs, sign, splits, screen, grade(per_prompt, control_best=control_best), best_layers(screen), per_prompt,
                 solved, pd.concat(cscreens, ignore_index=True), control_best)


def _dedup(us: Sequence[Unit]) -> list[Unit]:
    return list({u.key: u for u in us}.values())


def summary(st: Study, n_layers: int) -> pd.DataFrame:
    """Per target, the (layer, sign) chosen on the selection prompts out of `n_candidates`, graded on the held-out
    prompts at the largest control strength of that sign: effect with CI, the strongest control (each screened
    control at its own chosen (layer, sign), `grade`) and the paired sign-flip p against it, and whether the target
    is testable on this model."""
    chosen = choose(st.best)
    g = st.graded.dropna(subset=["p_control"]).assign(sign=lambda x: np.sign(x["alpha"]).astype(int))
    g = g.merge(chosen[["family", "sign", "layer", "n_candidates"]], on=["family", "sign", "layer"])
    g = g.loc[g.assign(m=g["alpha"].abs()).groupby("family")["m"].idxmax()].copy()
    g["depth"] = g["layer"] / max(1, n_layers - 1)
    g["kind"] = ["concept" if st.sign[f] == -1 else "family" for f in g["family"]]
    why = {f: st.untestable(f) for f in g["family"]}
    g["testable"] = [why[f] is None for f in g["family"]]
    g["untestable_why"] = [why[f] or "" for f in g["family"]]
    g["held_out"] = [not st.splits[f].leaks() for f in g["family"]]
    cols = ["family", "kind", "layer", "depth", "sign", "alpha", "n_candidates", "effect", "effect_lo", "effect_hi",
            "control", "control_effect", "n_controls", "p_control", "n_random", "n_shuffled", "p_shuffled", "z_random",
            "z_shuffled",
            "kl", "n", "testable", "untestable_why", "held_out"]
    return g[[c for c in cols if c in g]].reset_index(drop=True)


def knockout_unit(dirs: Directions, layer: int, n_layers: int) -> Unit:
    """Directional ablation (Arditi et al. 2024): the direction fit at `layer` projected out of the residual stream
    after every layer, at every position (`Op.project`)."""
    op = Op.project(dirs.real[layer])
    return Unit(tuple(Edit(Site("resid", i, position="all"), op) for i in range(n_layers)))


def knockout(subject: Subject, st: Study, alpha: float = 0.4, families: Sequence[str] | None = None, seed: int = 0,
             cache=None, progress: bool = False, n_boot: int = 500, mode: str = "project") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Knock out each family's direction (its best layer of the +α sign, chosen on the selection prompts) and run it
    on every family's held-out prompts: (selectivity table with `mode`, testability and `n_candidates`, per-prompt
    rows). mode "project": directional ablation at every layer and position (`knockout_unit`: necessity of the
    direction); "push": +α along it at that layer, last token (sufficiency of a push toward the corrupt answer)."""
    from ..engine.sweep import sweep

    if mode not in ("project", "push"):
        raise ValueError(f"knockout mode {mode!r}: use 'project' (directional ablation) or 'push' (+α addition)")
    fams = [f for f in (families or st.dirs) if st.sign[f] == 1]
    us, meta = [], []
    best = st.best[st.best["sign"] == 1].set_index("family")
    for f in fams:
        layer = int(best.loc[f, "layer"])
        if mode == "push":
            u, m = units(st.dirs[f], [layer], [alpha])
        else:
            ko_u = knockout_unit(st.dirs[f], layer, subject.arch.n_layers)
            u, m = [ko_u], pd.DataFrame([{"unit": ko_u.key, "target": f, "kind": "real", "idx": 0, "layer": layer, "alpha": 0.0}])
        us += u
        meta.append(m)
    items = [it for f in fams for it in st.items[f]]
    rows = effects(sweep(subject, items, us, seed=seed, cache=cache, progress=progress, desc=f"knockout ({mode})"),
                   pd.concat(meta), 1)
    ko = knockout_table(rows, n_boot=n_boot)
    if ko.empty:
        return ko, rows
    why = {r.target: st.untestable(r.target) or ("" if r.n_off else "no other family's clean−corrupt gap has a 95% "
                                                 "CI excluding 0, so selectivity is undefined") for r in ko.itertuples()}
    pos = st.screen[st.screen["alpha"] > 0]
    ko["mode"] = mode
    ko["n_candidates"] = ko["target"].map(pos.groupby("family")["layer"].nunique())
    ko["testable"] = [not why[t] for t in ko["target"]]
    ko["untestable_why"] = ko["target"].map(why)
    ko["held_out"] = [not st.splits[t].leaks() for t in ko["target"]]
    return ko, rows


def concept_kl(subject: Subject, st: Study, concept: str, alpha: float, seed: int = 0, cache=None) -> pd.DataFrame:
    """Off-target effect of a concept direction: mean KL(clean ‖ steered) on every family's held-out prompts."""
    from ..engine.sweep import sweep

    b = st.best[(st.best["family"] == concept) & (st.best["sign"] == np.sign(alpha))].iloc[0]
    us, meta = units(st.dirs[concept], [int(b.layer)], [alpha])
    items = [it for f, its in st.items.items() if st.sign[f] == 1 for it in its]
    df = effects(sweep(subject, items, us, seed=seed, cache=cache, progress=False), meta, 1)
    return df.groupby("family").agg(kl=("kl", "mean"), ld_drop=("ld_drop", "mean")).reset_index()


def audit(st: Study, extra: dict[str, tuple[str, Sequence]] | None = None) -> list[str]:
    """Every leak between what a direction was fit or selected on and what it is graded on, for all the studies
    run on `st`: each target's fit / select / eval; every target's fit against every target's eval (knockout and
    off-target runs apply one target's direction to the others' prompts); and `extra` item sets graded with a
    target's direction (name -> (target, items), e.g. another length bucket). Empty = properly held out."""
    out = [f"{t}: {x}" for t, sp in st.splits.items() for x in sp.leaks()]
    fits = [p for sp in st.splits.values() for p in sp.fit]
    evals = [it for sp in st.splits.values() for it in sp.eval]
    out += [f"across targets: {x}" for x in leaks({"fit (all targets)": fits, "eval (all targets)": evals})]
    for name, (t, its) in (extra or {}).items():
        sp = st.splits[t]
        out += [f"{name}: {x}" for x in leaks({"fit": sp.fit, "select": sp.select, name: its}, sp.probe_words)]
    return out


# ---------------------------------------------------------------------------------- claims
def _toward(kind: str, sign: int) -> str:
    if kind == "concept":
        return "the positive word" if sign > 0 else "the negative word"
    return "the corrupt answer" if sign > 0 else "the clean answer"


def _p(r) -> float:
    """A steering row's p-value: the larger of the paired sign-flip p against the strongest screened control and the
    empirical p against the shuffled-label draws at its own cell (never below 1/(n_shuffled + 1))."""
    ps = getattr(r, "p_shuffled", np.nan)
    return float(max(r.p_control, ps)) if np.isfinite(ps) else float(r.p_control)


def _versus_text(b, r, level: float) -> str:
    """The prompting and fluency clause of a steering claim from its `versus_prompting` row."""
    cost = b.get("nll_cost", np.nan)
    if b["beats_prompting"]:
        verdict = f"steering beats prompting (p = {b['p_prompt']:.2g}) within the {b['fluency_budget']:g} nats/token fluency budget"
    elif b["p_prompt"] <= level:
        verdict = (f"steering beats prompting (p = {b['p_prompt']:.2g}) but not within the {b['fluency_budget']:g} "
                   "nats/token fluency budget")
    elif b["p_prompt_better"] <= level:
        verdict = f"prompting beats steering (p = {b['p_prompt_better']:.2g})"
    else:
        verdict = f"steering does not beat prompting (p = {b['p_prompt']:.2g})"
    out = (f". Against prompting on the same held-out prompts the better prompt ({b['prompt']}) moves it "
           f"{b['prompt_effect']:+.2f}: {verdict}; ")
    out += (f"added at every position it costs {cost:+.3f} nats/token (95% CI {b['nll_cost_lo']:+.3f} to "
            f"{b['nll_cost_hi']:+.3f}) on {int(b['n_sentences'])} unrelated sentences" if np.isfinite(cost)
            else "its fluency cost was not measured")
    if np.isfinite(b.get("gen_n", np.nan)):
        n = int(b["gen_n"])
        aim = f"the {'positive' if r.sign > 0 else 'negative'} polarity" if r.kind == "concept" else _toward(r.kind, r.sign)
        out += (f"; greedy generations reach {aim} in {int(b['gen_steering'])}/{n} steered, "
                f"{int(b['gen_prompt'])}/{n} prompted ({b['gen_prompt_kind']}), {int(b['gen_none'])}/{n} unsteered"
                + (" (a small scored set, < 50)" if n < 50 else ""))
    return out


def steering_claims(summary: pd.DataFrame, knockout: pd.DataFrame | None = None, *, model: str, profile: str,
                    chapter: str = "04", level: float = 0.05, baselines: pd.DataFrame | None = None) -> list[Claim]:
    """Claims from `summary` (one row per target), a `knockout` table and `baselines` (`versus_prompting`). Wording
    (direction, whether the effect beats its controls, how many candidates a best was chosen from, whether steering
    beats prompting at its fluency cost) and evidence all come from the measured rows: control = the larger of the
    paired sign-flip p against the strongest screened control and the empirical p against the shuffled-label draws
    (steering; too few draws cannot pass), or a selectivity CI above 0 (knockout); breadth = testable targets that
    pass it; selection = held-out when the target's splits share nothing. The prompting comparison is stated, not
    graded. Targets the model does not solve give claims that say "not testable here"."""
    def beats(r) -> bool:
        return bool(_p(r) <= level and r.sign * (r.effect - r.control_effect) > 0)

    vs = {} if baselines is None or baselines.empty else baselines.set_index("family").to_dict("index")
    ok = [r.testable and beats(r) for r in summary.itertuples()]
    n_t, n_ok = int(summary["testable"].sum()), int(sum(ok))
    out = []
    for r in summary.itertuples():
        cf = f"add α·‖h_L‖·v̂ to the residual stream after layer {r.layer}, last token"
        ctl = (f"{int(r.n_controls)} random (covariance-matched) and shuffled-label directions of the same norm and |α|, "
               "each at its own best layer and sign on the selection prompts (the direction's candidates, at the control "
               "strength), and the shuffled-label draws at the direction's own cell; prompting (instruction, one-shot)")
        common = dict(counterfactual=cf, control=ctl, chapter=chapter, model=model, profile=profile)
        metric = ("logit-difference shift toward the target, held-out prompts; paired sign-flip test vs the strongest "
                  "control and empirical p vs the shuffled-label draws; NLL per token on unrelated text")
        if not r.testable:
            out.append(Claim(f"Steering {r.family}: not testable here ({r.untestable_why})", metric=metric,
                             evidence={"testable": False, "untestable_why": r.untestable_why}, **common))
            continue
        aligned = r.sign * r.effect
        verdict = ("beyond" if beats(r) else "but not reliably beyond" if r.sign * (r.effect - r.control_effect) > 0
                   else "no more than")
        ns = getattr(r, "n_shuffled", np.nan)
        shuf = ""
        if np.isfinite(getattr(r, "p_shuffled", np.nan)):
            shuf = f", and of {int(ns)} shuffled-label draws at its cell (empirical p = {r.p_shuffled:.2g}"
            shuf += (f"; {int(ns)} draws cannot reach p ≤ {level:g})" if 1 / (ns + 1) > level else ")")
        b = vs.get(r.family)
        ev = {"p_value": _p(r), "p_control": float(r.p_control), "n_candidates": int(r.n_candidates),
              "selection": "held-out" if r.held_out else "none", "families_agreeing": n_ok, "n_families": n_t,
              "n_prompts": int(r.n)}
        if b is not None:
            ev |= {k: (v.item() if hasattr(v, "item") else v) for k, v in b.items()
                   if k in ("beats_prompting", "prompt", "prompt_effect", "p_prompt", "p_prompt_better", "nll_cost",
                            "fluency_budget", "n_sentences", "gen_n", "gen_steering", "gen_prompt", "gen_none")}
        out.append(Claim(
            f"Steering {r.family} along its contrastive direction at layer {r.layer} "
            f"({'+' if r.sign > 0 else '−'}α = {abs(r.alpha):g}·‖h‖; layer and sign chosen out of {r.n_candidates} "
            f"candidates on selection prompts) moves the logit difference {abs(r.effect):.2f} "
            f"{'toward' if aligned > 0 else 'away from'} {_toward(r.kind, r.sign)} (effect {r.effect:+.2f}, 95% CI "
            f"{r.effect_lo:+.2f} to {r.effect_hi:+.2f}, {r.n} held-out prompts), {verdict} the strongest of {int(r.n_controls)} controls "
            f"screened the same way ({r.control} {r.control_effect:+.2f}; paired sign-flip p = {r.p_control:.2g}){shuf}"
            + (_versus_text(b, r, level) if b is not None else "; no prompting baseline or fluency cost measured"),
            metric=metric, evidence=ev, **common))
    if knockout is None or knockout.empty:
        return out
    ok = knockout["testable"] & (knockout["selectivity_lo"] > 0)
    n_t, n_ok = int(knockout["testable"].sum()), int(ok.sum())
    for r in knockout.itertuples():
        push = getattr(r, "mode", "push") == "push"
        how = (f"+{r.alpha:g}·‖h‖ along the family's direction at layer {r.layer}, last token" if push else
               f"the family's layer-{r.layer} direction projected out of the residual stream after every layer, at every "
               "position (directional ablation, Arditi et al. 2024)")
        common = dict(metric="fraction of each family's clean − corrupt gap removed: target − mean |off-target|",
                      counterfactual=how,
                      control="the same edit on the other families' held-out prompts (0 = as much collateral as effect)",
                      chapter=chapter, model=model, profile=profile)
        name = "Pushing" if push else "Ablating the direction of"
        if not r.testable:
            out.append(Claim(f"{name} {r.target}: not testable here ({r.untestable_why})",
                             evidence={"testable": False, "untestable_why": r.untestable_why}, **common))
            continue
        verdict = ("selective" if r.selectivity_lo > 0 else "less selective than its collateral" if r.selectivity_hi < 0
                   else "not distinguishable from non-selective")
        what = (f"+{r.alpha:g}·‖h‖ at layer {r.layer}, last token" if push
                else f"its layer-{r.layer} direction projected out after every layer, every position")
        out.append(Claim(
            f"{name} {r.target} ({what}; layer chosen out of {r.n_candidates} on selection prompts) removes "
            f"{r.target_effect:.2f} of its gap vs {r.off_target_effect:.2f} of {r.n_off} other families' gaps: {verdict} "
            f"(difference {r.selectivity:+.2f}, 95% CI {r.selectivity_lo:+.2f} to {r.selectivity_hi:+.2f}; off-target KL "
            f"{r.off_target_kl:.3f})",
            evidence={"ci_excludes_control": bool(r.selectivity_lo > 0), "n_candidates": int(r.n_candidates),
                      "selection": "held-out" if r.held_out else "none", "families_agreeing": n_ok, "n_families": n_t},
            **common))
    return out
