"""The effects table: per-prompt sweep rows aggregated into one row per cell (`KEYS`) with 95% CIs, the
item splits, and the records atlas.json stores."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from ...evidence.stats import bootstrap_ci
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


def _ratio(num: float, den: float) -> float:
    """num / den where den > 0 (a fraction of the clean LD), else NaN."""
    return float(num / den) if np.isfinite(den) and den > 0 else float("nan")


def _extra(g: pd.DataFrame) -> dict:
    """Point estimates beside the CI'd ones: all-item fractions and the direct effect (when rows carry `direct`)."""
    f = g[g["flipped"]]
    clean_all, clean_f = g["ld_clean"].mean(), f["ld_clean"].mean() if len(f) else np.nan
    direct = g["direct"] if "direct" in g else pd.Series(np.nan, index=g.index)
    d_all = direct.mean() if direct.notna().any() else np.nan
    d_f = direct[f.index].mean() if len(f) and direct[f.index].notna().any() else np.nan
    return {"ld_clean": float(clean_all), "ld_frac_all": _ratio(g["ld_drop"].mean(), clean_all),
            "direct_drop": float(d_all), "direct_frac": _ratio(d_f, clean_f), "direct_frac_all": _ratio(d_all, clean_all)}


def cell(g: pd.DataFrame, n_boot: int) -> dict:
    """One cell's effects (the rows of one `KEYS` group, `flipped` marked) with studentized-bootstrap 95% CIs."""
    kl = bootstrap_ci(g["kl"].to_numpy(), n_boot=n_boot)
    ld = bootstrap_ci(g["ld_drop"].to_numpy(), n_boot=n_boot)
    f = g[g["flipped"]]
    den = f["ld_clean"].mean() if len(f) else np.nan
    fr = bootstrap_ci((f["ld_drop"] / den).to_numpy(), n_boot=n_boot) if len(f) else (np.nan,) * 3
    return {"n": len(g), "kl": kl[0], "kl_lo": kl[1], "kl_hi": kl[2], "ld_drop": ld[0], "ld_drop_lo": ld[1],
            "ld_drop_hi": ld[2], "n_solved": len(f), "ld_frac": fr[0], "ld_frac_lo": fr[1], "ld_frac_hi": fr[2],
            "p_answer": float(g["p_answer"].mean()), "top5_overlap": float(g["top5_overlap"].mean()), **_extra(g)}


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
    if n_boot:
        recs = pd.DataFrame([{**dict(zip(KEYS, key)), **cell(g, n_boot)} for key, g in rows.groupby(KEYS, sort=True)])
    else:
        recs = means(rows)
    if neutral is not None and len(neutral):
        recs = recs.merge(neutral_kl(neutral), on=UNIT_KEYS, how="left")
    else:
        recs["kl_neutral"] = np.nan
    recs["specificity"] = recs["kl"] - recs["kl_neutral"]
    return pd.DataFrame(records(recs)), pd.DataFrame(records(solved(rows)))
