"""The effects table: per-prompt sweep rows aggregated into one row per cell (`KEYS`) with 95% CIs, the
item splits, and the records atlas.json stores."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from ...evidence.stats import bootstrap_cis
from ...tasks import flipped, solved

SCHEMA = "mi-atlas/atlas@2"
KEYS = ["component", "layer", "head", "position", "method", "family", "seed", "split"]
UNIT_KEYS = [k for k in KEYS if k not in ("family", "split")]  # a unit in one seed, on any prompts
SPLITS = ("select", "test")


def split_of(item_id: str) -> str:
    """The item's split, fixed by its id: the same prompt is in the same split in every seed and run."""
    return SPLITS[hashlib.blake2b(str(item_id).encode(), digest_size=1).digest()[0] % 2]


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON records at the precision atlas.json stores (7 decimals)."""
    return json.loads(df.to_json(orient="records", double_precision=7))


def _positive(x: pd.Series) -> pd.Series:
    """x where it is > 0, else NaN: a fraction is taken of a positive clean LD only."""
    return x.where(x > 0)


def means(rows: pd.DataFrame) -> pd.DataFrame:
    """`cell`'s point estimates for every cell at once, without intervals."""
    rows = rows.assign(direct=rows["direct"] if "direct" in rows else np.nan)
    g = rows.groupby(KEYS, sort=True)
    out = g.agg(n=("kl", "size"), kl=("kl", "mean"), ld_drop=("ld_drop", "mean"),
                p_answer=("p_answer", "mean"), top5_overlap=("top5_overlap", "mean"), ld_clean=("ld_clean", "mean"),
                direct_drop=("direct", "mean"))
    f = rows[rows["flipped"]].groupby(KEYS, sort=True).agg(n_solved=("kl", "size"), drop=("ld_drop", "mean"),
                                                           clean=("ld_clean", "mean"), fdirect=("direct", "mean"))
    out = out.join(f, how="left")
    out["n_solved"] = out["n_solved"].fillna(0).astype(int)
    out["ld_frac"] = out.pop("drop") / out["clean"]
    out["direct_frac"] = out.pop("fdirect") / _positive(out.pop("clean"))
    out["ld_frac_all"] = out["ld_drop"] / _positive(out["ld_clean"])
    out["direct_frac_all"] = out["direct_drop"] / _positive(out["ld_clean"])
    return out.reset_index()


def with_cis(rows: pd.DataFrame, recs: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """`means`' cells with studentized-bootstrap 95% CIs (`stats.bootstrap_cis`, all cells at once) of the mean KL,
    the mean LD drop and ld_frac, the flipped items' LD drop as a fraction of their mean clean LD."""
    gid = rows.groupby(KEYS, sort=True).ngroup().to_numpy()
    order = np.argsort(gid, kind="stable")
    cuts = np.flatnonzero(np.diff(gid[order])) + 1
    flip = rows["flipped"].to_numpy(bool)[order]
    drop, clean = rows["ld_drop"].to_numpy(float)[order], rows["ld_clean"].to_numpy(float)[order]
    fr = [d[f] / c[f].mean() if f.any() else d[:0] for d, c, f in
          zip(np.split(drop, cuts), np.split(clean, cuts), np.split(flip, cuts), strict=True)]
    out = recs.copy()
    for name, arrays in (("kl", np.split(rows["kl"].to_numpy(float)[order], cuts)),
                         ("ld_drop", np.split(drop, cuts)), ("ld_frac", fr)):
        ci = bootstrap_cis(arrays, n_boot=n_boot)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = ci[:, 0], ci[:, 1], ci[:, 2]
    cols = ["n", "kl", "kl_lo", "kl_hi", "ld_drop", "ld_drop_lo", "ld_drop_hi", "n_solved", "ld_frac", "ld_frac_lo",
            "ld_frac_hi", "p_answer", "top5_overlap", "ld_clean", "ld_frac_all", "direct_drop", "direct_frac",
            "direct_frac_all"]
    return out[KEYS + cols]


def neutral_kl(neutral: pd.DataFrame) -> pd.DataFrame:
    """Mean KL per (unit, seed) on neutral text, keyed like the effects (any family, any split)."""
    return neutral.groupby(UNIT_KEYS, sort=True)["kl"].mean().rename("kl_neutral").reset_index()


def aggregate(rows: pd.DataFrame, n_boot: int = 1000,
              neutral: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(effects, solved) from tidy per-prompt sweep rows: one row per cell with CIs (n_boot=0: means only, for
    null simulations), `kl_neutral` and `specificity` from `neutral` rows; both at atlas.json's precision, so a
    loaded atlas answers exactly like the one that saved it."""
    rows = rows.assign(split=[split_of(i) for i in rows["item_id"]],
                       flipped=flipped(rows["ld_clean"], rows["ld_corrupt"]))
    recs = with_cis(rows, means(rows), n_boot) if n_boot else means(rows)
    if neutral is not None and len(neutral):
        recs = recs.merge(neutral_kl(neutral), on=UNIT_KEYS, how="left")
    else:
        recs["kl_neutral"] = np.nan
    recs["specificity"] = recs["kl"] - recs["kl_neutral"]
    return pd.DataFrame(records(recs)), pd.DataFrame(records(solved(rows)))
