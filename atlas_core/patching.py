"""Activation patching with the atlas vocabulary: denoising, noising and cross-model patching.

Denoising runs the corrupt prompt with one site's clean value written in (`Op.patch("clean")`); noising
runs the clean prompt with the corrupt value (`Op.patch("corrupt")`). Both go through `sweep`. The score
is the normalized recovery of the mean logit difference (ratio of means over prompts, robust where single
prompts have a small clean−corrupt gap):

    recovery = (mean LD_patched − mean LD_corrupt) / (mean LD_clean − mean LD_corrupt)

1 = the patch restores (denoising) or keeps (noising) the clean behaviour, 0 = the corrupt behaviour.
For noising we report `score = 1 − recovery`: the fraction of the behaviour the corrupt value destroys.

Cross-model patching writes activations of model A into model B of the same architecture: B's engine
`Batch` runs the prompts, A's cached clean pass stands in as its "clean" run, so `Op.patch("clean")`
units write A's values into B, and recovery measures how far B moves to A's logit difference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import metrics
from .engine import Batch
from .interventions import Edit, Op, Site, Unit, _exists
from .subject import Subject


def units(arch, components: Sequence[str] = ("resid", "block", "attn", "mlp"), positions: Sequence = ("last", "diff"),
          methods: Sequence[str] = ("denoise", "noise"), layers: Sequence[int] | None = None,
          head_layers: Sequence[int] = (), head_positions: Sequence = ("last",),
          head_methods: Sequence[str] = ("denoise",)) -> list[Unit]:
    """Patching units over components × layers × positions × methods, plus heads at `head_layers`."""
    layers = range(arch.n_layers) if layers is None else layers
    ops = {"denoise": Op.patch("clean"), "noise": Op.patch("corrupt")}
    out = [Unit.of(Site(c, layer, position=p), ops[m]) for c in components for layer in layers
           if c in ("resid", "block") or _exists(arch, c, layer)
           for p in positions for m in methods]
    out += [Unit.of(Site("head", layer, head=h, position=p), ops[m]) for layer in head_layers
            if arch.layer_kinds[layer] == "attention" for h in range(arch.n_heads) for p in head_positions for m in head_methods]
    return out


def recovery_ci(ld: np.ndarray, ld_clean: np.ndarray, ld_corrupt: np.ndarray, n_boot: int = 1000,
                seed: int = 0) -> tuple[float, float, float]:
    """Normalized recovery of the means, with a percentile bootstrap CI over prompts."""
    ld, c, x = (np.asarray(a, float) for a in (ld, ld_clean, ld_corrupt))

    def rec(i):
        den = c[i].mean(-1) - x[i].mean(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.abs(den) > 1e-6, (ld[i].mean(-1) - x[i].mean(-1)) / den, np.nan)

    est = float(rec(np.arange(ld.size)))
    if ld.size < 2:
        return est, est, est
    boots = rec(np.random.default_rng(seed).integers(0, ld.size, (n_boot, ld.size)))
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return est, float(lo), float(hi)


def summarize(df: pd.DataFrame, by: Sequence[str] = ("family", "component", "layer", "head", "position", "method"),
              n_boot: int = 1000) -> pd.DataFrame:
    """One row per group: recovery with CI, score (recovery for denoising, 1 − recovery for noising), mean KL."""
    rows = []
    for key, g in df.groupby(list(by)):
        est, lo, hi = recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"], n_boot=n_boot)
        r = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        noise = r.get("method") == "noise"
        r |= {"recovery": est, "recovery_lo": lo, "recovery_hi": hi, "kl": g["kl"].mean(), "n": len(g),
              "score": 1 - est if noise else est, "score_lo": 1 - hi if noise else lo, "score_hi": 1 - lo if noise else hi}
        rows.append(r)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- cross-model
def perturbed(subject: Subject, sigma: float = 0.05, seed: int = 0, name: str | None = None) -> Subject:
    """A copy of `subject` whose decoder-layer weights carry seeded Gaussian noise of `sigma` × each tensor's std
    (embeddings, final norm and unembedding untouched, as with a LoRA adapter on attention/MLP)."""
    from .subject import _finish

    model = copy.deepcopy(subject.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.get_submodule(subject.arch.paths.layers).parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * p.float().std().to(p) * sigma)
    return _finish(name or f"{subject.name}+noise{sigma:g}s{seed}", model, subject.tokenizer,
                   f"{subject.source}; decoder weights + N(0, ({sigma:g}·std)^2), seed {seed}", dict(subject.meta))


def cumulative(component: str, n_layers: int, position: str = "all") -> list[Unit]:
    """Units patching the source's values at layers 0..k for every k (one multi-edit unit each)."""
    return [Unit(tuple(Edit(Site(component, layer, position=position), Op.patch("clean")) for layer in range(k + 1)))
            for k in range(n_layers)]


