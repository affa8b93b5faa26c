"""Per-prompt next-token metrics of an intervened forward against the clean one."""

from __future__ import annotations

import numpy as np
import torch


def next_token(logits: torch.Tensor, clean: torch.Tensor, answer: torch.Tensor | None,
               distractor: torch.Tensor | None, k: int = 5) -> dict[str, np.ndarray]:
    """KL(clean || intervened), logit difference answer - distractor, answer probability, top-k overlap."""
    lp = torch.log_softmax(logits.float(), -1)
    lq = torch.log_softmax(clean.float(), -1)
    out = {"kl": (lq.exp() * (lq - lp)).sum(-1).clamp_min(0)}
    top = logits.topk(k, -1).indices
    ctop = clean.topk(k, -1).indices
    out["top5_overlap"] = (top[:, :, None] == ctop[:, None, :]).any(-1).float().mean(-1)
    if answer is not None:
        rows = torch.arange(logits.shape[0])
        a, d = answer.to(logits.device), distractor.to(logits.device)
        out["logit_diff"] = logits[rows, a] - logits[rows, d]
        out["p_answer"] = lp[rows, a].exp()
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}


def recovery(ld: np.ndarray, ld_clean: np.ndarray, ld_corrupt: np.ndarray, min_gap: float = 0.5) -> np.ndarray:
    """Per-prompt normalized recovery (LD - LD_corrupt) / (LD_clean - LD_corrupt); NaN where the clean - corrupt gap
    is below `min_gap` logits (negative or near zero: the ratio would only inflate noise). Grade recovery as a ratio
    of means over flipped prompts (`mean_recovery`), never as a mean of these ratios."""
    den = np.asarray(ld_clean, float) - np.asarray(ld_corrupt, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den >= min_gap, (np.asarray(ld, float) - ld_corrupt) / den, np.nan)


def mean_recovery(ld, ld_clean, ld_corrupt, positive_gap: bool = True):
    """Normalized recovery of the means, (mean LD - mean LD_corrupt) / (mean LD_clean - mean LD_corrupt): the one
    recovery formula of the package (patching's recovery; steering's fraction of the gap removed is 1 minus it).
    Means run over the last axis (a batch of bootstrap resamples gives one value each). NaN when the mean gap
    is not positive (`positive_gap`) or is zero. Callers decide first whether the gap is large enough to grade
    (`patching.gap_ok`, `steering.gap_defined`)."""
    def mean(a):
        return np.mean(np.asarray(a, dtype=float), axis=-1)

    den = mean(ld_clean) - mean(ld_corrupt)
    ok = den > 0 if positive_gap else np.abs(den) > 1e-12
    out = np.where(ok, (mean(ld) - mean(ld_corrupt)) / np.where(ok, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out
