"""From atlas to LoRA: target an adapter by the atlas, train it, evaluate it, and take it apart.

PEFT does the adapters (`LoraConfig(target_modules=..., layers_to_transform=...)`, `get_peft_model`,
per-module `scaling` for adapter-only ablation); the model's own loss trains them. This module adds:

- `lora_config`: one call from an atlas (+ family, number of layers, modules, strategy) to a `LoraConfig`.
  Strategies: ``atlas`` (the layers the atlas ranks highest for the family), ``atlas-late`` (the same,
  restricted to the later half of the network), ``random`` (random layers; the seed is the draw),
  ``all-linear`` (every layer), ``none`` (no adapter: the base model's row). The atlas ranks layers by its
  primary metric (`ld_frac`); a family the model does not solve has no such scores, so atlas targeting is
  not testable for it and the layers come from the KL map instead, labelled ``basis="kl"``
  (disruption-targeted) on the target, every row and every claim. `random_matched` draws random layers
  whose trainable-parameter count matches the atlas target's within 5% (hybrid models have layers of
  different sizes); `compare` flags a comparison where no draw can. Two more controls (chapter 05's verdict):
  ``depth-matched`` (`depth_matched`: per atlas layer a random other layer from the same depth bin, same size) and
  ``wrong-family`` (`wrong_family`: the top-k layers of the family whose map correlates least with the target's).
- `train`: deterministic given the seed (right-padded batches, loss on completion tokens only, constant
  learning rate, so the step-k checkpoint of a long run equals a k-step run); adapters are cached under
  ``results/lora/`` keyed by (model fingerprint, family, target, training config, data), written to a
  temporary folder and renamed, so a re-executed chapter reuses them and a killed run leaves no half file.
- `task_data`: train / validation / eval examples (validation: the end of the training split, disjoint from
  train; eval: the held-out split) with limits read off the data: `max_len` fits the longest tokenized example
  (none is truncated) and each family's generation cap the longest reference completion + a margin (a perfect
  model scores exact match 1).
- learning rate per strategy (Biderman et al. 2024: at short budgets rankings flip with it): `lr_runs` trains
  every strategy at each rate of a log grid, `run_grid(score="val")` scores validation loss only, `choose_lr`
  takes the argmin, `headline_runs(lr=...)` trains each strategy at its own rate (the search seed's run is reused).
- `evaluate`: eval loss, exact match of greedy completions (`atlas_core.tasks.exact_match`) and drift,
  the mean KL(base || adapted) of the next token at the last prompt position on other families' prompts.
- surgery: `update_norms` (‖B·A‖·scaling per layer and module), `layer_ablation` (disable the adapter in
  one layer at a time), `truncated` (SVD of B·A to a lower rank), `lock_in` (effect maps over checkpoints),
  `adapted_subject` (merged copy for an atlas diff), and `attach`, whose size check turns an adapter that
  does not fit a model into a one-line ValueError naming both shapes.
- claims: `compare` (atlas minus each other strategy, paired by seed, exact sign-flip test over seeds), `verdict`
  ("the atlas wins": it beats every strategy compared, an intersection-union test, Holm across families),
  `norm_effect` (per-layer ‖B·A‖ vs adapter-only ablation effect, exact permutation test) and `lora_claims`,
  whose statements and evidence come from those tables, `choose_lr` and `targeting` only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..engine.batch import position_ids
from ..evidence.claims import Claim
from ..evidence.stats import holm, sign_flip_p
from ..model.subject import Subject
from ..paths import results_dir

CACHE_VERSION = 2
STRATEGIES = ("atlas", "atlas-late", "random", "all-linear")  # layer rules of `select_layers`
CONTROLS = ("random", "depth-matched", "wrong-family")  # drawn against the atlas target; "the atlas wins" needs all
HEADLINE = ("atlas", "atlas-late", *CONTROLS, "all-linear")
MIN_SEEDS = 5  # "the atlas wins" is not graded below this many paired seeds
MIN_LRS = 4  # a learning-rate search over fewer rates caps the verdict
ALL_LINEAR = ("q", "k", "v", "o", "gate", "up", "down")
MODULE_SETS: dict[str, tuple[str, ...]] = {
    "o": ("o",), "qkv": ("q", "k", "v"), "gate_up_down": ("gate", "up", "down"),
    "attn": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": ALL_LINEAR,
}
OPTIMIZERS = ("adamw", "adafactor", "lion")
LION_LR_FACTOR = 1 / 3  # Lion wants a 3-10x smaller step than AdamW (Chen et al. 2023)
PARAM_TOL = 0.05  # random-matched: trainable parameters within 5% of the atlas target's
GEN_MARGIN = 2  # generation cap = longest reference completion (tokens, with EOS) + this


# --------------------------------------------------------------------------- targeting
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
    (default: `families`; see `wrong_family`). Index: family."""
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


def lora_config(t: Target, arch):
    """PEFT `LoraConfig` for a target on an architecture."""
    from peft import LoraConfig

    return LoraConfig(
        r=t.r, lora_alpha=t.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=target_names(arch, t.modules),
        layers_to_transform=list(t.layers) if t.layers is not None else None,
        layers_pattern=arch.paths.layers.split(".")[-1] if t.layers is not None else None,
        fan_in_fan_out=arch.family == "gpt2",
    )


def to_lora_config(atlas, family: str, arch, k: int, strategy: str = "atlas", modules=ALL_LINEAR, seed: int = 0,
                   r: int = 8, **kw):
    """One call: atlas (+ family, number of layers, modules, strategy) -> PEFT LoraConfig."""
    return lora_config(target(atlas, family, arch, k, strategy, modules, seed, r, **kw), arch)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainConfig:
    steps: int = 30
    lr: float = 2e-3
    batch: int = 8
    optimizer: str = "adamw"
    seed: int = 0
    max_len: int | None = None  # None: no truncation (`task_data` derives one that truncates nothing)


def train_tokenizer(subject: Subject):
    """A right-padded copy of the subject's tokenizer (the subject's own pads left, for traces)."""
    tok = copy.copy(subject.tokenizer)
    tok.padding_side = "right"
    return tok


