"""Recovery tables with CIs: normalized recovery of the mean logit difference over flipped prompts (a ratio of
means, `metrics.mean_recovery`) with a percentile bootstrap CI over prompts (`stats.resample_ci`), refused where
the clean − corrupt gap is not clearly positive; the per-site exceedance test, and the chapter's tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ... import tasks
from ...evidence import metrics
from ...evidence.stats import resample_ci, sign_flip_p
from .sites import MIN_GAP

NAN3 = (float("nan"),) * 3


def gap_ok(gap: ArrayLike, min_gap: float = MIN_GAP) -> bool:
    """Is the mean clean − corrupt gap clearly positive: >= min_gap logits and > 2 standard errors?"""
    g = np.asarray(gap, float)
    g = g[np.isfinite(g)]
    if g.size == 0:
        return False
    se = g.std(ddof=1) / np.sqrt(g.size) if g.size > 1 else 0.0
    return bool(g.mean() >= min_gap and g.mean() > 2 * se)


def _ratio(sample: tuple) -> float:
    return metrics.mean_recovery(*sample)


def recovery_ci(ld: ArrayLike, ld_clean: ArrayLike, ld_corrupt: ArrayLike, n_boot: int = 1000, seed: int = 0,
                min_gap: float = MIN_GAP) -> tuple[float, float, float]:
    """Normalized recovery of the means with a percentile bootstrap CI over prompts (the three per-prompt values
    resampled together); NaN when the mean gap is not clearly positive (`gap_ok`)."""
    ld, c, x = (np.asarray(a, float) for a in (ld, ld_clean, ld_corrupt))
    if not gap_ok(c - x, min_gap):
        return NAN3
    return resample_ci(_ratio, (ld, c, x), n_boot=n_boot, seed=seed, vectorized=True)


def recovery_of(g: pd.DataFrame) -> tuple[float, float, float]:
    """`recovery_ci` of a frame's rows (logit_diff, ld_clean, ld_corrupt); NaN without rows."""
    return recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"]) if len(g) else NAN3


def excess_p(g: pd.DataFrame, theta: float = 0.0, min_gap: float = MIN_GAP) -> float:
    """One-sided exact sign-flip p that a site's score exceeds `theta`, over its prompts (rows of one method).

    score > theta  <=>  mean(num_i − theta · gap_i) > 0, with num = LD − LD_corrupt (denoising) or LD_clean − LD
    (noising) and gap = LD_clean − LD_corrupt: the ratio of means tested through per-prompt terms. NaN without
    rows or a clearly positive gap."""
    if not len(g):
        return float("nan")
    t = g.groupby("item_id")[["logit_diff", "ld_clean", "ld_corrupt"]].mean()
    gap = t["ld_clean"] - t["ld_corrupt"]
    if not gap_ok(gap, min_gap):
        return float("nan")
    noise = bool((g["method"] == "noise").all())
    num = t["ld_clean"] - t["logit_diff"] if noise else t["logit_diff"] - t["ld_corrupt"]
    return sign_flip_p((num - theta * gap).to_numpy(), "greater")


def flipped_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of prompts the model flips (clean LD > 0 > corrupt LD)."""
    return df[tasks.flipped(df["ld_clean"], df["ld_corrupt"])] if len(df) else df


SUMMARY = ["recovery", "recovery_lo", "recovery_hi", "kl", "n", "score", "score_lo", "score_hi"]


def summarize(df: pd.DataFrame, by: Sequence[str] = ("family", "component", "layer", "head", "position", "method"),
              n_boot: int = 1000, flipped_only: bool = True) -> pd.DataFrame:
    """One row per group: recovery with CI, score (recovery for denoising, 1 − recovery for noising), mean KL;
    over flipped prompts only unless `flipped_only` is False."""
    df = flipped_rows(df) if flipped_only else df
    rows = []
    for key, g in df.groupby(list(by)):
        est, lo, hi = recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"], n_boot=n_boot)
        r = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        noise = r.get("method") == "noise"
        r |= {"recovery": est, "recovery_lo": lo, "recovery_hi": hi, "kl": g["kl"].mean(), "n": len(g),
              "score": 1 - est if noise else est, "score_lo": 1 - hi if noise else lo,
              "score_hi": 1 - lo if noise else hi}
        rows.append(r)
    return pd.DataFrame(rows, columns=[*by, *SUMMARY])


def layer_maps(summ: pd.DataFrame) -> pd.DataFrame:
    """`summarize`'s rows of whole components (no heads) with `panel` = "position · method": one map per panel."""
    lay = summ[summ["component"] != "head"]
    return lay.assign(panel=lay["position"] + " · " + lay["method"])


def top_sites(summ: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The `k` strongest denoising sites per family (by score) with the noising score of the same site: a site that
    both restores and breaks the behaviour carries it on its own. A description of the sample, not a test."""
    key = ["family", "component", "layer", "head", "position"]
    den = summ[summ["method"] == "denoise"].set_index(key)
    noi = summ[summ["method"] == "noise"].set_index(key)[["score", "score_lo", "score_hi"]].add_prefix("noise_")
    top = den.join(noi).reset_index().sort_values("score", ascending=False).groupby("family").head(k)
    return top[[*key, "score", "score_lo", "score_hi", "noise_score", "noise_score_lo", "kl"]]
