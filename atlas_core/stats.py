"""Small statistics helpers: bootstrap confidence intervals over prompts."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, stat=np.mean) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap over the sample (prompts are a sample, not the population)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    est = float(stat(x))
    if x.size == 1:
        return est, est, est
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = stat(x[idx], axis=1) if stat in (np.mean, np.median) else np.array([stat(x[i]) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return est, float(lo), float(hi)


def paired_ci(a, b, **kw) -> tuple[float, float, float]:
    """Bootstrap CI of the mean paired difference a - b (same prompts under two conditions)."""
    return bootstrap_ci(np.asarray(a, float) - np.asarray(b, float), **kw)


def empirical_p(value: float, null) -> float:
    """One-sided empirical p-value of `value` against a null sample (add-one smoothed)."""
    null = np.asarray(null, dtype=float)
    return float((1 + np.sum(null >= value)) / (1 + null.size))


def zscore(value: float, null) -> float:
    null = np.asarray(null, dtype=float)
    sd = null.std(ddof=1) if null.size > 1 else 0.0
    return float((value - null.mean()) / sd) if sd > 0 else float("inf") * np.sign(value - null.mean())
