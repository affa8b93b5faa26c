"""The atlas: effects per (component, layer[, head], position, method, family, seed) with bootstrap CIs,
ranks, the hub and its stability across families, seeds and methods; saved as a diffable `atlas.json`.

atlas.json schema (`schema: "mi-atlas/atlas@1"`):
  model, fingerprint, n_layers, n_heads, families, seeds, methods, components, primary_metric
  effects: list of {component, layer, head (-1: whole component), position, method, family, seed, n,
            kl, kl_lo, kl_hi, ld_drop, ld_drop_lo, ld_drop_hi, p_answer, top5_overlap}
            (kl = mean KL(clean || intervened) over prompts; ld_drop = mean clean - intervened logit diff)
  hub: {component, method, layer, score, family_agreement, family_top_layers, seed_hubs, seed_std}
  method_agreement: list of {component, method_a, method_b, spearman}
  meta: free-form run parameters (no timings: the registry holds those)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from .stats import bootstrap_ci

SCHEMA = "mi-atlas/atlas@1"
KEYS = ["component", "layer", "head", "position", "method", "family", "seed"]


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON records at the precision atlas.json stores (7 decimals)."""
    return json.loads(df.to_json(orient="records", double_precision=7))


@dataclass
class Atlas:
    model: str
    fingerprint: str
    n_layers: int
    n_heads: int
    effects: pd.DataFrame
    meta: dict = field(default_factory=dict)
    primary_metric: str = "kl"

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: pd.DataFrame, model: str, fingerprint: str, n_layers: int, n_heads: int,
                  meta: dict | None = None, n_boot: int = 1000) -> Atlas:
        """Aggregate tidy per-prompt rows (from `sweep`) into effects with bootstrap 95% CIs."""
        recs = []
        for key, g in rows.groupby(KEYS, sort=True):
            kl = bootstrap_ci(g["kl"].to_numpy(), n_boot=n_boot)
            ld = bootstrap_ci(g["ld_drop"].to_numpy(), n_boot=n_boot)
            recs.append({**dict(zip(KEYS, key)), "n": len(g), "kl": kl[0], "kl_lo": kl[1], "kl_hi": kl[2],
                         "ld_drop": ld[0], "ld_drop_lo": ld[1], "ld_drop_hi": ld[2],
                         "p_answer": float(g["p_answer"].mean()), "top5_overlap": float(g["top5_overlap"].mean())})
        # held at the precision atlas.json stores, so a loaded atlas answers exactly like the one that saved it
        eff = pd.DataFrame(_records(pd.DataFrame(recs)))
        return cls(model, fingerprint, n_layers, n_heads, eff, dict(meta or {}))

    # -- views -----------------------------------------------------------------------------------
    @property
    def families(self) -> list[str]:
        return sorted(self.effects["family"].unique())

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.effects["seed"].unique())

    def _layerwise(self, component: str, method: str, position: str = "all") -> pd.DataFrame:
        e = self.effects
        return e[(e["component"] == component) & (e["method"] == method) & (e["head"] == -1) & (e["position"] == position)]

    def layer_scores(self, family: str | None = None, component: str = "block", method: str = "zero",
                     metric: str | None = None, position: str = "all") -> pd.Series:
        """Mean effect per layer (bigger = more important), over seeds and (if family is None) families."""
        metric = metric or self.primary_metric
        e = self._layerwise(component, method, position)
        if family is not None:
            e = e[e["family"] == family]
        if e.empty:
            raise KeyError(f"no effects for component={component} method={method} family={family} position={position}")
        fam_mean = e.groupby(["family", "layer"])[metric].mean()  # seeds first, then families equally
        return fam_mean.groupby("layer").mean().rename(metric)

    def head_scores(self, family: str | None = None, method: str = "zero", metric: str | None = None) -> pd.DataFrame:
        """Mean effect per (layer, head) as a layers x heads table."""
        metric = metric or self.primary_metric
        e = self.effects[(self.effects["component"] == "head") & (self.effects["method"] == method)]
        if family is not None:
            e = e[e["family"] == family]
        return e.groupby(["family", "layer", "head"])[metric].mean().groupby(["layer", "head"]).mean().unstack("head")

    def ranks(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """Per-family rank of every layer (1 = largest effect) and the overall rank."""
        e = self._layerwise(component, method)
        t = e.groupby(["family", "layer"])[self.primary_metric].mean().unstack("family")
        r = t.rank(ascending=False, method="min").astype(int)
        r["overall"] = self.layer_scores(None, component, method).rank(ascending=False, method="min").astype(int)
        return r

    def hub(self, component: str | None = None, method: str | None = None, exclude: tuple[int, ...] = ()) -> dict:
        """The top layer and how much families, seeds agree on it. `exclude` drops layers (e.g. layer 0)."""
        component = component or self._default("component", ("block", "mlp", "attn", "mixer", "resid"))
        method = method or self._default("method", ("zero", "mean", "resample", "denoise", "noise"))
        e = self._layerwise(component, method)
        e = e[~e["layer"].isin(exclude)]
        score = e.groupby(["family", "layer"])[self.primary_metric].mean().groupby("layer").mean()
        hub = int(score.idxmax())
        fam_top = e.groupby(["family", "layer"])[self.primary_metric].mean().unstack("layer").idxmax(axis=1)
        seed_top = (e.groupby(["seed", "family", "layer"])[self.primary_metric].mean()
                    .groupby(["seed", "layer"]).mean().unstack("layer").idxmax(axis=1))
        return {
            "component": component, "method": method, "layer": hub, "score": float(score.max()),
            "excluded": list(exclude),
            "family_agreement": float((fam_top == hub).mean()),
            "family_top_layers": {k: int(v) for k, v in fam_top.items()},
            "seed_hubs": {str(k): int(v) for k, v in seed_top.items()},
            "seed_std": float(np.std(seed_top.to_numpy().astype(float))) if len(seed_top) > 1 else float("nan"),
        }

    def hub_evidence(self, component: str | None = None, method: str | None = None,
                     exclude: tuple[int, ...] = ()) -> dict:
        """Evidence for "layer H is the hub": replication over seeds, methods and families, and a paired
        bootstrap CI of the hub's effect minus the median layer's effect over (family, seed) groups."""
        hub = self.hub(component, method, exclude)
        comp, meth, h = hub["component"], hub["method"], hub["layer"]
        methods = sorted(self.effects.loc[self.effects["component"] == comp, "method"].unique())
        m_hubs = {m: self.hub(comp, m, exclude)["layer"] for m in methods}
        e = self._layerwise(comp, meth)
        e = e[~e["layer"].isin(exclude)]
        t = e.pivot_table(index=["family", "seed"], columns="layer", values=self.primary_metric)
        median_layer = int(t.mean().sort_values().index[len(t.columns) // 2])
        d, lo, hi = bootstrap_ci((t[h] - t[median_layer]).to_numpy())
        return {
            "hub": h, "component": comp, "method": meth,
            "seeds_replicated": sum(v == h for v in hub["seed_hubs"].values()), "n_seeds": len(hub["seed_hubs"]),
            "methods_agreeing": sum(v == h for v in m_hubs.values()), "n_methods": len(m_hubs), "method_hubs": m_hubs,
            "families_agreeing": sum(v == h for v in hub["family_top_layers"].values()),
            "n_families": len(hub["family_top_layers"]),
            "control": f"median layer {median_layer}", "effect_minus_control": d, "ci": [lo, hi],
            "ci_excludes_control": bool(lo > 0),
        }

    def method_agreement(self) -> pd.DataFrame:
        """Spearman correlation of layer effects between each pair of methods, per component."""
        recs = []
        e = self.effects[(self.effects["head"] == -1) & (self.effects["position"] == "all")]
        for comp, g in e.groupby("component"):
            t = g.groupby(["method", "family", "layer"])[self.primary_metric].mean().groupby(["method", "layer"]).mean()
            t = t.unstack("method")
            for a, b in combinations(sorted(t.columns), 2):
                rho = spearmanr(t[a], t[b]).statistic if len(t) > 2 else float("nan")
                recs.append({"component": comp, "method_a": a, "method_b": b, "spearman": float(rho)})
        return pd.DataFrame(recs, columns=["component", "method_a", "method_b", "spearman"])

    def position_effects(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """Layer effects at the first vs last token (where those units were run)."""
        e = self.effects[(self.effects["component"] == component) & (self.effects["method"] == method)
                         & (self.effects["position"].isin(["first", "last", "all"]))]
        return e.groupby(["position", "family", "layer"])[self.primary_metric].mean().groupby(["position", "layer"]).mean().unstack("position")

    def _default(self, col: str, prefs: tuple[str, ...]) -> str:
        have = set(self.effects[col].unique())
        for p in prefs:
            if p in have:
                return p
        return sorted(have)[0]

    # -- persistence -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        eff = self.effects.sort_values(KEYS).reset_index(drop=True)
        recs = _records(eff)
        hub = self.hub() if not self._layerwise_any().empty else None
        return {
            "schema": SCHEMA, "model": self.model, "fingerprint": self.fingerprint, "n_layers": self.n_layers,
            "n_heads": self.n_heads, "families": self.families, "seeds": self.seeds,
            "methods": sorted(self.effects["method"].unique()), "components": sorted(self.effects["component"].unique()),
            "primary_metric": self.primary_metric, "effects": recs, "hub": hub,
            "method_agreement": _records(self.method_agreement()),
            "meta": self.meta,
        }

    def _layerwise_any(self) -> pd.DataFrame:
        return self.effects[(self.effects["head"] == -1) & (self.effects["position"] == "all")]

    def save(self, path: str | Path) -> Path:
        """Write atlas.json atomically (a crash never leaves a half-written file)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "atlas.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Atlas:
        path = Path(path)
        if path.is_dir():
            path = path / "atlas.json"
        d = json.loads(path.read_text())
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not an atlas ({d.get('schema')!r} != {SCHEMA!r})")
        return cls(d["model"], d["fingerprint"], d["n_layers"], d["n_heads"], pd.DataFrame(d["effects"]),
                   d.get("meta", {}), d.get("primary_metric", "kl"))


def diff(a: Atlas, b: Atlas, metric: str = "kl", bins: int | None = None) -> pd.DataFrame:
    """Per-component change b - a, averaged over seeds and families. When layer counts differ the
    layers are depth-normalized (layer / (n_layers - 1)) and binned into `bins` (default: the smaller depth)."""
    def table(x: Atlas, nb: int | None):
        e = x.effects.groupby(["component", "head", "position", "method", "family", "layer"])[metric].mean()
        e = e.groupby(["component", "head", "position", "method", "layer"]).mean().reset_index()
        if nb:
            e["layer"] = np.minimum((e["layer"] / max(1, x.n_layers - 1) * nb).astype(int), nb - 1)
            e = e.groupby(["component", "head", "position", "method", "layer"])[metric].mean().reset_index()
        return e.set_index(["component", "head", "position", "method", "layer"])[metric]

    nb = bins if bins else (None if a.n_layers == b.n_layers else min(a.n_layers, b.n_layers))
    ta, tb = table(a, nb), table(b, nb)
    out = pd.concat({"a": ta, "b": tb}, axis=1).dropna()
    out["delta"] = out["b"] - out["a"]
    out = out.reset_index().rename(columns={"layer": "depth_bin" if nb else "layer"})
    return out.sort_values("delta", key=np.abs, ascending=False).reset_index(drop=True)


def map_atlas(
    subject,
    families=None,
    components=("block", "attn", "mlp"),
    methods=("zero", "mean", "resample"),
    seeds=(42, 137, 256),
    prompts_per_family: int = 16,
    heads: bool = True,
    positions=("first", "last"),
    bucket: str = "short",
    variant: str = "synthetic",
    out: str | Path | None = None,
    progress: bool = True,
    cache=None,
) -> Atlas:
    """Sample prompts per family and seed, sweep every unit, aggregate into an Atlas (and save it).

    positions: extra block zero-ablation units at these token positions (first / last token effects)."""
    from . import registry, tasks
    from .interventions import Site, Unit, head_sweep, layer_sweep, method_op
    from .sweep import Cache, code_version, sweep

    t0 = time.time()
    fams = list(families or tasks.FAMILIES)
    unknown = sorted(set(fams) - set(tasks.FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(tasks.FAMILIES)}")
    arch = subject.arch
    items_all, report = tasks.validate(
        [it for f in fams for it in tasks.load_items(f, variant=variant, bucket=bucket)], subject.tokenizer)
    cache = cache if cache is not None else Cache()
    frames, stats = [], {"computed": 0, "cached": 0}
    for seed in seeds:
        items = [it for f in fams for it in tasks.sample([i for i in items_all if i.family == f], prompts_per_family, seed)]
        units = layer_sweep(components, methods, arch.n_layers, arch, seed=seed)
        if heads:
            units += head_sweep(arch, "zero")
        for pos in positions:
            units += [Unit.of(Site("block", layer, position=pos), method_op("zero"))
                      for layer in range(arch.n_layers)]
        df = sweep(subject, items, units, seed=seed, cache=cache, progress=progress, desc=f"atlas seed {seed}")
        stats["computed"] += df.attrs["computed"]
        stats["cached"] += df.attrs["cached"]
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    meta = {"families": fams, "components": list(components), "methods": list(methods), "seeds": list(seeds),
            "prompts_per_family": prompts_per_family, "heads": heads, "positions": list(positions),
            "bucket": bucket, "variant": variant, "code_version": code_version(), "suite_hash": tasks.suite_hash(items_all),
            "dropped_by_validation": int(report["total"].sum() - report["kept"].sum()) if len(report) else 0}
    atlas = Atlas.from_rows(rows, subject.name, subject.fingerprint, arch.n_layers, arch.n_heads, meta)
    paths = {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths["atlas"] = str(atlas.save(out))
        rows.to_parquet(out / "rows.parquet.tmp", index=False)
        (out / "rows.parquet.tmp").replace(out / "rows.parquet")
        paths["rows"] = str(out / "rows.parquet")
    wall = time.time() - t0
    registry.append("atlas", model=subject.name, fingerprint=subject.fingerprint, params=meta,
                    units_computed=stats["computed"], units_cached=stats["cached"], seconds=round(wall, 2), outputs=paths)
    atlas.run_stats = {"computed": stats["computed"], "cached": stats["cached"], "seconds": wall}
    return atlas
