"""Localization on held-out halves: a site chosen out of many is chosen on one half of a family's prompts and
tested on the other half (exact sign-flip test, `excess_p`) — where the decision reaches the last position
(`crossover`) and the strongest single write at the last token (`top_write`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ... import tasks
from .recovery import excess_p, flipped_rows, recovery_of
from .sites import SITE


def halves(ids: Sequence[str], seed: int = 0) -> tuple[set, set]:
    """A seeded split of prompt ids into a selection half and a held-out test half."""
    order = [str(i) for i in tasks.sample(sorted({str(i) for i in ids}), len(set(ids)), seed)]
    return set(order[: len(order) // 2]), set(order[len(order) // 2:])


def rows_at(g: pd.DataFrame, ids: set, **site) -> pd.DataFrame:
    """The rows of prompts in `ids` at one site (column == value for each keyword)."""
    m = g["item_id"].astype(str).isin(ids)
    for k, v in site.items():
        m &= g[k] == v
    return g[m]


def crossover(rows: pd.DataFrame, family: str, n_layers: int, seed: int = 0, theta: float = 0.5) -> dict:
    """Where the decision reaches the last position: the earliest layer before the final one whose last-token
    residual restores more than theta on the selection half (lower 95% bootstrap bound), tested on the held-out half
    (exact sign-flip test of recovery > theta, denoising and noising).

    The final layer is left out (its last-token residual is the logits' input), and so are prompts whose last
    token differs (every last-token residual patch then restores them by construction)."""
    fam = flipped_rows(rows[rows["family"] == family])
    sel, test = halves(fam["item_id"], seed)
    trivial = fam["last_in_span"].astype(bool) if "last_in_span" in fam else pd.Series(False, index=fam.index)
    r = fam[(fam["component"] == "resid") & ~trivial]
    cand = sorted(int(x) for x in r["layer"].unique() if x < n_layers - 1)
    ci = {L: recovery_of(rows_at(r, sel, layer=L, position="last", method="denoise")) for L in cand}
    r_sel = {L: v[0] for L, v in ci.items()}
    layer = next((L for L in cand if ci[L][1] > theta), None)
    out = {"family": family, "n_candidates": len(cand), "n_select": len(sel), "n_test": len(test), "layer": layer}
    if layer is None:
        best = max(cand, key=lambda L: -np.inf if np.isnan(r_sel[L]) else r_sel[L], default=None)
        return out | {"best_layer": best, "select_recovery": r_sel.get(best, np.nan), "p": np.nan}
    den = rows_at(r, test, layer=layer, position="last", method="denoise")
    noi = rows_at(r, test, layer=layer, position="last", method="noise")
    est, lo, hi = recovery_of(den)
    return out | {"select_recovery": r_sel[layer], "recovery": est, "recovery_lo": lo, "recovery_hi": hi,
                  "p": excess_p(den, theta), "noise_score": 1 - recovery_of(noi)[0], "noise_p": excess_p(noi, theta),
                  "span_recovery": recovery_of(rows_at(r, test, layer=layer, position="span", method="denoise"))[0]}


def top_write(rows: pd.DataFrame, family: str, seed: int = 0) -> dict:
    """The strongest single write at the last token (block, attention, MLP or head; not the residual), chosen by
    denoising recovery on the selection half and tested (recovery > 0, noising) on the held-out half."""
    fam = flipped_rows(rows[rows["family"] == family])
    sel, test = halves(fam["item_id"], seed)
    w = fam[(fam["position"] == "last") & (fam["component"] != "resid")]
    sites = {k: recovery_of(rows_at(g, sel))[0] for k, g in w[w["method"] == "denoise"].groupby(SITE)}
    sites = {k: v for k, v in sites.items() if np.isfinite(v)}
    out = {"family": family, "n_candidates": len(sites), "n_select": len(sel), "n_test": len(test)}
    if not sites:
        return out | {"component": None, "p": np.nan}
    comp, layer, head, _ = max(sites, key=sites.get)
    site = {"component": comp, "layer": layer, "head": head, "position": "last"}
    den, noi = rows_at(w, test, **site, method="denoise"), rows_at(w, test, **site, method="noise")
    est, lo, hi = recovery_of(den)
    return out | {**site, "select_recovery": sites[(comp, layer, head, "last")], "recovery": est, "recovery_lo": lo,
                  "recovery_hi": hi, "p": excess_p(den, 0.0), "noise_score": 1 - recovery_of(noi)[0] if len(noi) else np.nan,
                  "noise_p": excess_p(noi, 0.0) if len(noi) else np.nan}