def cross_patch(dst: Subject, src: Subject, items: Sequence, units: Sequence[Unit], max_tokens: int = 8192) -> pd.DataFrame:
    """Write `src` activations into `dst` (same architecture) for each denoising unit; per-prompt rows with
    recovery = (LD_patched − LD_dst) / (LD_src − LD_dst) and kl = KL(src ‖ patched dst)."""
    if (src.arch.d_model, src.arch.n_layers) != (dst.arch.d_model, dst.arch.n_layers):
        raise ValueError(f"cross-model patching needs the same shape: {src.name} (d_model={src.arch.d_model}, "
                         f"{src.arch.n_layers} layers) vs {dst.name} (d_model={dst.arch.d_model}, {dst.arch.n_layers} layers)")
    if any(e.op.kind != "patch" or e.op.source != "clean" for u in units for e in u.edits):
        raise ValueError("cross-model units must be denoising patches (Op.patch('clean')): the source model is the 'clean' run")
    frames = []
    by_fam: dict[str, list] = {}
    for it in items:
        by_fam.setdefault(it.family, []).append(it)
    for fam, its in sorted(by_fam.items()):
        prompts = [it.prompt for it in its]
        ans, dis = [it.answer_id for it in its], [it.distractor_id for it in its]
        b = Batch(dst, prompts, prompts, ans, dis)
        a = Batch(src, prompts, None, ans, dis)
        b.runs["clean"] = {**b.runs["clean"], "hidden": a.runs["clean"]["hidden"], "logits": a.logits("clean")}
        for u in units:  # source values of module sites come from A's own modules
            for e in u.edits:
                a.value("clean", e)
                key = ("clean", e.site.component, e.site.layer)
                b._values[key] = a._values[key]
        ld_src = metrics.next_token(a.logits("clean"), a.logits("clean"), b.answer_ids, b.distractor_ids)["logit_diff"]
        ld_dst = metrics.next_token(b.logits("corrupt"), a.logits("clean"), b.answer_ids, b.distractor_ids)["logit_diff"]
        for u, lg in zip(units, b.run(list(units), max_tokens=max_tokens)):
            m = metrics.next_token(lg, a.logits("clean"), b.answer_ids, b.distractor_ids)
            frames.append(pd.DataFrame({**u.describe(), "n_layers_patched": len(u.edits), "family": fam,
                                        "item_id": [it.id for it in its], "kl": m["kl"], "logit_diff": m["logit_diff"],
                                        "ld_clean": ld_src, "ld_corrupt": ld_dst}))
    df = pd.concat(frames, ignore_index=True)
    df["recovery"] = metrics.recovery(df["logit_diff"].to_numpy(), df["ld_clean"].to_numpy(), df["ld_corrupt"].to_numpy())
    return df


def monotonic(values: Sequence[float], tol: float = 0.02) -> tuple[bool, int]:
    """(is the curve non-decreasing within `tol`, number of drops larger than tol)."""
    d = np.diff(np.asarray(values, float))
    drops = int((d < -tol).sum())
    return drops == 0, drops
