"""Does the map hold up across prompt length? The atlas (block and MLP, >= 2 methods) per length bucket, the hub per
bucket, and a rank correlation of every family's layer profile between buckets.

Each bucket gets its own flip gate (`tasks.gate` on that bucket's items): a family that flips on short prompts may
not on long ones. A family's profile is compared in `ld_frac` where the gate passes it in both buckets, else in KL
(disruption), and the table says which."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ... import tasks
from ...evidence.stats import spearman_perm
from ...model.subject import Subject
from ..atlas import Atlas, map_atlas


def bucket_lengths(subject: Subject, families: Sequence[str], buckets: Sequence[str]) -> pd.DataFrame:
    """Token lengths of each bucket's prompts under the subject's tokenizer (min, median, max) against the bucket's
    nominal range: what "long" really means for this model."""
    rows = []
    for b in buckets:
        n = [len(subject.tokenizer(it.prompt)["input_ids"]) for f in families for it in tasks.load_items(f, bucket=b)]
        lo, hi = tasks.BUCKETS[b]
        rows.append({"bucket": b, "nominal": f"{lo}-{hi}", "n_items": len(n), "min": int(np.min(n)),
                     "median": int(np.median(n)), "max": int(np.max(n)),
                     "in_range": float(np.mean([lo <= x <= hi for x in n]))})
    return pd.DataFrame(rows)


def length_atlases(subject: Subject, families: Sequence[str], P: dict, seed: int) -> dict[str, Atlas]:
    """One atlas per bucket of `P["buckets"]`: `P["components"]` x `P["methods"]` on `P["prompts"][bucket]` prompts
    per family at every `P["layer_stride"][bucket]`-th layer, one seed, gated by that bucket's own flip gate on
    `P["n_gate"]` items (a shorter bucket's sweeps come from the cache when chapter 02 ran them)."""
    out = {}
    for b in P["buckets"]:
        gate = tasks.gate(subject, families, n=P["n_gate"][b], seed=seed, bucket=b)
        stride = P["layer_stride"].get(b, 1)
        out[b] = map_atlas(subject, list(families), P["components"], P["methods"], [seed], P["prompts"][b],
                           heads=False, positions=(), bucket=b, neutral_prompts=0, direct=False, gate=gate,
                           layers=range(0, subject.arch.n_layers, stride), progress=True)
    return out


def _metric(atlases: Sequence[Atlas], family: str) -> str:
    return "ld_frac" if all(family in a.testable_families for a in atlases) else "kl"


def profiles(atlases: dict[str, Atlas], components: Sequence[str], methods: Sequence[str]) -> pd.DataFrame:
    """Tidy per-layer effects: bucket, component, method, family, metric, layer, value (NaN where not swept)."""
    rows = []
    fams = sorted(set.intersection(*(set(a.families) for a in atlases.values())))
    for f in fams:
        metric = _metric(list(atlases.values()), f)
        for b, a in atlases.items():
            for c in components:
                for m in methods:
                    s = a.layer_scores(f, c, m, metric=metric)
                    rows += [{"bucket": b, "component": c, "method": m, "family": f, "metric": metric, "layer": int(k),
                              "value": float(v)} for k, v in s.items() if np.isfinite(v)]
    return pd.DataFrame(rows)


def hubs(prof: pd.DataFrame) -> pd.DataFrame:
    """Per bucket, component and method: the hub (top layer of the family-averaged profile, over the families'
    common metric per family) and each family's own top layer."""
    rows = []
    for (b, c, m), g in prof.groupby(["bucket", "component", "method"], sort=False):
        mean = g.groupby("layer")["value"].mean()
        own = g.loc[g.groupby("family")["value"].idxmax()].set_index("family")["layer"]
        rows.append({"bucket": b, "component": c, "method": m, "hub": int(mean.idxmax()), "hub_score": float(mean.max()),
                     "n_layers_swept": int(mean.size), "family_hubs": {k: int(v) for k, v in own.items()}})
    return pd.DataFrame(rows)


def agreement(prof: pd.DataFrame, ref: str = "short") -> pd.DataFrame:
    """Per family, component, method and other bucket: Spearman of its layer profile against the `ref` bucket's
    over the layers both swept, with a permutation p (`spearman_perm`); and whether the family's top layer moved."""
    rows = []
    for (c, m, f), g in prof.groupby(["component", "method", "family"], sort=False):
        w = g.pivot_table(index="layer", columns="bucket", values="value")
        if ref not in w:
            continue
        for b in [x for x in w.columns if x != ref]:
            both = w[[ref, b]].dropna()
            rho, p, _ = spearman_perm(both[ref].to_numpy(), both[b].to_numpy()) if len(both) > 2 else (np.nan,) * 3
            rows.append({"component": c, "method": m, "family": f, "bucket": b, "metric": g["metric"].iloc[0],
                         "n_layers": len(both), "spearman": rho, "p_value": p,
                         "hub_ref": int(both[ref].idxmax()) if len(both) else -1,
                         "hub": int(both[b].idxmax()) if len(both) else -1})
    return pd.DataFrame(rows)
