"""Take an adapter apart: the norm of each update ‖B·A‖·scaling, adapter-only ablation (the adapter off in one layer
at a time), SVD rank truncation, effect maps over checkpoints (lock-in), and the adapter merged into a copy of the
subject (an ordinary Subject, for an atlas diff)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from ...model.subject import Subject
from ...paths import read_json, write_json_atomic
from .data import data_hash, train_tokenizer
from .evaluation import completion_loss, kl_rows, last_logprobs
from .training import Adapter, attach, cache_key, check_fits


def _lora_modules(pm, arch) -> Iterator[tuple[int, str, torch.nn.Module]]:
    """(layer, canonical module, LoraLayer) for every adapted module."""
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
def scaled(pm, arch, layers: Sequence[int] | None = None, factor: float = 0.0,
           adapter_name: str = "default") -> Iterator:
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


def layer_ablation(pm, subject: Subject, examples: Sequence[dict], max_len: int | None = None,
                   zero: Sequence[int] = ()) -> pd.DataFrame:
    """Adapter-only ablation: eval-loss increase when the adapter is disabled in one layer at a time.

    Rows: every adapted layer, plus 'all' (adapter off everywhere, i.e. the base model). Layers in `zero` have a
    zero update (B·A = 0, e.g. a checkpoint at step 0): disabling them changes nothing, so their effect is 0.0
    without a forward (and 'all' too when every layer is in `zero`)."""
    tok = train_tokenizer(subject)
    full = completion_loss(pm, tok, examples, max_len)
    layers = sorted({lay for lay, _, _ in _lora_modules(pm, subject.arch)})
    rows = []
    for lay in layers:
        if lay in zero:
            rows.append({"layer": lay, "effect": 0.0})
            continue
        with scaled(pm, subject.arch, [lay]):
            rows.append({"layer": lay, "effect": completion_loss(pm, tok, examples, max_len) - full})
    if set(layers) <= set(zero):
        rows.append({"layer": "all", "effect": 0.0})
    else:
        with pm.disable_adapter():
            rows.append({"layer": "all", "effect": completion_loss(pm, tok, examples, max_len) - full})
    return pd.DataFrame(rows).assign(full_loss=full)


def lowrank_svd(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of B·A (B: out x r, A: r x in) from the factors: B = Qb·Rb, Aᵀ = Qa·Ra, so B·A = Qb·(Rb·Raᵀ)·Qaᵀ
    and only the r x r core is decomposed (the full out x in product's SVD costs ~500x more)."""
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)
    return Qb @ U, S, Vh @ Qa.T


@contextmanager
def truncated(pm, arch, rank: int, adapter_name: str = "default") -> Iterator:
    """Temporarily replace every B·A by its best rank-`rank` approximation (SVD); rank >= r is the identity."""
    saved = []
    with torch.no_grad():
        for _, _, lm in _lora_modules(pm, arch):
            A, B = lm.lora_A[adapter_name].weight, lm.lora_B[adapter_name].weight
            saved.append((A, B, A.detach().clone(), B.detach().clone()))
            if rank >= A.shape[0]:
                continue
            U, S, Vh = lowrank_svd(B.double(), A.double())
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


def truncation_curve(subject: Subject, adapter: Adapter, examples: Sequence[dict], ranks: Sequence[int],
                     max_len: int | None = None) -> pd.DataFrame:
    """Eval loss and last-position KL(full adapter || truncated) when every B·A is cut to each rank by SVD."""
    tok = train_tokenizer(subject)
    prompts = [e["prompt"] for e in examples]
    rows = []
    with attach(subject, adapter) as pm:
        full = last_logprobs(subject, prompts)
        with pm.disable_adapter():
            base_loss = completion_loss(pm, tok, examples, max_len)
        for r in sorted(set(ranks)):
            with truncated(pm, subject.arch, r):
                rows.append({"rank": r, "eval_loss": completion_loss(pm, tok, examples, max_len),
                             "kl_to_full": float(kl_rows(full, last_logprobs(subject, prompts)).mean())})
    return pd.DataFrame(rows).assign(base_loss=base_loss)


def effect_map(subject: Subject, adapter_path: Path, examples: Sequence[dict], max_len: int | None = None) -> pd.DataFrame:
    """Per-layer update norm and adapter-only ablation effect of one saved adapter (or checkpoint)."""
    with attach(subject, adapter_path) as pm:
        norms = update_norms(pm, subject.arch).groupby("layer")["norm"].apply(lambda s: float(np.sqrt((s**2).sum())))
        abl = layer_ablation(pm, subject, examples, max_len, zero=[int(k) for k, v in norms.items() if v == 0])
    abl = abl[abl.layer != "all"].astype({"layer": int}).set_index("layer")
    return abl.join(norms).reset_index()


def lock_in(subject: Subject, adapter: Adapter, examples: Sequence[dict], max_len: int | None = None) -> pd.DataFrame:
    """Effect maps at every checkpoint (and the end): tidy rows (step, layer, norm, effect)."""
    steps = dict(adapter.checkpoints)
    steps[adapter.train.steps] = adapter.path
    frames = []
    for s, p in sorted(steps.items()):
        cache = adapter.path / f"effectmap-{s}-{cache_key(data_hash(examples), max_len)}.json"
        if (hit := read_json(cache)):
            df = pd.DataFrame(hit)
        else:
            df = effect_map(subject, p, examples, max_len)
            write_json_atomic(cache, df.to_dict(orient="list"))
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


def module_norms(subject: Subject, adapter: Adapter) -> pd.DataFrame:
    """‖B·A‖·scaling per (layer, module) of a saved adapter."""
    with attach(subject, adapter) as pm:
        return update_norms(pm, subject.arch)


def adapted_subject(subject: Subject, adapter: Adapter | Path) -> Subject:
    """A merged copy of the subject with the adapter folded into its weights (for an atlas diff)."""
    path = adapter.path if isinstance(adapter, Adapter) else Path(adapter)
    check_fits(path, subject)
    merged = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(path)).merge_and_unload().eval()
    out = subject.derive(merged, f"{subject.name}+lora:{path.name}", f"LoRA {path.name} merged")
    out.meta["adapter"] = str(path)
    return out


def lock_in_table(maps: pd.DataFrame) -> pd.DataFrame:
    """`lock_in_summary` of the effect maps and of the norm maps, side by side (suffixes _effect, _norm)."""
    return lock_in_summary(maps, "effect").merge(lock_in_summary(maps, "norm"), on="step", suffixes=("_effect", "_norm"))
