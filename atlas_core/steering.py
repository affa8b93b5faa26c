"""Steering and knockout with contrastive directions, always graded against controls.

A *target* is what we steer: a task family (direction = mean corrupt − mean clean residual at the last
token, so +α pushes the model from the clean answer toward the corrupt answer) or a concept such as
sentiment (direction = mean positive − mean negative sentence). Every steering run is a unit of the
atlas vocabulary, `Unit.of(Site("resid", L, position=...), Op.add(v̂ · ‖h_L‖, α))`, executed by `sweep`
(cached, resumable): α is in multiples of the layer's typical residual norm ‖h_L‖ (median over the fit
prompts at the last token), so strengths are comparable across layers and models.

Effect (logits): ``effect = sign · (LD_clean − LD_steered)`` with LD = logit(answer) − logit(distractor),
sign = +1 for families (the shift toward the corrupt answer, = `ld_drop`) and −1 for concepts (the
shift toward the positive token). Controls beside every real direction, at the same layer, norm and α:
random unit directions (≥ 10, seeded) and shuffled-label directions (clean/corrupt labels permuted before
averaging). A real effect is graded by its z-score and empirical p against those null effects.

Knockout is negative steering aimed at one family; selectivity = target effect / mean |off-target
effect|, both as fractions of each family's clean−corrupt gap (ratio of means), with bootstrap CIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from . import stats
from .engine import Batch
from .interventions import Edit, Op, Site, Unit
from .subject import Subject

SENTIMENT_TEMPLATES = (
    "I watched the film last night. Honestly, it was", "The food at that place was",
    "My first day at the new job was", "The new phone I bought is", "Her performance in the play was",
    "The weather this weekend was", "The service at the hotel was", "Overall, the book was",
)
SENTIMENT_TOKENS = ((" great", " terrible"), (" good", " bad"), (" wonderful", " awful"),
                    (" excellent", " poor"), (" amazing", " horrible"), (" fantastic", " dreadful"))


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


def random_directions(d: int, k: int, seed: int) -> torch.Tensor:
    """k seeded random unit vectors in R^d: (k, d)."""
    r = torch.randn(k, d, generator=torch.Generator().manual_seed(seed))
    return r / r.norm(dim=-1, keepdim=True)


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
    """Directions from (positive, negative) text pairs at every layer, plus random and shuffled-label controls."""
    pos = last_resid(subject, [p for p, _ in pairs])
    neg = last_resid(subject, [q for _, q in pairs])
    L, _, d = pos.shape
    raw = mean_diff(pos, neg)
    gen = torch.Generator().manual_seed(seed)
    shuf = torch.stack([shuffled_diff(pos, neg, gen)[0] for _ in range(n_shuffled)], 1) if n_shuffled else torch.zeros(L, 0, d)
    rnd = torch.stack([random_directions(d, n_random, seed * 1000 + layer) for layer in range(L)])
    norm = torch.cat([pos, neg], 1).norm(dim=-1).median(dim=1).values
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
def family_target(subject: Subject, family: str, n: int, n_fit: int, seed: int = 0, bucket: str = "short"):
    """(fit pairs (corrupt, clean), select items, eval items): three disjoint seeded samples of validated items."""
    from . import tasks

    items, _ = tasks.validate(tasks.load_items(family, "synthetic", bucket), subject.tokenizer)
    items = tasks.sample(items, n_fit + 2 * n, seed)
    fit_items, sel, ev = items[:n_fit], items[n_fit:n_fit + n], items[n_fit + n:]
    return [(it.corrupt, it.prompt) for it in fit_items], sel, ev


def concept_items(subject: Subject, concept: str = "sentiment") -> list:
    """Probe items for a concept: neutral templates × (positive, negative) single-token pairs; LD = pos − neg."""
    if concept != "sentiment":
        raise ValueError(f"no probe prompts for concept {concept!r}; known: sentiment")
    tok = subject.tokenizer
    pairs = [(tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"])
             for a, b in SENTIMENT_TOKENS]
    pairs = [(a[0], b[0]) for a, b in pairs if len(a) == 1 and len(b) == 1]
    if not pairs:
        raise ValueError(f"no {concept} word pair is a single token under {subject.name}'s tokenizer; "
                         "add pairs to steering.SENTIMENT_TOKENS")
    return [SimpleNamespace(id=f"{concept}{i}-{j}", family=concept, prompt=t, corrupt=t, answer_id=a, distractor_id=b,
                            diff_pos=0, bucket="short", variant="concept")
            for i, t in enumerate(SENTIMENT_TEMPLATES) for j, (a, b) in enumerate(pairs)]


def concept_target(subject: Subject, concept: str, n: int, n_fit: int, seed: int = 0):
    """(fit pairs (positive, negative), select items, eval items) for a concept."""
    from . import tasks

    pairs = tasks.sample(tasks.contrastive(concept), n_fit, seed)
    items = tasks.sample(concept_items(subject, concept), 2 * n, seed)
    return pairs, items[:n], items[n:]


# ---------------------------------------------------------------------------------- units and effects
def units(dirs: Directions, layers: Sequence[int], alphas: Sequence[float], kinds: Sequence[str] = ("real",),
          position: str = "last") -> tuple[list[Unit], pd.DataFrame]:
    """Steering units for every (kind, index, layer, α) and a table mapping unit keys to them."""
    out, meta = [], []
    for kind in kinds:
        count = 1 if kind == "real" else getattr(dirs, kind).shape[1]
        for i in range(count):
            for layer in layers:
                v = dirs.vector(kind, layer, i)
                for a in alphas:
                    u = Unit.of(Site("resid", layer, position=position), Op.add(v, a))
                    out.append(u)
                    meta.append({"unit": u.key, "target": dirs.target, "kind": kind, "idx": i, "layer": layer, "alpha": a})
    return out, pd.DataFrame(meta)


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


def grade(per_prompt: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Per (family, layer, α): the real effect with a 95% CI and its z / empirical p against the random and the
    shuffled-label effects (each control's mean over the same prompts), in the direction of α's sign."""
    rows = []
    for (fam, layer, a), g in per_prompt.groupby(["family", "layer", "alpha"]):
        real = g[g["kind"] == "real"]
        if real.empty:
            continue
        est, lo, hi = stats.bootstrap_ci(real["effect"], n_boot=n_boot)
        s = 1.0 if a >= 0 else -1.0
        r = {"family": fam, "layer": layer, "alpha": a, "effect": est, "effect_lo": lo, "effect_hi": hi,
             "kl": real["kl"].mean(), "n": len(real)}
        for kind in ("random", "shuffled"):
            null = g[g["kind"] == kind].groupby("idx")["effect"].mean().to_numpy()
            if null.size and a != 0:
                r |= {f"{kind}_mean": null.mean(), f"{kind}_sd": null.std(ddof=1) if null.size > 1 else np.nan,
                      f"{kind}_max": (s * null).max() * s, f"z_{kind}": stats.zscore(s * est, s * null),
                      f"p_{kind}": stats.empirical_p(s * est, s * null), f"n_{kind}": null.size}
        rows.append(r)
    return pd.DataFrame(rows)


