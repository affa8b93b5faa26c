"""Contrastive directions per layer and their controls: the mean difference of last-token residuals, random
directions drawn from the fit activations' covariance, shuffled-label directions, and the layer norms α is
measured in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...engine.batch import Batch
from ...engine.interventions import Edit, Op, Site
from ...model.subject import Subject


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


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def random_directions(d: int, k: int, seed: int, acts: torch.Tensor | None = None) -> torch.Tensor:
    """k seeded random unit vectors in R^d: (k, d). With `acts` (N, d), each is drawn from N(0, Σ), Σ the covariance
    of those activations, then normalised: a null with the residual stream's anisotropy (isotropic without `acts`,
    or when the activations do not vary)."""
    gen = torch.Generator().manual_seed(seed)
    x = None if acts is None else acts.double() - acts.double().mean(0)
    if x is None or float(x.abs().max()) == 0:
        return _unit(torch.randn(k, d, generator=gen))
    return _unit((torch.randn(k, x.shape[0], generator=gen, dtype=torch.float64) @ x).float())  # cov ∝ Xcᵀ Xc


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
    shuf = (torch.stack([shuffled_diff(pos, neg, gen)[0] for _ in range(n_shuffled)], 1) if n_shuffled
            else torch.zeros(L, 0, d))
    acts = torch.cat([pos, neg], 1)
    rnd = torch.stack([random_directions(d, n_random, seed * 1000 + layer, acts[layer]) for layer in range(L)])
    norm = acts.norm(dim=-1).median(dim=1).values
    return Directions(target, subject.name, _unit(raw), rnd, _unit(shuf), norm, raw.norm(dim=-1))


def transfer(dirs: Directions, src: Subject, dst: Subject) -> Directions:
    """Use a direction found in `src` in `dst` (same width and depth required); α stays in src's layer norms."""
    a, b = src.arch.d_model, dst.arch.d_model
    if a != b:
        raise ValueError(f"cannot transfer a direction from {src.name} (d_model={a}) to {dst.name} (d_model={b}): widths differ")
    if src.arch.n_layers != dst.arch.n_layers:
        raise ValueError(f"cannot transfer per-layer directions from {src.name} ({src.arch.n_layers} layers) "
                         f"to {dst.name} ({dst.arch.n_layers} layers)")
    return Directions(dirs.target, dst.name, dirs.real, dirs.random, dirs.shuffled, dirs.norm, dirs.raw_norm)


def transfer_note(dirs: Directions, src: Subject, dst: Subject) -> str:
    """One line on whether `dirs` transfers from `src` to `dst`: the refusal's reason, or that it is possible."""
    try:
        transfer(dirs, src, dst)
    except ValueError as e:
        return str(e)
    return "same width: transfer possible"
