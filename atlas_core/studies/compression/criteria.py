"""What to remove, chosen four ways at equal depth (number of layers removed), all on the *selection* prompts:

- ``atlas``: the layers whose block zero-ablation (the engine's skip of that one layer) moves the next-token
  distribution least: mean KL(clean || skipped) over task prompts, from the cached sweep (chapter 02's units).
- ``angular``: Gromov et al. (arXiv 2403.17887): the contiguous run of n layers whose input and output residual
  states are closest in angle, d = arccos(cos(x_l, x_{l+n})) / pi at each prompt's last token, mean over prompts.
- ``block_influence``: ShortGPT (arXiv 2403.03853): BI_i = 1 - cos(x_i, x_{i+1}) over every real token; the n
  layers with the lowest BI.
- ``random``: `n_random` uniform draws of n layers (the control; a new draw per index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ...engine import tracing
from ...engine.interventions import layer_sweep
from ...engine.sweep import Cache, sweep
from ...model.subject import Subject

CRITERIA = ("atlas", "angular", "block_influence", "random")


def geometry(subject: Subject, prompts: Sequence[str], batch: int = 16) -> dict[str, np.ndarray]:
    """Residual-stream geometry: `angular` (n+1, n+1) mean arccos(cos)/pi between layer boundaries i < j at the
    last token (boundary i = input of layer i; n = the final layer's output), and `bi` (n,) Block Influence."""
    n = subject.arch.n_layers
    ang = np.zeros((n + 1, n + 1))
    bi_sum, bi_cnt, rows = np.zeros(n), 0, 0
    for s in range(0, len(prompts), batch):
        enc = subject.encode(list(prompts[s:s + batch]))
        with torch.inference_mode():
            got = tracing.forward(subject.nn, subject.arch.paths.layers, enc["input_ids"], enc["attention_mask"],
                                  hidden=True)
        h = torch.stack([x.float() for x in got["hidden"]])  # (n+1, B, T, d)
        real = enc["attention_mask"].bool()
        last = torch.nn.functional.normalize(h[:, :, -1], dim=-1)  # left padding: the last column is real
        cos = torch.einsum("ibd,jbd->ijb", last, last).clamp(-1, 1)
        ang += (torch.arccos(cos) / torch.pi).sum(-1).double().numpy()
        c = torch.nn.functional.cosine_similarity(h[:-1], h[1:], dim=-1)  # (n, B, T)
        bi_sum += ((1 - c) * real).sum((1, 2)).double().numpy()
        bi_cnt += int(real.sum())
        rows += enc["input_ids"].shape[0]
    return {"angular": ang / max(rows, 1), "bi": bi_sum / max(bi_cnt, 1)}


def atlas_effects(subject: Subject, items: Sequence, cache: Cache | None = None, seed: int = 0) -> pd.Series:
    """Mean KL(clean || one layer skipped) per layer over task items: the atlas's block zero-ablation, from the
    sweep (cached, so chapter 02's runs of the same units and items are reused)."""
    units = layer_sweep(["block"], ["zero"], subject.arch.n_layers, subject.arch)
    rows = sweep(subject, list(items), units, seed=seed, cache=cache, progress=False, desc="skip effects")
    return rows.groupby("layer")["kl"].mean().rename("kl")


def choose(criterion: str, depth: int, n_layers: int, geom: dict | None = None, effects: pd.Series | None = None,
           draw: int = 0, seed: int = 0) -> tuple[int, ...]:
    """The `depth` layers a criterion removes (draw: the random draw's index)."""
    if not 1 <= depth < n_layers:
        raise ValueError(f"depth must lie in 1..{n_layers - 1}, got {depth}")
    if criterion == "atlas":
        order = effects.reindex(range(n_layers)).fillna(np.inf).to_numpy().argsort(kind="stable")
        return tuple(sorted(int(i) for i in order[:depth]))
    if criterion == "block_influence":
        return tuple(sorted(int(i) for i in np.argsort(geom["bi"], kind="stable")[:depth]))
    if criterion == "angular":
        ang = geom["angular"]
        d = [ang[s, s + depth] for s in range(n_layers - depth + 1)]
        s = int(np.argmin(d))
        return tuple(range(s, s + depth))
    if criterion == "random":
        rng = np.random.default_rng([seed, depth, draw])
        return tuple(sorted(int(i) for i in rng.choice(n_layers, depth, replace=False)))
    raise ValueError(f"unknown criterion {criterion!r}; known: {', '.join(CRITERIA)}")


def criterion_sets(n_layers: int, depths: Sequence[int], geom: dict, effects: pd.Series, n_random: int,
                   seed: int = 0) -> pd.DataFrame:
    """One row per (criterion, depth, draw): the layers it removes. Random draws repeat a set only by chance."""
    rows = []
    for depth in depths:
        for crit in CRITERIA:
            for draw in range(n_random if crit == "random" else 1):
                layers = choose(crit, depth, n_layers, geom, effects, draw, seed)
                rows.append({"criterion": crit, "depth": depth, "draw": draw, "layers": layers})
    return pd.DataFrame(rows)


def depths(n_layers: int, fractions: Sequence[float]) -> list[int]:
    """Layers removed at each fraction of the depth (at least 1, fewer than all, distinct, ascending)."""
    return sorted({min(n_layers - 1, max(1, int(round(f * n_layers)))) for f in fractions})


def criterion_table(geom: dict, effects: pd.Series) -> pd.DataFrame:
    """Per-layer scores of the three informed criteria (lower = more removable): atlas KL, BI, and the angular
    distance of the single layer (its input vs its output)."""
    n = len(geom["bi"])
    return pd.DataFrame({"layer": range(n), "atlas_kl": effects.reindex(range(n)).to_numpy(),
                         "block_influence": geom["bi"], "angular_1": [geom["angular"][i, i + 1] for i in range(n)]})