def best_layers(screen: pd.DataFrame) -> pd.DataFrame:
    """Per family and sign of α: the layer with the largest mean signed effect over that sign's strengths."""
    d = screen.assign(sign=np.sign(screen["alpha"]).astype(int))
    d = d[d["sign"] != 0]
    m = d.assign(signed=d["effect"] * d["sign"]).groupby(["family", "sign", "layer"])["signed"].mean().reset_index()
    return m.loc[m.groupby(["family", "sign"])["signed"].idxmax()].reset_index(drop=True)


# ---------------------------------------------------------------------------------- knockout
def normalized(ld_drop: np.ndarray, gap: np.ndarray) -> float:
    """Fraction of the clean−corrupt logit-difference gap removed: mean(ld_drop) / mean(gap)."""
    den = float(np.mean(gap))
    return float(np.mean(ld_drop)) / den if abs(den) > 1e-9 else float("nan")


def selectivity(target: tuple[np.ndarray, np.ndarray], off: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 1000,
                seed: int = 0, floor: float = 1e-3) -> tuple[float, float, float]:
    """(estimate, lo, hi) of target effect / mean |off-target effect|; each effect is `normalized` (ld_drop, gap)
    of one family; prompts are resampled within every family for the CI; the denominator is floored at `floor`."""
    def ratio(t, o):
        den = np.mean([abs(normalized(*x)) for x in o])
        return normalized(*t) / max(den, floor)

    est = ratio(target, list(off.values()))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        def rs(x):
            i = rng.integers(0, len(x[0]), len(x[0]))
            return np.asarray(x[0])[i], np.asarray(x[1])[i]
        boots.append(ratio(rs(target), [rs(x) for x in off.values()]))
    boots = np.asarray(boots)
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return est, float(lo), float(hi)


