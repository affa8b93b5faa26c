"""Where an adapter goes: a strategy's layers, the controls drawn against the atlas target, the PEFT config.

Strategies (`select_layers`): ``atlas`` (the layers the atlas ranks highest for the family), ``atlas-late`` (the
same, restricted to the later half of the network), ``random`` (random layers; the seed is the draw),
``all-linear`` (every layer), ``none`` (no adapter: the base model's row). The atlas ranks layers by its primary
metric (`ld_frac`); a family the model does not solve has no such scores, so atlas targeting is not testable for
it and the layers come from the KL map instead, labelled ``basis="kl"`` (disruption-targeted). Controls
(`control_target`): ``random`` (`matched_target`: random layers whose trainable-parameter count matches the atlas
target's within 5%; hybrid models have layers of different sizes), ``depth-matched`` (`depth_matched`) and
``wrong-family`` (`wrong_family`). `lora_config` turns a `Target` into a PEFT `LoraConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig

from ...model.subject import Subject

STRATEGIES = ("atlas", "atlas-late", "random", "all-linear")  # layer rules of `select_layers`
CONTROLS = ("random", "depth-matched", "wrong-family")  # drawn against the atlas target; "the atlas wins" needs all
HEADLINE = ("atlas", "atlas-late", *CONTROLS, "all-linear")
ALL_LINEAR = ("q", "k", "v", "o", "gate", "up", "down")
MODULE_SETS: dict[str, tuple[str, ...]] = {
    "o": ("o",), "qkv": ("q", "k", "v"), "gate_up_down": ("gate", "up", "down"),
    "attn": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": ALL_LINEAR,
}
PARAM_TOL = 0.05  # random-matched: trainable parameters within 5% of the atlas target's


@dataclass(frozen=True)
class Target:
    """Where an adapter goes: strategy, layers (None = all), canonical modules, rank, alpha, and the atlas
    metric that chose the layers (`basis`: "" unless an atlas strategy; "kl" = disruption-targeted)."""

    strategy: str
    layers: tuple[int, ...] | None
    modules: tuple[str, ...] = ALL_LINEAR
    r: int = 8
    alpha: float = 16.0
    basis: str = ""

    @property
    def tag(self) -> str:
        lay = "all" if self.layers is None else "-".join(map(str, self.layers))
        return f"{self.strategy}_L{lay}_{'+'.join(self.modules)}_r{self.r}"


def primary_metric(atlas) -> str:
    """The metric an atlas ranks by (`ld_frac` for an `Atlas`); "score" for plain Series / dict scores."""
    return getattr(atlas, "primary_metric", "score")


def layer_scores(atlas, family: str, component: str = "block", method: str = "zero",
                 metric: str | None = None) -> pd.Series:
    """Per-layer importance from an `Atlas` (`.layer_scores` under `metric`, default its primary one), a Series,
    or a {family: Series} dict. NaN layers are dropped; a family the atlas does not count as solved under
    `ld_frac` (not in `testable_families`) has no usable scores: an empty Series."""
    if hasattr(atlas, "layer_scores"):
        metric = metric or primary_metric(atlas)
        s = atlas.layer_scores(family, component=component, method=method, metric=metric)
        if metric == "ld_frac" and family not in getattr(atlas, "testable_families", [family]):
            s = s.iloc[:0]
    elif isinstance(atlas, pd.Series):
        s = atlas
    elif isinstance(atlas, dict):
        s = pd.Series(atlas[family]) if family in atlas else pd.Series(atlas)
    else:
        raise TypeError(f"cannot read layer scores from {type(atlas).__name__}: pass an Atlas, a Series or a dict")
    return s.astype(float).dropna().sort_index().rename_axis("layer")


def atlas_scores(atlas, family: str, component: str = "block", method: str = "zero", metric: str | None = None,
                 fallback: str | None = "kl") -> tuple[pd.Series, str]:
    """(scores, basis): the layer scores that target a family and the metric they come from. The atlas's
    `metric` where the family has usable scores; else the `fallback` metric (KL: disruption-targeted, which
    the basis says); a ValueError ("not testable here") when neither has any."""
    metric = metric or primary_metric(atlas)
    s = layer_scores(atlas, family, component, method, metric)
    if len(s) or fallback is None or not hasattr(atlas, "layer_scores"):
        if not len(s):
            raise ValueError(f"atlas targeting is not testable here: no usable {metric} scores for {family}")
        return s, metric
    s = layer_scores(atlas, family, component, method, fallback)
    if not len(s):
        raise ValueError(f"no usable {metric} or {fallback} scores for {family}")
    return s, fallback


def why_unscored(atlas, family: str, metric: str | None = None) -> str:
    """One line on why a family has no usable atlas scores (its flip counts, where the atlas has them)."""
    metric = metric or primary_metric(atlas)
    sol = getattr(atlas, "solved", None)
    row = sol[sol["family"] == family] if isinstance(sol, pd.DataFrame) and len(sol) else pd.DataFrame()
    got = (f"the model flips {int(row['n_flipped'].iloc[0])}/{int(row['n_items'].iloc[0])} {family} items"
           if len(row) else f"the model is not counted as solving {family}")
    return f"{got} (not testable under the flip gate), so the {metric} atlas cannot rank its layers"


def targeting(atlas, families: Sequence[str], arch, k: int, metric: str | None = None,
              fallback: str | None = "kl", pool: Sequence[str] | None = None) -> pd.DataFrame:
    """Per family: the metric the atlas targets by, what targeted it here (basis), the atlas and atlas-late
    layers, why the atlas metric could not (empty when it could), and the wrong-family control drawn from `pool`
    (default: `families`; see `wrong_family`) with the number of candidates it was the least correlated of
    (`wrong_of`). Index: family."""
    metric = metric or primary_metric(atlas)
    rows = []
    for f in families:
        scores, basis = atlas_scores(atlas, f, metric=metric, fallback=fallback)
        fell = basis != metric
        wrong = wrong_family(atlas, f, pool or families, basis)
        rows.append({"family": f, "metric": metric, "basis": basis,
                     "targeting": f"disruption-targeted ({basis} fallback)" if fell else f"atlas-targeted ({basis})",
                     **{s: target(atlas, f, arch, k, s, metric=metric, fallback=fallback).layers
                        for s in ("atlas", "atlas-late")},
                     "wrong_family": wrong[0] if wrong else "", "wrong_rho": wrong[1] if wrong else np.nan,
                     "wrong_of": sum(g != f and len(layer_scores(atlas, g, metric=basis)) > 0 for g in pool or families),
                     "wrong-family": select_layers(wrong[2], arch.n_layers, k, "atlas") if wrong else None,
                     "why": why_unscored(atlas, f, metric) if fell else ""})
    return pd.DataFrame(rows).set_index("family")


def wrong_family(atlas, family: str, pool: Sequence[str], basis: str) -> tuple[str, float, pd.Series] | None:
    """(family, Spearman rho with the target's map, its scores): the other family of `pool` with usable `basis`
    scores (under ld_frac: one the model solves) whose layer map correlates least with `family`'s (ties: pool
    order); None when no other family has such scores (the wrong-family control is then missing)."""
    own = layer_scores(atlas, family, metric=basis)
    best = None
    for g in pool:
        if g == family or not len(s := layer_scores(atlas, g, metric=basis)):
            continue
        both = own.index.intersection(s.index)
        rho = float(own[both].corr(s[both], method="spearman")) if len(both) > 1 else np.nan
        rho = rho if np.isfinite(rho) else 0.0  # a constant map carries no order: uncorrelated
        if best is None or rho < best[1]:
            best = (g, rho, s)
    return best


def select_layers(scores: pd.Series | None, n_layers: int, k: int, strategy: str, seed: int = 0) -> tuple[int, ...] | None:
    """Layers to adapt for a strategy; None means every layer."""
    if strategy == "all-linear":
        return None
    if not 0 < k <= n_layers:
        raise ValueError(f"k={k} layers cannot be chosen from a {n_layers}-layer model")
    if strategy == "random":
        rng = np.random.default_rng([seed, 7919])
        return tuple(sorted(int(i) for i in rng.choice(n_layers, size=k, replace=False)))
    if strategy in ("atlas", "atlas-late"):
        if scores is None:
            raise ValueError(f"strategy {strategy!r} needs atlas layer scores")
        s = scores.dropna()
        if strategy == "atlas-late":
            s = s[s.index >= n_layers // 2]
        # ties broken toward the later layer (stable and deterministic)
        ranked = sorted(s.index, key=lambda i: (-s[i], -int(i)))
        if len(ranked) < k:
            raise ValueError(f"{strategy}: only {len(ranked)} scored layers, {k} requested")
        return tuple(sorted(int(i) for i in ranked[:k]))
    raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def target(atlas, family: str, arch, k: int, strategy: str = "atlas", modules: Sequence[str] | str = ALL_LINEAR,
           seed: int = 0, r: int = 8, alpha: float | None = None, component: str = "block", method: str = "zero",
           metric: str | None = None, fallback: str | None = "kl") -> Target:
    """The `Target` a strategy picks (atlas may be None for random / all-linear); see `atlas_scores`."""
    mods = MODULE_SETS[modules] if isinstance(modules, str) else tuple(modules)
    scores, basis = (atlas_scores(atlas, family, component, method, metric, fallback) if strategy.startswith("atlas")
                     else (None, ""))
    if strategy == "all-linear":
        mods = ALL_LINEAR
    layers = select_layers(scores, arch.n_layers, k, strategy, seed)
    return Target(strategy, layers, mods, r, float(alpha if alpha is not None else 2 * r), basis)


def layer_params(model: torch.nn.Module, arch, modules: Sequence[str], r: int) -> pd.Series:
    """Trainable LoRA parameters per layer, r·(in + out) summed over the targeted modules the layer has
    (a hybrid model's convolution layers lack the attention projections). Index: every layer."""
    names = target_names(arch, modules)
    pat = re.compile(rf"{re.escape(arch.paths.layers)}\.(\d+)\.(.+)$")
    out = dict.fromkeys(range(arch.n_layers), 0)
    for name, mod in model.named_modules():
        if (m := pat.search(name)) and m.group(2) in names and getattr(mod, "weight", None) is not None:
            out[int(m.group(1))] += r * sum(mod.weight.shape)
    return pd.Series(out, name="params")


def random_matched(counts: pd.Series, total: int, k: int, seed: int, exclude: tuple[int, ...] | None = None,
                   tol: float = PARAM_TOL, tries: int = 2000) -> tuple[int, ...] | None:
    """Random layers whose parameter count (`counts` per layer) is within `tol` of `total`, other than the
    `exclude` set (the atlas's own: a control equal to it compares a run with itself). k layers when that
    works (the first draw is `select_layers`' random draw), else the nearest number of layers; None when no
    draw matches."""
    rng = np.random.default_rng([seed, 7919])
    n = len(counts)
    c = counts.sort_index().to_numpy()
    for m in sorted(range(1, n + 1), key=lambda m: (abs(m - k), m)):
        for _ in range(tries):
            draw = tuple(sorted(int(i) for i in rng.choice(n, size=m, replace=False)))
            if draw != exclude and abs(c[list(draw)].sum() - total) <= tol * total:
                return draw
    return None


def matched_target(subject: Subject, ref: Target, seed: int, tol: float = PARAM_TOL) -> Target:
    """The random-matched control of an atlas target: random layers with its trainable-parameter count within
    `tol` (see `random_matched`); when none exists, as many random layers, not the target's own (`compare`
    then flags the row as unmatched)."""
    counts = layer_params(subject.model, subject.arch, ref.modules, ref.r)
    total = int(counts[list(ref.layers)].sum()) if ref.layers is not None else int(counts.sum())
    k = len(ref.layers) if ref.layers is not None else subject.arch.n_layers
    layers = (random_matched(counts, total, k, seed, ref.layers, tol)
              or random_matched(counts, total, k, seed, ref.layers, tol=np.inf, tries=100)  # k layers, not ref's
              or select_layers(None, subject.arch.n_layers, k, "random", seed))
    return Target("random", layers, ref.modules, ref.r, ref.alpha)


def depth_bins(n_layers: int) -> np.ndarray:
    """Depth bin of each layer: consecutive runs of ceil(n_layers / 10) layers, at least 2 (tenths of depth)."""
    return np.arange(n_layers) // max(2, -(-n_layers // 10))


def depth_matched(counts: pd.Series, ref: Sequence[int], seed: int) -> tuple[int, ...]:
    """The depth-matched control of an atlas layer set: for each atlas layer, a random layer of its depth bin
    (`depth_bins`) that is neither an atlas layer nor already drawn and has its size (`counts` per layer: hybrid
    layers differ); failing that, the nearest such layer of its size, then of its bin, then the nearest free one."""
    rng = np.random.default_rng([seed, 7920])
    c = counts.sort_index().to_numpy()
    bins, taken, out = depth_bins(len(c)), set(ref), []
    for i in sorted(ref):
        free = [j for j in range(len(c)) if j not in taken]
        if not free:
            raise ValueError(f"no layer is left for a depth-matched control of {tuple(ref)}")
        size = [j for j in free if c[j] == c[i]]
        near = [j for j in size or free if abs(j - i) == min(abs(x - i) for x in size or free)]
        pick = [j for j in size if bins[j] == bins[i]] or (near if size else [j for j in free if bins[j] == bins[i]] or near)
        out.append(int(rng.choice(pick)))
        taken.add(out[-1])
    return tuple(sorted(out))


def control_target(atlas, subject: Subject, family: str, strategy: str, seed: int, k: int, r: int = 8,
                   pool: Sequence[str] | None = None) -> Target | None:
    """A headline strategy's target for one family and seed. The controls are drawn against the atlas target:
    ``random`` and ``depth-matched`` per seed and parameter-matched (`matched_target`, `depth_matched`),
    ``wrong-family`` the atlas rule on another family's map (`wrong_family`; None when there is none)."""
    if strategy not in CONTROLS or (strategy == "random" and atlas is None):
        return target(atlas, family, subject.arch, k, strategy, ALL_LINEAR, seed=seed, r=r)
    ref = target(atlas, family, subject.arch, k, "atlas", ALL_LINEAR, r=r)
    if strategy == "random":
        return matched_target(subject, ref, seed)
    if strategy == "depth-matched":
        counts = layer_params(subject.model, subject.arch, ref.modules, ref.r)
        return replace(ref, strategy=strategy, basis="", layers=depth_matched(counts, ref.layers, seed))
    wrong = wrong_family(atlas, family, pool or [family], ref.basis)
    return None if wrong is None else replace(ref, strategy=strategy,
                                              layers=select_layers(wrong[2], subject.arch.n_layers, k, "atlas"))


def target_names(arch, modules: Sequence[str]) -> list[str]:
    """PEFT target names (paths inside a layer, matched as suffixes) for canonical module names.

    GPT-2 fuses q, k, v into `attn.c_attn`; its two `c_proj`s are told apart by their parent."""
    table = arch.paths.modules
    out: list[str] = []
    for m in modules:
        name = m if m in table else ("qkv" if m in ("q", "k", "v") and "qkv" in table else None)
        if name is None:
            continue  # e.g. GPT-2 has no gate projection
        if table[name] not in out:
            out.append(table[name])
    if not out:
        raise ValueError(f"none of {list(modules)} exists in {arch.family}; known: {', '.join(table)}")
    return out


def lora_config(t: Target, arch) -> LoraConfig:
    """PEFT `LoraConfig` for a target on an architecture."""
    return LoraConfig(
        r=t.r, lora_alpha=t.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=target_names(arch, t.modules),
        layers_to_transform=list(t.layers) if t.layers is not None else None,
        layers_pattern=arch.paths.layers.split(".")[-1] if t.layers is not None else None,
        fan_in_fan_out=arch.family == "gpt2",
    )


def to_lora_config(atlas, family: str, arch, k: int, strategy: str = "atlas",
                   modules: Sequence[str] | str = ALL_LINEAR, seed: int = 0, r: int = 8, **kw) -> LoraConfig:
    """One call: atlas (+ family, number of layers, modules, strategy) -> PEFT LoraConfig."""
    return lora_config(target(atlas, family, arch, k, strategy, modules, seed, r, **kw), arch)


def score_table(atlas, families: Sequence[str], arch, k: int) -> pd.DataFrame:
    """Tidy (layer, score, family, basis) rows: the layer scores that target each family (`atlas_scores`), with the
    basis `targeting` reports for it."""
    bases = targeting(atlas, families, arch, k)["basis"]
    return pd.concat([atlas_scores(atlas, f)[0].rename("score").reset_index().assign(family=f, basis=b)
                      for f, b in bases.items()])
