"""Direct vs total effects (McGrath et al. 2023, the Hydra effect): is a small ablation effect small because the
component does not matter, or because later layers repair it?

A component's *direct effect* on the logit difference is the change in LD when only its direct path to the
unembedding sees the ablation: the edit's change to the component's write at the last position,
(replacement - value)[last], added to the clean final residual, passed through the final norm with its scale
frozen at the clean run's value (a linear map), and read out through the answer and distractor unembedding
rows. Nothing downstream (attention, MLPs, the norm's scale) reacts. The *total effect* is the ablation's
measured LD drop (`ld_drop` of the sweep). Both are signed as drops (positive = the answer lost ground).

Softcap (Gemma): the model's logits are cap * tanh(z / cap). The direct LD is taken on the capped logits of
the answer and the distractor, cap*tanh((z + dz)/cap), exactly, with z the clean pre-cap logits; so direct
and total are on the scale the sweep measures. (Dropping the cap instead would overstate large direct effects.)

Where it is defined: single-edit units whose site value is a residual write (block, attn, mlp, mixer, conv), and
`head` where the attention write is the out-projection itself (llama, qwen2, gpt2, lfm2: a head's term is
o_proj applied to its slice). On Gemma3 the write is post_attention_layernorm(o_proj(x)): a head has no
additive direct path, so its direct effect is "undefined" (NaN, `undefined_why`). Multi-edit units and other
sites (q/k/v, resid, ...) are undefined too.

A component is *compensated* when |total| < 0.5 |direct| with |direct| >= MIN_DIRECT (both as fractions of the
clean LD): its direct path carries at least a tenth of the behaviour, yet ablating it costs less than half of
that, so later components repair it. Such a component is not unimportant; maps and claims say so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike

from ..engine.batch import Batch
from ..engine.interventions import Edit, Unit
from ..engine.sweep import batches
from ..model.archmap import ArchMap
from ..model.subject import Subject

WRITES = ("block", "attn", "mlp", "mixer", "conv")
ADDITIVE_HEADS = ("llama", "qwen2", "gpt2", "lfm2")
RATIO = 0.5
# 0.1 of the clean logit difference: below it neither path carries a behaviour worth naming (the atlas's maps
# read effects of this size as noise-level: at 16 prompts per family the bootstrap CI half-width of a cell's
# ld_frac is of this order), so "repaired" would only be the ratio of two small numbers.
MIN_DIRECT = 0.1


def undefined_why(arch: ArchMap, unit: Unit) -> str | None:
    """Why a unit has no direct effect on this architecture, or None if it has one."""
    if len(unit.edits) != 1:
        return "multi-edit unit"
    comp = unit.edits[0].site.component
    if comp == "head":
        return None if arch.family in ADDITIVE_HEADS else (
            f"{arch.family} normalizes the attention write after o_proj: a head has no additive direct path")
    return None if comp in WRITES else f"{comp} is not a residual write"


def frozen_norm(subject: Subject, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The final norm's response to `delta` (N, d) with its scale frozen at the residual `h` (N, d): linear in delta.

    RMSNorm g*x/sqrt(mean(x^2)+eps) (any gain parametrization, e.g. Gemma's 1+w: g is read off the module) ->
    g*delta/sqrt(mean(h^2)+eps); LayerNorm -> w*(delta - mean(delta))/sqrt(var(h)+eps) (the bias cancels)."""
    norm = subject.model.get_submodule(subject.arch.paths.final_norm)
    h, delta = h.float(), delta.float()
    if isinstance(norm, torch.nn.LayerNorm):
        scale = torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + norm.eps)
        return norm.weight.float() * (delta - delta.mean(-1, keepdim=True)) / scale
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0)))
    with torch.no_grad():
        gain = norm(torch.ones(1, 1, h.shape[-1], dtype=h.dtype, device=h.device))[0, 0].float() * (1 + eps) ** 0.5
    return gain * delta / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)