def _encode_pair(tok, ex: dict, max_len: int | None) -> tuple[list[int], list[int]]:
    p = tok(ex["prompt"])["input_ids"]
    c = tok(ex["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (p + c)[:max_len]
    labels = ([-100] * len(p) + c)[:max_len]
    return ids, labels


def collate(tok, examples: Sequence[dict], max_len: int | None) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels -100 on prompt and padding (the model's own loss then ignores them)."""
    pairs = [_encode_pair(tok, ex, max_len) for ex in examples]
    n = max(len(i) for i, _ in pairs)
    pad = tok.pad_token_id
    ids = torch.tensor([i + [pad] * (n - len(i)) for i, _ in pairs])
    labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in pairs])
    mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i, _ in pairs])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _data_hash(examples: Sequence[dict]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for ex in examples:
        h.update(json.dumps([ex["prompt"], ex["completion"]]).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- attach / detach
@contextmanager
def _wrapped(subject: Subject, make: Callable) -> Iterator:
    """Yield a PeftModel over subject.model; always unload afterwards (base weights untouched)."""
    grads = {n: p.requires_grad for n, p in subject.model.named_parameters()}
    pm = make(subject.model)
    try:
        yield pm
    finally:
        pm.unload()
        if hasattr(subject.model, "peft_config"):
            del subject.model.peft_config
        for n, p in subject.model.named_parameters():
            p.requires_grad_(grads.get(n, False))
        subject.model.eval()


def adapter_meta(adapter_dir: str | Path) -> dict:
    """The adapter's `atlas_meta.json`; a checkpoint (`ckpt-N`) shares its adapter's; {} when there is none."""
    adapter_dir = Path(adapter_dir)
    meta = _read_json(adapter_dir / "atlas_meta.json")
    if not meta and adapter_dir.name.startswith("ckpt-"):
        meta = _read_json(adapter_dir.parent / "atlas_meta.json")
    return meta


def check_fits(adapter_dir: str | Path, subject: Subject, allow_unverified: bool = False) -> None:
    """Raise a one-line ValueError if the adapter's LoRA shapes do not fit the model's modules, or if it was trained
    on another model (its recorded base fingerprint differs). An adapter that records no base fingerprint (no
    `atlas_meta.json`: trained elsewhere) is refused unless `allow_unverified` (then only shapes are checked)."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    meta = adapter_meta(adapter_dir)
    origin = f"{meta.get('model', '?')} ({str(meta.get('fingerprint', '?'))[:12]})"
    mods = dict(subject.model.named_modules())
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        for key in sorted(f.keys()):
            m = re.match(r"(?:base_model\.model\.)?(.*)\.lora_([AB])\.weight$", key)
            if not m:
                continue
            path, ab = m.groups()
            shape = tuple(f.get_slice(key).get_shape())
            base = mods.get(path)
            if base is None:
                raise ValueError(f"adapter {adapter_dir.name} trained on {origin} targets {path} (lora_{ab} {shape}), "
                                 f"which model {subject.name} ({subject.fingerprint[:12]}) does not have "
                                 f"({subject.arch.n_layers} layers, d_model={subject.arch.d_model})")
            w = base.weight
            out_f, in_f = (w.shape[1], w.shape[0]) if subject.arch.family == "gpt2" else (w.shape[0], w.shape[1])
            need = in_f if ab == "A" else out_f
            got = shape[1] if ab == "A" else shape[0]
            if need != got:
                raise ValueError(f"adapter {adapter_dir.name} trained on {origin} has {path}.lora_{ab} of shape "
                                 f"{list(shape)}, but model {subject.name} ({subject.fingerprint[:12]}) has {path} of "
                                 f"shape [out={out_f}, in={in_f}]")
    if not meta.get("fingerprint"):
        if not allow_unverified:
            raise ValueError(f"adapter {adapter_dir} records no base-model fingerprint (no atlas_meta.json), so it cannot "
                             f"be checked against model {subject.name} ({subject.fingerprint[:12]}); pass "
                             "allow_unverified=True if you know it was trained on this model")
    elif meta["fingerprint"] != subject.fingerprint:
        raise ValueError(f"adapter {adapter_dir.name} was trained on {origin}, not on model {subject.name} "
                         f"({subject.fingerprint[:12]}): an adapter only means something on its own base model")


@contextmanager
def attach(subject: Subject, adapter: Adapter | str | Path, allow_unverified: bool = False) -> Iterator:
    """The subject with a saved adapter loaded (PeftModel); raises a one-line ValueError if it does not fit or was
    trained on another model (`check_fits`; `allow_unverified` accepts an adapter without atlas metadata)."""
    from peft import PeftModel

    path = adapter.path if isinstance(adapter, Adapter) else Path(adapter)
    check_fits(path, subject, allow_unverified)

    def make(model):
        try:
            return PeftModel.from_pretrained(model, str(path))
        except (RuntimeError, ValueError) as err:  # PEFT/torch size or target mismatch: say it in one line
            first = str(err).strip().splitlines()
            raise ValueError(f"adapter {path.name} does not fit model {subject.name}: "
                             f"{' '.join(s.strip() for s in first[:3])[:400]}") from None

    with _wrapped(subject, make) as pm:
        pm.eval()
        yield pm


# --------------------------------------------------------------------------- training
@dataclass
class Adapter:
    """A trained adapter on disk plus what training reported."""

    path: Path
    target: Target
    train: TrainConfig
    family: str
    n_trainable: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checkpoints: dict[int, Path] = field(default_factory=dict)
    cached: bool = False

    @property
    def final_loss(self) -> float:
        """Mean train loss over the last quarter of the steps (one step is one noisy batch)."""
        if not self.losses:
            return float("nan")
        return float(np.mean(self.losses[-max(1, len(self.losses) // 4):]))


def _optimizer(name: str, params, lr: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    if name == "lion":
        from lion_pytorch import Lion

        return Lion(params, lr=lr * LION_LR_FACTOR, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def _key(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, default=str, indent=1)
    os.replace(tmp, path)


def adapter_dir(subject: Subject, family: str, t: Target, tc: TrainConfig, data_hash: str, root: Path | None = None) -> Path:
    key = _key(CACHE_VERSION, subject.fingerprint, family, asdict(t), asdict(tc), data_hash)
    return Path(root or results_dir() / "lora") / subject.fingerprint[:12] / family / f"{t.strategy}-s{tc.seed}-{key}"


def _load_cached(path: Path, t: Target, tc: TrainConfig, family: str) -> Adapter | None:
    meta = _read_json(path / "atlas_meta.json")
    if not meta or not (path / "adapter_model.safetensors").exists():
        return None
    ck = {int(s): path / f"ckpt-{s}" for s in meta.get("checkpoints", []) if (path / f"ckpt-{s}").exists()}
    return Adapter(path, t, tc, family, meta["n_trainable"], meta["losses"], meta["seconds"], ck, cached=True)


def train(subject: Subject, family: str, examples: Sequence[dict], t: Target, tc: TrainConfig,
          checkpoints: Sequence[int] = (), root: Path | None = None, progress: bool = False) -> Adapter:
    """Train (or reuse from the cache) a LoRA adapter on (prompt, completion) examples."""
    from peft import get_peft_model

    path = adapter_dir(subject, family, t, tc, _data_hash(examples), root)
    if (hit := _load_cached(path, t, tc, family)) is not None and set(checkpoints) <= set(hit.checkpoints):
        return hit
    if subject.remote is True:
        raise ValueError(f"training a LoRA needs {subject.name}'s weights here; NDIF runs traces, not training: "
                         "run this chapter without remote")
    tok = train_tokenizer(subject)
    torch.manual_seed(tc.seed)  # LoRA A init
    order = np.random.default_rng(tc.seed).permutation(len(examples))
    t0 = time.perf_counter()
    losses: list[float] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        with _wrapped(subject, lambda m: get_peft_model(m, lora_config(t, subject.arch))) as pm:
            params = [p for p in pm.parameters() if p.requires_grad]
            n_trainable = sum(p.numel() for p in params)
            opt = _optimizer(tc.optimizer, params, tc.lr)
            pm.train()
            for step in range(tc.steps + 1):
                if step in checkpoints:
                    pm.save_pretrained(str(tmp / f"ckpt-{step}"))
                if step == tc.steps:
                    break
                idx = [order[(step * tc.batch + j) % len(order)] for j in range(tc.batch)]
                batch = {k: v.to(subject.device) for k, v in collate(tok, [examples[i] for i in idx], tc.max_len).items()}
                loss = pm(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                if progress and (step % 10 == 0 or step == tc.steps - 1):
                    print(f"  [{t.tag} seed {tc.seed}] step {step} loss {losses[-1]:.3f}", flush=True)
            pm.eval()
            pm.save_pretrained(str(tmp))
        secs = time.perf_counter() - t0
        meta = {"model": subject.name, "fingerprint": subject.fingerprint, "family": family, "target": asdict(t),
                "train": asdict(tc), "n_trainable": n_trainable, "losses": losses, "seconds": secs,
                "checkpoints": sorted(checkpoints), "data_hash": _data_hash(examples)}
        _write_json_atomic(tmp / "atlas_meta.json", meta)
        done = _load_cached(path, t, tc, family)  # another process may have finished the same run first
        if done is None or not set(checkpoints) <= set(done.checkpoints):
            shutil.rmtree(path, ignore_errors=True)  # (a stale partial copy would be incomplete: replace it)
            os.replace(tmp, path)  # appears complete or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return replace(_load_cached(path, t, tc, family), cached=False)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def completion_loss(model, tok, examples: Sequence[dict], max_len: int | None = None, batch: int = 16,
                    per_example: bool = False) -> float | np.ndarray:
    """Mean next-token loss over completion tokens (token-weighted), or one mean per example."""
    tot, n, each = 0.0, 0, []
    for i in range(0, len(examples), batch):
        b = collate(tok, examples[i:i + batch], max_len)
        dev = next(model.parameters()).device
        logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits.float()
        lab = b["labels"][:, 1:].to(dev)
        lp = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), lab.clamp_min(0), reduction="none")
        m = (lab != -100).float()
        tot += float((lp * m).sum())
        n += int(m.sum())
        each.extend(((lp * m).sum(1) / m.sum(1).clamp_min(1)).tolist())
    return np.asarray(each) if per_example else tot / max(n, 1)


@torch.no_grad()
def generate(model, subject: Subject, prompts: Sequence[str], max_new_tokens: int, batch: int = 16) -> list[str]:
    """Greedy completions, batched with left padding."""
    tok = subject.tokenizer
    out: list[str] = []
    for i in range(0, len(prompts), batch):
        enc = subject.encode(list(prompts[i:i + batch]))
        g = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
        out.extend(tok.batch_decode(g[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


@torch.no_grad()
def last_logprobs(model, subject: Subject, prompts: Sequence[str], batch: int = 16) -> torch.Tensor:
    """Log-probabilities of the next token at the last prompt position (left padding; positions counted from
    each row's first real token, so an absolute-position model sees the same positions as unpadded)."""
    out = []
    for i in range(0, len(prompts), batch):
        enc = subject.encode(list(prompts[i:i + batch]))
        logits = model(**enc, position_ids=position_ids(enc["attention_mask"]), logits_to_keep=1).logits
        out.append(torch.log_softmax(logits[:, -1].float(), -1))
    return torch.cat(out)


def kl_rows(base_lp: torch.Tensor, lp: torch.Tensor) -> np.ndarray:
    """KL(base || adapted) per row."""
    return (base_lp.exp() * (base_lp - lp)).sum(-1).clamp_min(0).double().numpy()


@dataclass
class EvalSet:
    """What an evaluation runs on: eval examples of the trained family, drift prompts of the others; `val`: the
    validation examples that choose hyperparameters (`val_loss`), never the eval ones."""

    family: str
    examples: list[dict]
    drift_prompts: list[str]
    exact_match: Callable[[str, dict], bool]
    max_new_tokens: int
    max_len: int | None = None
    val: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return _key(_data_hash(self.examples), self.drift_prompts, self.max_new_tokens, self.max_len)


_BASE_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def evaluate(subject: Subject, ev: EvalSet, adapter: Adapter | None = None) -> dict:
    """eval loss, exact match, drift (mean KL base||adapted on other families); cached beside the adapter."""
    cache = (adapter.path / f"eval-{ev.key}.json") if adapter is not None else None
    if cache is not None and (hit := _read_json(cache)):
        return hit
    ck = (subject.fingerprint, _key(ev.drift_prompts))
    if ck not in _BASE_CACHE:
        _BASE_CACHE[ck] = last_logprobs(subject.model, subject, ev.drift_prompts)
    t0 = time.perf_counter()

    def run(model) -> dict:
        texts = generate(model, subject, [e["prompt"] for e in ev.examples], ev.max_new_tokens)
        em = [bool(ev.exact_match(t, e)) for t, e in zip(texts, ev.examples, strict=True)]
        kl = kl_rows(_BASE_CACHE[ck], last_logprobs(model, subject, ev.drift_prompts))
        return {"eval_loss": completion_loss(model, train_tokenizer(subject), ev.examples, ev.max_len),
                "exact_match": float(np.mean(em)), "drift": float(kl.mean()), "n_eval": len(em),
                "n_drift": len(kl), "samples": texts[:3]}

    if adapter is None:
        res = run(subject.model)
    else:
        with attach(subject, adapter) as pm:
            res = run(pm)
    res["eval_seconds"] = time.perf_counter() - t0
    if cache is not None:
        _write_json_atomic(cache, res)
    return res


def val_loss(subject: Subject, ev: EvalSet, adapter: Adapter) -> float:
    """Completion loss on the validation examples (`ev.val`, not the eval ones); cached beside the adapter."""
    if not ev.val:
        raise ValueError(f"{ev.family}: no validation examples to choose on")
    cache = adapter.path / f"val-{_key(_data_hash(ev.val), ev.max_len)}.json"
    if (hit := _read_json(cache)):
        return hit["val_loss"]
    with attach(subject, adapter) as pm:
        loss = completion_loss(pm, train_tokenizer(subject), ev.val, ev.max_len)
    _write_json_atomic(cache, {"val_loss": loss, "n_val": len(ev.val)})
    return loss


# --------------------------------------------------------------------------- surgery
def _lora_modules(pm, arch) -> Iterator[tuple[int, str, torch.nn.Module]]:
    """(layer, canonical module, LoraLayer) for every adapted module."""
    from peft.tuners.lora import LoraLayer

    rev = {v: k for k, v in arch.paths.modules.items()}
    pat = re.compile(rf"{re.escape(arch.paths.layers)}\.(\d+)\.(.+)$")
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and (m := pat.search(name)):
            yield int(m.group(1)), rev.get(m.group(2), m.group(2)), mod


def update_norms(pm, arch, adapter_name: str = "default") -> pd.DataFrame:
    """Frobenius norm of each LoRA update ΔW = B·A·scaling, per (layer, module)."""
    rows = []
    for layer, mod, lm in _lora_modules(pm, arch):
        a, b = lm.lora_A[adapter_name].weight, lm.lora_B[adapter_name].weight
        delta = (b.double() @ a.double()) * lm.scaling[adapter_name]
        rows.append({"layer": layer, "module": mod, "norm": float(delta.norm())})
    return pd.DataFrame(rows, columns=["layer", "module", "norm"])


@contextmanager
def scaled(pm, arch, layers: Sequence[int] | None = None, factor: float = 0.0, adapter_name: str = "default"):
    """Temporarily multiply the adapter's scaling in some layers (None = all) by factor (0 = disabled there)."""
    saved = []
    for layer, _, lm in _lora_modules(pm, arch):
        if layers is None or layer in layers:
            saved.append((lm, lm.scaling[adapter_name]))
            lm.scaling[adapter_name] = lm.scaling[adapter_name] * factor
    try:
        yield pm
    finally:
        for lm, s in saved:
            lm.scaling[adapter_name] = s


def layer_ablation(pm, subject: Subject, examples: Sequence[dict], max_len: int | None = None) -> pd.DataFrame:
    """Adapter-only ablation: eval-loss increase when the adapter is disabled in one layer at a time.

    Rows: every adapted layer, plus 'all' (adapter off everywhere, i.e. the base model)."""
    tok = train_tokenizer(subject)
    full = completion_loss(pm, tok, examples, max_len)
    layers = sorted({lay for lay, _, _ in _lora_modules(pm, subject.arch)})
    rows = []
    for lay in layers:
        with scaled(pm, subject.arch, [lay]):
            rows.append({"layer": lay, "effect": completion_loss(pm, tok, examples, max_len) - full})
    with pm.disable_adapter():
        rows.append({"layer": "all", "effect": completion_loss(pm, tok, examples, max_len) - full})
    return pd.DataFrame(rows).assign(full_loss=full)


@contextmanager
def truncated(pm, arch, rank: int, adapter_name: str = "default"):
    """Temporarily replace every B·A by its best rank-`rank` approximation (SVD); rank >= r is the identity."""
    saved = []
    with torch.no_grad():
        for _, _, lm in _lora_modules(pm, arch):
            A, B = lm.lora_A[adapter_name].weight, lm.lora_B[adapter_name].weight
            saved.append((A, B, A.detach().clone(), B.detach().clone()))
            if rank >= A.shape[0]:
                continue
            U, S, Vh = torch.linalg.svd(B.double() @ A.double(), full_matrices=False)
            k = max(0, rank)
            newB, newA = torch.zeros_like(B), torch.zeros_like(A)
            newB[:, :k] = (U[:, :k] * S[:k].sqrt()).to(B.dtype)
            newA[:k] = (S[:k].sqrt()[:, None] * Vh[:k]).to(A.dtype)
            B.copy_(newB)
            A.copy_(newA)
    try:
        yield pm
    finally:
        with torch.no_grad():
            for A, B, a0, b0 in saved:
                A.copy_(a0)
                B.copy_(b0)


def effect_map(subject: Subject, adapter_path: Path, examples: Sequence[dict], max_len: int | None = None) -> pd.DataFrame:
    """Per-layer update norm and adapter-only ablation effect of one saved adapter (or checkpoint)."""
    with attach(subject, adapter_path) as pm:
        norms = update_norms(pm, subject.arch).groupby("layer")["norm"].apply(lambda s: float(np.sqrt((s**2).sum())))
        abl = layer_ablation(pm, subject, examples, max_len)
    abl = abl[abl.layer != "all"].astype({"layer": int}).set_index("layer")
    return abl.join(norms).reset_index()


def lock_in(subject: Subject, adapter: Adapter, examples: Sequence[dict], max_len: int | None = None) -> pd.DataFrame:
    """Effect maps at every checkpoint (and the end): tidy rows (step, layer, norm, effect)."""
    steps = dict(adapter.checkpoints)
    steps[adapter.train.steps] = adapter.path
    frames = []
    for s, p in sorted(steps.items()):
        cache = adapter.path / f"effectmap-{s}-{_key(_data_hash(examples), max_len)}.json"
        if (hit := _read_json(cache)):
            df = pd.DataFrame(hit)
        else:
            df = effect_map(subject, p, examples, max_len)
            _write_json_atomic(cache, df.to_dict(orient="list"))
        frames.append(df.assign(step=s))
    return pd.concat(frames, ignore_index=True)


def lock_in_summary(maps: pd.DataFrame, col: str = "effect") -> pd.DataFrame:
    """Spearman correlation of each checkpoint's per-layer map with the previous one and with the final one."""
    wide = maps.pivot(index="layer", columns="step", values=col)
    steps = list(wide.columns)
    rows = []
    for i, s in enumerate(steps):
        prev = wide[steps[i - 1]] if i else None
        rows.append({"step": s, "rho_prev": float(wide[s].corr(prev, method="spearman")) if prev is not None else np.nan,
                     "rho_final": float(wide[s].corr(wide[steps[-1]], method="spearman"))})
    return pd.DataFrame(rows)


def adapted_subject(subject: Subject, adapter: Adapter | Path) -> Subject:
    """A merged copy of the subject with the adapter folded into its weights (for an atlas diff)."""
    from peft import PeftModel

    path = adapter.path if isinstance(adapter, Adapter) else Path(adapter)
    check_fits(path, subject)
    merged = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(path)).merge_and_unload().eval()
    return Subject(name=f"{subject.name}+lora:{path.name}", model=merged, tokenizer=subject.tokenizer,
                   arch=subject.arch, source=f"{subject.source} + LoRA {path}", meta={**subject.meta, "adapter": str(path)})


# --------------------------------------------------------------------------- experiments (thin loops)
def summarize(df: pd.DataFrame, by: Sequence[str], cols: Sequence[str] = ("n_trainable", "train_loss", "eval_loss",
              "exact_match", "drift")) -> pd.DataFrame:
    """mean ± sd over seeds, one row per group."""
    g = df.groupby(list(by), sort=False)[list(cols)]
    out = g.mean().join(g.std(ddof=1), rsuffix="_sd").join(g.size().rename("n_seeds"))
    return out.reset_index()


def fmt_pm(df: pd.DataFrame, cols: Sequence[str] = ("train_loss", "eval_loss", "exact_match", "drift"),
           digits: int = 3) -> pd.DataFrame:
    """Replace `c` and `c_sd` columns by 'mean ± sd' strings (for the report)."""
    out = df.copy()
    for c in cols:
        out[c] = [f"{m:.{digits}f} ± {s:.{digits}f}" if pd.notna(s) else f"{m:.{digits}f}"
                  for m, s in zip(out[c], out[f"{c}_sd"], strict=True)]
        out = out.drop(columns=f"{c}_sd")
    if "n_trainable_sd" in out:
        out = out.drop(columns="n_trainable_sd")
    return out


def _helper(subject: Subject, runs: Sequence, data: dict[str, list[dict]]):
    """Start a second process that trains `runs` in reverse order into the shared adapter cache (it reloads the
    model by name and gives up unless its fingerprint matches); None where that cannot work."""
    import pickle
    import subprocess
    import sys

    todo = [(t, tc, labels["family"], labels.get("checkpoints", ())) for labels, t, tc in runs if t.strategy != "none"]
    if len(todo) < 2:
        return None
    fd, job = tempfile.mkstemp(prefix="atlas-lora-grid-", suffix=".pkl")
    with os.fdopen(fd, "wb") as f:
        pickle.dump({"model": subject.name, "dtype": str(subject.dtype).replace("torch.", ""),
                     "fingerprint": subject.fingerprint, "runs": todo[::-1],
                     "data": {fam: data[fam] for _, _, fam, _ in todo}}, f)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.Popen([sys.executable, "-m", "atlas_core.studies.lora", job], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), job


def _helper_main(job: str) -> None:
    import pickle

    from .. import load

    spec = pickle.loads(Path(job).read_bytes())
    subject = load(spec["model"], dtype=spec["dtype"])
    if subject.fingerprint != spec["fingerprint"]:
        return
    for t, tc, fam, ck in spec["runs"]:
        train(subject, fam, spec["data"][fam], t, tc, checkpoints=ck)


def run_grid(subject: Subject, runs: Sequence[tuple[dict, Target, TrainConfig]], data: dict[str, list[dict]],
             evalsets: dict[str, EvalSet], progress: bool = True, workers: int = 1, score: str = "eval") -> pd.DataFrame:
    """Train + evaluate each (labels, target, train config); labels must hold 'family' and may hold 'checkpoints'
    (steps to save). Tidy rows out. score="eval": `evaluate` (held-out eval set); "val": `val_loss` only.

    workers=2 starts a helper process that trains the grid from the other end into the same adapter cache
    (so two cores share it); this process meets it in the middle, evaluates everything, then stops it."""
    import signal
    import subprocess

    helper = _helper(subject, runs, data) if workers > 1 else None
    try:
        rows = _grid(subject, runs, data, evalsets, progress, score)
    finally:
        if helper is not None:
            proc, job = helper
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # interrupts a duplicate training; its temp directory is removed
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            os.unlink(job)
    return rows


def _grid(subject, runs, data, evalsets, progress, score="eval") -> pd.DataFrame:
    rows = []
    for labels, t, tc in runs:
        fam, ev = labels["family"], evalsets[labels["family"]]
        if t.strategy == "none":
            res, n, tl, secs, cached = evaluate(subject, ev), 0, np.nan, 0.0, True
        else:
            ad = train(subject, fam, data[fam], t, tc, labels.get("checkpoints", ()), progress=progress)
            res = {"val_loss": val_loss(subject, ev, ad)} if score == "val" else evaluate(subject, ev, ad)
            n, tl, secs, cached = ad.n_trainable, ad.final_loss, ad.seconds, ad.cached
        rows.append({**{k: v for k, v in labels.items() if k != "checkpoints"}, "strategy": t.strategy,
                     "basis": t.basis, "layers": "all" if t.layers is None else list(t.layers),
                     "modules": "+".join(t.modules), "r": t.r, "optimizer": tc.optimizer, "lr": tc.lr, "seed": tc.seed,
                     "steps": tc.steps, "n_trainable": n, "train_loss": tl, "train_seconds": secs, "cached": cached,
                     **{k: v for k, v in res.items() if k != "samples"}})
        if progress:
            r = rows[-1]
            got = (f"val_loss {r['val_loss']:.3f}" if score == "val" else
                   f"eval_loss {r['eval_loss']:.3f} EM {r['exact_match']:.2f} drift {r['drift']:.4f}")
            print(f"{fam:15s} {t.strategy:13s} lr {tc.lr:.0e} seed {tc.seed} params {n:>9,} {got} "
                  f"({secs:.0f}s train{', cached' if cached else ''})", flush=True)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- chapter 05 plumbing
# Profile sizes for chapter 05 (read by `profile`; a "lora" entry in atlas_core.profiles overrides them).
# "families" (None = the three training families) narrows the headline; "atlas_families" are mapped too (the
# wrong-family control's pool); "strategies" are the headline's (None = HEADLINE). The learning rate of each
# strategy is chosen on validation loss over "lrs" on the first "search_seeds" seeds of "search_families" (None =
# every family; elsewhere the search family's choice is reused, and the verdict says so); "n_seeds" extends the
# chapter's seeds for the headline. Sequence length and generation caps are read off the data (`task_data`).
# Adapters: smoke 1 x 5 x (4 + 2) = 30 + 7 sweep (seconds); default 5 x 4 (search, json_schema, seed 1) + 2 x 5 x 3
# - 5 reused = 45 + 7 sweep = 52 (~2 min each on one CPU core, two processes; 45 before); full 3 x 6 x 5 x 2 (search)
# + 3 x 6 x 8 - 36 reused = 288 + 18 sweep.
PROFILES: dict[str, dict] = {
    "smoke": {"families": ["json_schema"], "atlas_families": ["json_schema", "factual_recall"],
              "strategies": ["atlas", "random", "depth-matched", "wrong-family", "all-linear"],
              "k": 2, "r": 8, "steps": 3, "lr": 5e-3, "lrs": [3e-3, 1e-2, 3e-2, 1e-1], "search_seeds": 1, "batch": 2,
              "n_train": 16, "n_val": 4, "n_eval": 4, "n_drift": 2, "sweep_family": "json_schema",
              "modules": ["o", "attn", "mlp"], "ranks": [1, 32], "optimizers": ["adafactor", "lion"],
              "checkpoints": [0, 1, 2], "ablation_n": 2, "atlas_prompts": 4, "n_gate": 16, "diff_components": ["block"]},
    "default": {"workers": 2, "families": ["json_schema", "factual_recall"], "atlas_families": None,
                "strategies": ["atlas", "random", "depth-matched", "wrong-family", "all-linear"],
                "k": 6, "r": 8, "steps": 24, "lr": 2e-3, "lrs": [1e-3, 2e-3, 4e-3, 8e-3], "search_seeds": 1,
                "search_families": ["json_schema"], "batch": 8, "n_train": 400, "n_val": 32, "n_eval": 24,
                "n_drift": 12, "sweep_family": "json_schema", "modules": ["o", "attn", "mlp"], "ranks": [1, 32],
                "optimizers": ["adafactor", "lion"], "checkpoints": [0, 5, 10, 16], "ablation_n": 12,
                "atlas_prompts": 16, "n_gate": 48, "diff_components": ["block", "attn", "mlp"]},
    "full": {"k": 6, "r": 8, "steps": 100, "lr": 1e-3, "lrs": [5e-4, 1e-3, 2e-3, 5e-3, 1e-2], "search_seeds": 2,
             "n_seeds": 8, "batch": 8, "n_train": 400, "n_val": 64, "n_eval": 120, "n_drift": 50,
             "sweep_family": "json_schema",
             "modules": ["o", "q", "k", "v", "gate", "up", "down", "qkv", "gate_up_down", "attn", "mlp"],
             "ranks": [1, 2, 4, 16, 32], "optimizers": ["adafactor", "lion"], "checkpoints": [0, 10, 25, 50],
             "ablation_n": 50, "atlas_prompts": 50, "n_gate": 128, "diff_components": ["block", "attn", "mlp"]},
}


def profile(name: str, override: dict | None = None) -> dict:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return {**PROFILES[name], **(override or {})}


def completion_ids(tok, ex: dict) -> list[int]:
    """The tokens a perfect model generates for an example: its completion as training encodes it, then EOS."""
    return tok(ex["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def split_val(examples: Sequence[dict], n_train: int, n_val: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) from one training split: validation = its last `n_val` items, train = up to `n_train`
    of the others, none sharing a prompt (or, for facts, a fact) with a validation item."""
    val = list(examples[len(examples) - n_val:]) if n_val else []
    seen = {e["prompt"] for e in val} | {e["fact"] for e in val if "fact" in e}
    rest = [e for e in examples[: len(examples) - n_val] if e["prompt"] not in seen and e.get("fact", None) not in seen]
    return rest[:n_train], val


def task_data(subject: Subject, families: Sequence[str], P: dict) -> tuple[dict[str, list[dict]], dict[str, EvalSet], dict]:
    """(train examples, eval sets, profile with `max_len`) per family from the task suite; each eval set carries
    the family's validation examples (`split_val`, `P["n_val"]`); drift prompts = the other families' eval prompts.

    The limits come from the data: `max_len` is the longest tokenized train, validation or eval example (prompt,
    completion, EOS), so no example is cut before the loss; a family's generation cap is its longest reference
    completion (tokens, EOS included) + `GEN_MARGIN`, so the reference completions score exact match 1."""
    from .. import tasks

    tv = {f: split_val(tasks.training_split(f, "train"), P["n_train"], P.get("n_val", 0)) for f in families}
    train = {f: tv[f][0] for f in families}
    evals = {f: tasks.training_split(f, "eval")[: P["n_eval"]] for f in families}
    drift = {f: [e["prompt"] for e in tasks.training_split(f, "eval")[-P["n_drift"]:]] for f in tasks.TRAIN_FAMILIES}
    tok = train_tokenizer(subject)
    max_len = max(len(_encode_pair(tok, e, None)[0]) for f in families for e in train[f] + tv[f][1] + evals[f])
    sets = {f: EvalSet(f, evals[f], [p for g, ps in drift.items() if g != f for p in ps],
                       lambda text, ex, f=f: tasks.exact_match(f, text, ex),
                       max(len(completion_ids(tok, e)) for e in evals[f]) + GEN_MARGIN, max_len, tv[f][1])
            for f in families}
    return train, sets, {**P, "max_len": max_len}


def headline_seeds(seeds: Sequence[int], P: dict) -> list[int]:
    """The chapter's seeds, extended to `P["n_seeds"]` (new ones: 1000, 1001, ...) where the profile asks for more."""
    out = [int(s) for s in seeds]
    new = (s for s in range(1000, 10**6) if s not in out)
    return out + [next(new) for _ in range(P.get("n_seeds", 0) - len(out))]


def lr_for(lr, family: str, strategy: str, P: dict) -> tuple[float, str]:
    """(learning rate, family whose validation split chose it; "" = not chosen) from a float, None (the profile's
    `lr`) or a `choose_lr` table (the family's own row, else the strategy's row of a searched family)."""
    if lr is None or isinstance(lr, int | float):
        return float(P["lr"] if lr is None else lr), ""
    rows = lr[lr["strategy"] == strategy]
    if not len(rows):
        raise ValueError(f"no learning rate was chosen for strategy {strategy!r}")
    r = (rows[rows["family"] == family] if (rows["family"] == family).any() else rows).iloc[0]
    return float(r["lr"]), str(r["family"])


def headline_runs(atlas, subject: Subject, families: Sequence[str], seeds: Sequence[int], P: dict,
                  strategies: Sequence[str] | None = None, lr=None,
                  pool: Sequence[str] | None = None) -> list[tuple[dict, Target, TrainConfig]]:
    """The base model plus every strategy x seed at identical steps and batch; the learning rate per strategy from
    `lr` (see `lr_for`). Controls are drawn against the atlas target (`control_target`; wrong-family from `pool`,
    default `families`; skipped where no other family has scores)."""
    runs = []
    for f in families:
        runs.append(({"family": f, "experiment": "headline"}, Target("none", (), ()), TrainConfig(0, 0.0, seed=0)))
        for s in seeds:
            for st in strategies or P.get("strategies") or HEADLINE:
                if (t := control_target(atlas, subject, f, st, s, P["k"], P["r"], pool or families)) is not None:
                    rate, src = lr_for(lr, f, st, P)
                    runs.append(({"family": f, "experiment": "headline", "lr_from": src}, t,
                                  TrainConfig(P["steps"], rate, P["batch"], "adamw", s, P.get("max_len"))))
    return runs


def lr_runs(atlas, subject: Subject, families: Sequence[str], seeds: Sequence[int], P: dict,
            pool: Sequence[str] | None = None) -> list[tuple[dict, Target, TrainConfig]]:
    """The learning-rate search: the headline strategies at every rate of `P["lrs"]` on the first
    `P["search_seeds"]` seeds of `P["search_families"]` (None: every family), scored on validation loss
    (`run_grid(score="val")`). The surgery adapter's runs (all-linear, sweep family, first seed) keep its
    checkpoints, so the chosen one is reused as it is; so are the chosen runs in the headline."""
    fams = [f for f in families if f in (P.get("search_families") or families)]
    runs = []
    for rate in P["lrs"]:
        for labels, t, tc in headline_runs(atlas, subject, fams, list(seeds)[: P.get("search_seeds", 1)], P,
                                           lr=rate, pool=pool or families):
            if t.strategy != "none":
                surgery = (labels["family"], t.strategy, tc.seed) == (P["sweep_family"], "all-linear", seeds[0])
                runs.append(({**labels, "experiment": "lr", **({"checkpoints": tuple(P["checkpoints"])} if surgery
                                                                else {})}, t, tc))
    return runs


def choose_lr(search: pd.DataFrame) -> pd.DataFrame:
    """Per (family, strategy) of a search grid: the learning rate of lowest validation loss (mean over the search
    seeds), how many rates and seeds it was chosen from, and whether it lies on the grid's edge (the best rate may
    then lie outside the grid)."""
    g = search.groupby(["family", "strategy", "lr"], sort=False)["val_loss"].agg(["mean", "size"]).reset_index()
    rows = []
    for (f, st), d in g.groupby(["family", "strategy"], sort=False):
        best = d.loc[d["mean"].fillna(np.inf).idxmin()]
        grid = sorted(d["lr"])
        rows.append({"family": f, "strategy": st, "lr": float(best["lr"]), "val_loss": float(best["mean"]),
                     "n_lrs": len(grid), "n_search_seeds": int(d["size"].min()),
                     "at_edge": len(grid) > 1 and best["lr"] in (grid[0], grid[-1])})
    return pd.DataFrame(rows)


def sweep_runs(atlas, arch, seed: int, P: dict, lr: float | None = None) -> list[tuple[dict, Target, TrainConfig]]:
    """Module, rank and optimizer sweeps around the atlas-guided run (all modules, rank r, AdamW at `lr`, default
    the profile's) on one family."""
    f = P["sweep_family"]
    tc = TrainConfig(P["steps"], lr or P["lr"], P["batch"], "adamw", seed, P.get("max_len"))
    base = target(atlas, f, arch, P["k"], "atlas", ALL_LINEAR, seed=seed, r=P["r"])
    runs = [({"family": f, "experiment": "modules", "value": "all"}, base, tc)]
    runs += [({"family": f, "experiment": "modules", "value": m}, replace(base, modules=MODULE_SETS.get(m, (m,))), tc)
             for m in P["modules"]]
    runs += [({"family": f, "experiment": "rank", "value": str(r)}, replace(base, r=r, alpha=2.0 * r), tc)
             for r in sorted({*P["ranks"], P["r"]})]
    runs += [({"family": f, "experiment": "optimizer", "value": o}, base, replace(tc, optimizer=o))
             for o in ["adamw", *P["optimizers"]]]
    return runs


def truncation_curve(subject: Subject, adapter: Adapter, examples: Sequence[dict], ranks: Sequence[int],
                     max_len: int | None = None) -> pd.DataFrame:
    """Eval loss and last-position KL(full adapter || truncated) when every B·A is cut to each rank by SVD."""
    tok = train_tokenizer(subject)
    prompts = [e["prompt"] for e in examples]
    rows = []
    with attach(subject, adapter) as pm:
        full = last_logprobs(pm, subject, prompts)
        with pm.disable_adapter():
            base_loss = completion_loss(pm, tok, examples, max_len)
        for r in sorted(set(ranks)):
            with truncated(pm, subject.arch, r):
                rows.append({"rank": r, "eval_loss": completion_loss(pm, tok, examples, max_len),
                             "kl_to_full": float(kl_rows(full, last_logprobs(pm, subject, prompts)).mean())})
    return pd.DataFrame(rows).assign(base_loss=base_loss)


def module_norms(subject: Subject, adapter: Adapter) -> pd.DataFrame:
    """‖B·A‖·scaling per (layer, module) of a saved adapter."""
    with attach(subject, adapter) as pm:
        return update_norms(pm, subject.arch)


# --------------------------------------------------------------------------- claims of chapter 05
CONTROL_P = 0.05  # the claims grader's control criterion


def compare(head: pd.DataFrame, ref: str = "atlas", others: Sequence[str] | None = None,
            tol: float = PARAM_TOL) -> pd.DataFrame:
    """`ref` minus each other strategy (default: every other one present but the base model), paired by seed (same
    steps and seed; each at its own learning rate where `lr` varies), per family.

    p_value: exact sign-flip test over seeds, one-sided (ref reaches lower eval loss); min_p = 2^-n_seeds, the
    smallest p that many seeds can give. param_ratio: other / ref trainable parameters (mean over seeds);
    params_matched: within `tol` in every seed (random and depth-matched must be; the others are not meant to)."""
    others = list(others or [s for s in dict.fromkeys(head["strategy"]) if s not in (ref, "none")])
    vals = [c for c in ("eval_loss", "exact_match", "n_trainable", "lr") if c in head]
    rows = []
    for f, g in head[head["strategy"].isin([ref, *others])].groupby("family", sort=False):
        w = g.pivot_table(index="seed", columns="strategy", values=vals)
        basis = str(g.loc[g["strategy"] == ref, "basis"].iloc[0]) if "basis" in g and (g["strategy"] == ref).any() else ""
        for o in others:
            if ref not in w["eval_loss"] or o not in w["eval_loss"]:
                continue
            both = w.dropna(subset=[("eval_loss", ref), ("eval_loss", o)])
            d = (both["eval_loss"][ref] - both["eval_loss"][o]).to_numpy()
            ratio = (both["n_trainable"][o] / both["n_trainable"][ref]).to_numpy()
            rows.append({"family": f, "vs": o, "basis": basis, "n_seeds": d.size, "d_eval_loss": float(d.mean()),
                         "p_value": sign_flip_p(d, "less"), "min_p": 0.5 ** d.size, "seeds_better": int((d < 0).sum()),
                         "d_exact_match": float((both["exact_match"][ref] - both["exact_match"][o]).mean()),
                         "param_ratio": float(ratio.mean()), "params_matched": bool(np.all(np.abs(ratio - 1) <= tol)),
                         **({"lr_ref": float(both["lr"][ref].mean()), "lr_vs": float(both["lr"][o].mean())}
                            if "lr" in vals else {})})
    return pd.DataFrame(rows)


def verdict(cmp: pd.DataFrame, required: Sequence[str] = CONTROLS,
            matched: Sequence[str] = ("random", "depth-matched")) -> pd.DataFrame:
    """Per family of a `compare` table, "the atlas wins": lower eval loss than every strategy it was compared with.

    An intersection-union test (Berger 1982): the family's p is the largest of its comparisons' exact sign-flip
    p's, a level-0.05 test of "beats every one" with no correction across them (each must pass by itself; Holm
    across them would only add a condition no 5-seed run could meet); Holm then corrects across the graded
    families. A family is not graded where a `required` control is missing or a `matched` one does not match the
    atlas's trainable parameters (`why`). `weakest`: the comparison with the largest p."""
    rows = []
    for f, g in cmp.groupby("family", sort=False):
        missing = [c for c in required if c not in set(g["vs"])]
        unmatched = [c for c in matched if c in set(g["vs"]) and not g.loc[g["vs"] == c, "params_matched"].all()]
        w = g.loc[g["p_value"].idxmax()]
        why = "; ".join([f"the {' and '.join(missing)} control{'s are' if len(missing) > 1 else ' is'} missing"] * bool(missing)
                        + [f"no {' or '.join(unmatched)} layer set matches the atlas's trainable parameters within "
                           f"{PARAM_TOL:.0%}"] * bool(unmatched))
        rows.append({"family": f, "basis": g["basis"].iloc[0], "n_seeds": int(g["n_seeds"].min()),
                     "min_p": float(g["min_p"].max()), "n_compared": len(g), "vs": ", ".join(g["vs"]),
                     "all_lower": bool((g["d_eval_loss"] < 0).all()), "weakest": w["vs"],
                     "d_weakest": float(w["d_eval_loss"]), "p_value": float(w["p_value"]), "graded": not why, "why": why})
    out = pd.DataFrame(rows, columns=["family", "basis", "n_seeds", "min_p", "n_compared", "vs", "all_lower", "weakest",
                                      "d_weakest", "p_value", "graded", "why"])
    out["p_holm"] = np.nan
    ok = out["graded"].to_numpy(bool)
    out.loc[ok, "p_holm"] = holm(out.loc[ok, "p_value"].to_numpy())
    out["wins"] = out["graded"] & out["all_lower"] & (out["p_holm"] <= CONTROL_P)
    return out


def spearman_perm(x, y, n_mc: int = 20000, seed: int = 0) -> tuple[float, float, float]:
    """(rho, two-sided p, smallest attainable p) of a Spearman correlation by a permutation test: exact (every
    pairing) up to 8 points, seeded Monte Carlo (add-one) above. NaN rho and p for a constant input."""
    from itertools import permutations

    from scipy.stats import rankdata

    def z(v):
        r = rankdata(np.asarray(v, float))
        return (r - r.mean()) / r.std() if r.std() > 0 else None

    zx, zy = z(x), z(y)
    if zx is None or zy is None:
        return float("nan"), float("nan"), float("nan")
    n, obs = zx.size, float(np.mean(zx * zy))
    if n <= 8:
        null = (zy[np.array(list(permutations(range(n))))] * zx).mean(1)
        p = float(np.mean(np.abs(null) >= abs(obs) - 1e-9))
        return obs, p, float(np.mean(np.abs(null) >= np.abs(null).max() - 1e-9))
    perms = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (n_mc, 1)), axis=1)
    null = (zy[perms] * zx).mean(1)
    return obs, float((1 + np.sum(np.abs(null) >= abs(obs) - 1e-9)) / (1 + n_mc)), 1 / (1 + n_mc)


def norm_effect(final: pd.DataFrame) -> dict:
    """Per-layer update norm vs adapter-only ablation effect of one adapter (`effect_map` rows): Spearman rho,
    exact permutation p (two-sided), the smallest p the number of layers allows, and that number."""
    rho, p, min_p = spearman_perm(final["norm"], final["effect"])
    return {"rho": rho, "p_value": p, "min_p": min_p, "n_layers": len(final)}


def _cannot(n: int, what: str, min_p: float) -> str:
    return (f"; {n} {what} cannot give p below {min_p:.3g}, so this cannot pass the control criterion (p ≤ {CONTROL_P})"
            if min_p > CONTROL_P else "")


NAMES = {"random": "random-matched", "depth-matched": "depth-matched", "wrong-family": "wrong-family"}


def _lr_note(lrs: pd.DataFrame | None, family: str) -> tuple[str, str]:
    """(how the learning rates were chosen, why that caps the verdict; "" = no cap) from a `choose_lr` table."""
    if lrs is None or not len(lrs):
        return ("every strategy at one learning rate", "one learning rate for every strategy, which can flip "
                "rankings at short budgets (Biderman et al. 2024)")
    own = lrs[lrs["family"] == family]
    rows = own if len(own) else lrs
    n_lrs, m, src = int(rows["n_lrs"].min()), int(rows["n_search_seeds"].min()), rows["family"].iloc[0]
    edge = sorted(rows.loc[rows["at_edge"].astype(bool), "strategy"]) if "at_edge" in rows else []
    note = (f"each strategy at its own learning rate (validation-loss argmin of {n_lrs} rates on {m} seed"
            f"{'s' if m > 1 else ''}{'' if len(own) else f' of {src}'}"
            f"{'; at the grid edge for ' + ', '.join(edge) if edge else ''})")
    cap = (f"learning rates chosen on {src}'s validation split, not {family}'s" if not len(own) else
           f"learning rates searched over {n_lrs} < {MIN_LRS} values" if n_lrs < MIN_LRS else "")
    return note, cap


def lora_claims(cmp: pd.DataFrame, norm: dict, targets: pd.DataFrame, k: int, chapter: str = "05",
                model: str = "", profile: str = "", lrs: pd.DataFrame | None = None) -> list[Claim]:
    """Chapter 05's claims from `compare` (atlas vs every other strategy; `verdict` reads it), `norm_effect`,
    `targeting` and `choose_lr` (None: one learning rate for all); every statement, direction and piece of
    evidence is read off those tables.

    Per family: "the atlas wins" only where it beats every strategy compared, the three `CONTROLS` among them
    (`verdict`). Not graded (testable False) with a control missing or unmatched in parameters, or with fewer
    than `MIN_SEEDS` paired seeds; capped at low (no breadth) where the learning rates were not searched on the
    family's own validation split over >= `MIN_LRS` rates. Where the atlas metric could not target (the model
    does not solve the family), a "not testable here" claim plus a "disruption-targeted" one for the KL fallback,
    graded by its control alone."""
    meta = {"chapter": chapter, "model": model, "profile": profile}
    v = verdict(cmp)
    n_graded, passed = int(v["graded"].sum()), int(v["wins"].sum())
    claims = []
    for r in v.itertuples():
        tg = targets.loc[r.family]
        fell = tg["basis"] != tg["metric"]
        by = {"kl": "KL"}.get(tg["basis"], tg["basis"])
        who = (f"disruption-targeted LoRA ({k} layers ranked by ablation {by}, not by the behaviour)" if fell
               else f"atlas-guided LoRA ({k} layers ranked by {by})")
        wrong = f" ({tg['wrong_family']})" if tg.get("wrong_family") else ""
        common = {"metric": "eval loss on held-out completions",
                  "counterfactual": f"layers chosen by {'the KL map' if fell else 'the atlas'}; same steps and seeds",
                  "control": f"random layers with the same trainable parameters (±{PARAM_TOL:.0%}), depth-matched "
                             "random layers, another family's atlas layers, and every other strategy run", **meta}
        if fell:
            claims.append(Claim(f"{r.family}: atlas-guided LoRA ({tg['metric']}) against its controls is not "
                                f"testable here", evidence={"testable": False, "untestable_why": tg["why"]}, **common))
        if not r.graded:
            claims.append(Claim(f"{r.family}: whether {who} beats its controls is not graded: {r.why}",
                                evidence={"testable": False, "untestable_why": r.why}, **common))
            continue
        note, cap = _lr_note(lrs, r.family)
        rows = cmp[cmp["family"] == r.family]
        each = ", ".join(f"{NAMES.get(c.vs, c.vs)}{wrong if c.vs == 'wrong-family' else ''} {c.d_eval_loss:+.3f} "
                         f"(p {c.p_value:.3g})" for c in rows.itertuples())
        verb = ("beats every strategy it was compared with" if r.wins
                else "has lower eval loss than every other strategy, but not significantly" if r.all_lower
                else f"does not beat every strategy it was compared with (weakest: {NAMES.get(r.weakest, r.weakest)})")
        what = "seeds" if n_graded == 1 else f"seeds (Holm over {n_graded} families)"
        stmt = (f"{r.family}: {who}, {note}, {verb} on held-out eval loss (Δ vs {each}; intersection-union p = "
                f"{r.p_value:.3g} over {r.n_seeds} seeds, Holm {r.p_holm:.3g} over {n_graded} families"
                f"{_cannot(r.n_seeds, what, min(1.0, n_graded * r.min_p))})")
        if r.n_seeds < MIN_SEEDS:
            why = (f"{r.n_seeds} paired seeds: 'the atlas wins' is graded from {MIN_SEEDS} (this profile's budget "
                   f"runs {r.n_seeds}; the full profile runs more)")
            claims.append(Claim(stmt, evidence={"testable": False, "untestable_why": why,
                                                "p_value": float(r.p_holm)}, **common))
            continue
        # the seeds are the replicates of the test itself, so they are not counted again; breadth counts the families
        # that pass the corrected test. A disruption-targeted or capped verdict is graded by its control alone
        ev = {"p_value": float(r.p_holm), "selection": "holm"}
        if not (fell or cap):
            ev |= {"n_families": n_graded, "families_agreeing": passed if r.wins else n_graded - passed}
        claims.append(Claim(stmt + (f"; capped at low: {cap}" if cap else ""), evidence=ev, **common))
    rho, p = norm["rho"], norm["p_value"]
    word = ("cannot be related (a constant per-layer map)" if not np.isfinite(rho)
            else ("rises" if rho > 0 else "falls") if p <= CONTROL_P else "shows no clear association")
    claims.append(Claim(
        f"Per layer, the all-linear adapter's update norm ‖B·A‖ {word} with the harm of disabling it there "
        f"(Spearman {rho:.2f}, exact permutation p = {p:.3g} over {norm['n_layers']} layers"
        f"{_cannot(norm['n_layers'], 'layers', norm['min_p'])})",
        metric="Spearman(per-layer update norm, adapter-only ablation effect)",
        counterfactual="adapter disabled in one layer", control="no association (rho = 0, layers permuted)",
        evidence={"p_value": float(p) if np.isfinite(p) else 1.0}, **meta))
    return claims


if __name__ == "__main__":  # the run_grid helper process: python -m atlas_core.studies.lora JOB.pkl
    import sys

    from atlas_core.studies.lora import _helper_main as _run  # the package's classes, as pickled

    try:
        _run(sys.argv[1])
    except KeyboardInterrupt:
        pass