def knockout_table(per_prompt: pd.DataFrame, n_boot: int = 500) -> pd.DataFrame:
    """Per knockout unit (aimed at `target`): target effect, off-target effect and KL (collateral), selectivity + CI.
    `per_prompt` holds the units' sweep rows on every family's prompts (columns target, family, ld_drop, ...)."""
    rows = []
    for (tgt, layer, a), g in per_prompt.groupby(["target", "layer", "alpha"]):
        fam = {f: (x["ld_drop"].to_numpy(), (x["ld_clean"] - x["ld_corrupt"]).to_numpy()) for f, x in g.groupby("family")}
        if tgt not in fam:
            continue
        off = {f: v for f, v in fam.items() if f != tgt}
        sel, lo, hi = selectivity(fam[tgt], off, n_boot=n_boot)
        offg = g[g["family"] != tgt]
        rows.append({"target": tgt, "layer": layer, "alpha": a, "target_effect": normalized(*fam[tgt]),
                     "off_target_effect": float(np.mean([normalized(*v) for v in off.values()])),
                     "off_target_kl": offg["kl"].mean(), "target_kl": g[g["family"] == tgt]["kl"].mean(),
                     "selectivity": sel, "selectivity_lo": lo, "selectivity_hi": hi})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- generation
def generate(subject: Subject, prompts: Sequence[str], unit: Unit | None = None, max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations with a steering unit's `resid` add-edits applied at every forward of generation
    (position 'all': every token; 'last': the newest token of each forward)."""
    hooks = []
    layers = subject.model.get_submodule(subject.arch.paths.layers)
    for e in (unit.edits if unit else ()):
        if e.site.component != "resid" or e.op.kind != "add" or e.site.position not in ("all", "last"):
            raise ValueError(f"generation steering takes resid add-edits at position all/last, got {e.key}")

        def hook(_m, _a, out, e=e):
            h = out[0] if isinstance(out, tuple) else out
            add = e.op.alpha * e.op.vector.to(h.device, h.dtype)
            h = h + add if e.site.position == "all" else torch.cat([h[:, :-1], h[:, -1:] + add], 1)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        hooks.append(layers[e.site.layer].register_forward_hook(hook))
    try:
        enc = subject.encode(list(prompts))
        with torch.inference_mode():
            out = subject.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=subject.tokenizer.pad_token_id or subject.tokenizer.eos_token_id)
    finally:
        for h in hooks:
            h.remove()
    return subject.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------- the chapter's pipeline
@dataclass
class Study:
    """Everything one steering study measured: directions, screen, held-out grading, best layers, eval items."""

    dirs: dict[str, Directions]
    sign: dict[str, int]
    items: dict[str, list]  # held-out evaluation items per target
    screen: pd.DataFrame  # real directions, every screened layer × α, selection prompts
    graded: pd.DataFrame  # best layers, every α, held-out prompts, with control statistics
    best: pd.DataFrame  # per target and sign: best layer (chosen on the selection prompts)
    per_prompt: pd.DataFrame  # held-out rows of the graded sweep


def study(subject: Subject, families: Sequence[str], concepts: Sequence[str] = ("sentiment",), n: int = 8,
          n_fit: int = 16, layers: Sequence[int] | None = None, screen_alphas: Sequence[float] = (-0.4, 0.4),
          alphas: Sequence[float] = (-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8), control_alphas: Sequence[float] = (-0.4, 0.4),
          n_random: int = 10, n_shuffled: int = 3, seed: int = 0, cache=None, progress: bool = False) -> Study:
    """Fit directions per target, screen layers on selection prompts, then grade the best layer of each sign on
    held-out prompts against random and shuffled-label controls (at `control_alphas`, same layer and norm)."""
    from .sweep import sweep

    layers = list(range(subject.arch.n_layers) if layers is None else layers)
    dirs, sign, ev_items, screens, graded = {}, {}, {}, [], []
    for name in [*families, *concepts]:
        is_concept = name in concepts
        pairs, sel, ev = (concept_target if is_concept else family_target)(subject, name, n, n_fit, seed)
        d = fit(subject, pairs, name, n_random, n_shuffled, seed)
        dirs[name], sign[name], ev_items[name] = d, -1 if is_concept else 1, ev
        us, meta = units(d, layers, screen_alphas)
        sc = grade(effects(sweep(subject, sel, us, seed=seed, cache=cache, progress=progress, desc=f"screen {name}"),
                           meta, sign[name]))
        screens.append(sc)
        best = best_layers(sc)
        us, meta = [], []
        for b in best.itertuples():
            sa = [a for a in alphas if np.sign(a) == b.sign]
            ca = [a for a in control_alphas if np.sign(a) == b.sign]
            for ks, al in ((("real",), sa), (("random", "shuffled"), ca)):
                u, m = units(d, [b.layer], al, kinds=ks)
                us += u
                meta.append(m)
        meta = pd.concat(meta).drop_duplicates("unit")
        graded.append(effects(sweep(subject, ev, us, seed=seed, cache=cache, progress=progress, desc=f"grade {name}"),
                              meta, sign[name]))
    per_prompt = pd.concat(graded, ignore_index=True)
    screen = pd.concat(screens, ignore_index=True)
    return Study(dirs, sign, ev_items, screen, grade(per_prompt), best_layers(screen), per_prompt)


def summary(st: Study, n_layers: int) -> pd.DataFrame:
    """Per target: best layer (and its depth) and sign, the held-out effect at the control strength, z / p against
    random and shuffled-label controls."""
    g = st.graded.dropna(subset=["z_random"]).copy()
    g["sign"] = np.sign(g["alpha"]).astype(int)
    g = g.merge(st.best[["family", "sign", "layer"]], on=["family", "sign", "layer"])
    g = g.loc[g.groupby("family")["z_random"].idxmax()]
    g["depth"] = g["layer"] / max(1, n_layers - 1)
    cols = ["family", "layer", "depth", "sign", "alpha", "effect", "effect_lo", "effect_hi", "random_mean", "random_max",
            "z_random", "p_random", "shuffled_mean", "z_shuffled", "p_shuffled", "kl"]
    return g[[c for c in cols if c in g]].reset_index(drop=True)


def knockout(subject: Subject, st: Study, alpha: float, families: Sequence[str] | None = None, seed: int = 0,
             cache=None, progress: bool = False, n_boot: int = 500) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Negative steering aimed at each family (its direction toward the corrupt answer, +α, at its best layer of
    that sign) run on every family's held-out prompts: (selectivity table, per-prompt rows)."""
    from .sweep import sweep

    fams = [f for f in (families or st.dirs) if st.sign[f] == 1]
    us, meta = [], []
    best = st.best[st.best["sign"] == 1].set_index("family")
    for f in fams:
        u, m = units(st.dirs[f], [int(best.loc[f, "layer"])], [alpha])
        us += u
        meta.append(m)
    meta = pd.concat(meta)
    items = [it for f in fams for it in st.items[f]]
    rows = effects(sweep(subject, items, us, seed=seed, cache=cache, progress=progress, desc="knockout"), meta, 1)
    return knockout_table(rows, n_boot=n_boot), rows


def concept_kl(subject: Subject, st: Study, concept: str, alpha: float, seed: int = 0, cache=None) -> pd.DataFrame:
    """Off-target effect of a concept direction: mean KL(clean ‖ steered) on every family's held-out prompts."""
    from .sweep import sweep

    b = st.best[(st.best["family"] == concept) & (st.best["sign"] == np.sign(alpha))].iloc[0]
    us, meta = units(st.dirs[concept], [int(b.layer)], [alpha])
    items = [it for f, its in st.items.items() if st.sign[f] == 1 for it in its]
    df = effects(sweep(subject, items, us, seed=seed, cache=cache, progress=False), meta, 1)
    return df.groupby("family").agg(kl=("kl", "mean"), ld_drop=("ld_drop", "mean")).reset_index()