class Readout:
    """The clean last-position residual of a batch and its answer/distractor readout, for direct effects."""

    @torch.inference_mode()
    def __init__(self, batch: Batch):
        s = batch.s
        if batch.runs["clean"]["hidden"] is None:
            raise ValueError("direct effects read the final norm and unembedding weights here: run them without remote")
        self.batch = batch
        self.h = batch.runs["clean"]["hidden"][-1][:, -1].float()
        unembed = s.model.get_submodule(s.arch.paths.unembed)
        w = unembed.weight.float()
        a, d = batch.answer_ids.to(w.device), batch.distractor_ids.to(w.device)
        self.wa, self.wd = w[a], w[d]
        y = s.model.get_submodule(s.arch.paths.final_norm)(self.h[:, None].to(batch.runs["clean"]["hidden"][-1].dtype))
        z = unembed(y)[:, 0].float()
        rows = torch.arange(batch.B)
        self.za, self.zd = z[rows, a], z[rows, d]
        self.cap = getattr(s.model.config, "final_logit_softcapping", None)
        self.ld_clean = self._capped(self.za) - self._capped(self.zd)

    def _capped(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / self.cap) * self.cap if self.cap else z

    def write_delta(self, edit: Edit) -> torch.Tensor:
        """(B, d_model) change the edit makes to the component's residual write at the last position."""
        b = self.batch
        v = b.value("clean", edit)
        dv = (b.replacement(edit, v) - v)[:, -1].float()
        if edit.site.component != "head":
            return dv
        o_proj = b.s.model.get_submodule(b.arch.site_path("head", edit.site.layer))
        full = torch.zeros(b.B, o_proj.weight.numel() // b.arch.d_model, dtype=v.dtype, device=v.device)
        full[:, b.arch.head_slice(edit.site.head)] = dv.to(v.dtype)
        return (o_proj(full) - o_proj(torch.zeros_like(full))).float()  # o_proj is affine: its bias cancels

    @torch.inference_mode()
    def direct_drop(self, edit: Edit) -> torch.Tensor:
        """(B,) clean LD minus the LD with only the edit's direct path applied (frozen final norm)."""
        dy = frozen_norm(self.batch.s, self.h, self.write_delta(edit))
        ld = self._capped(self.za + (dy * self.wa).sum(-1)) - self._capped(self.zd + (dy * self.wd).sum(-1))
        return self.ld_clean - ld


def direct_rows(subject: Subject, items: Sequence, units: Sequence[Unit], *, seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """One row per (item, unit): `direct` = the unit's direct LD drop (NaN where undefined, `undefined_why` says
    why). Batches are the sweep's own (same family chunks, same seed), so mean/resample replacements match the
    total effects exactly; each batch costs one clean forward (Batch construction) plus the site values."""
    units = list(dict.fromkeys(units))
    why = {u: undefined_why(subject.arch, u) for u in units}
    frames = []
    patched = any(e.op.kind == "patch" for u in units for e in u.edits)  # their replacement is another run's value
    for its in batches(items, batch_size):
        b = Batch.of_items(subject, its, corrupt=patched, seed=seed)
        b.values("clean", [u.edits[0].site for u in units if not why[u]])  # every site's clean value, one trace
        r = Readout(b)
        for u in units:
            d = np.full(len(its), np.nan) if why[u] else r.direct_drop(u.edits[0]).cpu().double().numpy()
            frames.append(pd.DataFrame({"seed": seed, "item_id": [it.id for it in its], "unit": u.key,
                                        "direct": d, "undefined_why": why[u] or ""}))
    cols = ["seed", "item_id", "unit", "direct", "undefined_why"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def attach(rows: pd.DataFrame, direct: pd.DataFrame) -> pd.DataFrame:
    """Sweep rows with their `direct` column (NaN for units without one)."""
    return rows.merge(direct[["seed", "item_id", "unit", "direct"]], on=["seed", "item_id", "unit"], how="left")


def compensated(total: ArrayLike, direct: ArrayLike, min_direct: float = MIN_DIRECT) -> np.ndarray:
    """|total| < RATIO * |direct| where |direct| >= min_direct (effects as fractions of the clean LD)."""
    total, direct = np.asarray(total, float), np.asarray(direct, float)
    with np.errstate(invalid="ignore"):
        return (np.abs(direct) >= min_direct) & (np.abs(total) < RATIO * np.abs(direct))
