"""The atlas: effects per (component, layer[, head], position, method, family, seed, split) with 95% CIs,
ranks, the hub and its stability across families, seeds and methods; saved as a diffable `atlas.json`.

What it measures (see the method page). The headline metric is `ld_frac`: the fraction of the clean
answer-vs-distractor logit difference an ablation removes, on the items the model *flips* (clean LD > 0,
corrupt LD < 0), so families are on one normalized scale and only behaviour the model has is localized.
KL(clean || ablated) over the whole vocabulary stays beside it as a disruption measure. A family whose
flip rate does not pass `tasks.FLIP_GATE` is not testable: its KL map is shown, but no claim localizes it.
Every item is assigned once, by a hash of its id, to the `select` or the `test` split: a hub (a best layer
out of many) is chosen on `select` and tested on `test`, so its control is not graded on the prompts
that chose it.

atlas.json schema (`schema: "mi-atlas/atlas@2"`):
  model, fingerprint, n_layers, n_heads, families, seeds, methods, components, primary_metric
  effects: list of {component, layer, head (-1: whole component), position, method, family, seed, split, n,
            kl, kl_lo, kl_hi, ld_drop, ld_drop_lo, ld_drop_hi, n_solved, ld_frac, ld_frac_lo, ld_frac_hi,
            p_answer, top5_overlap, ld_clean, ld_frac_all, direct_drop, direct_frac, direct_frac_all,
            kl_neutral, specificity}
            (kl = mean KL(clean || intervened) over the cell's prompts; ld_drop = mean clean - intervened
            logit diff; ld_frac = mean drop / mean clean LD over the cell's flipped prompts, NaN if none;
            ld_frac_all = the same over all the cell's prompts (NaN unless the mean clean LD > 0); direct_* = the
            direct effect through the unembedding (`direct.py`), NaN where undefined; kl_neutral = the unit's mean
            KL on length-matched neutral sentences (`neutral.py`), specificity = kl - kl_neutral, NaN for units
            not swept on neutral text (heads, single positions). Atlases saved before these columns load with
            them absent; the views that need them then show NaN.)
  solved: list of {family, n_items, n_flipped, flip_rate, flip_lo, flip_hi, testable}
  hub: {component, method, metric, layer, score, testable, family_agreement, family_top_layers, seed_hubs,
        seed_scores}
  method_agreement: list of {component, method_a, method_b, spearman, p_value}
  meta: free-form run parameters (no timings: the registry holds those)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..evidence.stats import bootstrap_ci, sign_flip_p

SCHEMA = "mi-atlas/atlas@2"
KEYS = ["component", "layer", "head", "position", "method", "family", "seed", "split"]
SPLITS = ("select", "test")


def split_of(item_id: str) -> str:
    """The item's split, fixed by its id: the same prompt is in the same split in every seed and run."""
    return SPLITS[hashlib.blake2b(str(item_id).encode(), digest_size=1).digest()[0] % 2]


def _records(df: pd.DataFrame) -> list[dict]:
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


def _cell(g: pd.DataFrame, n_boot: int) -> dict:
    kl = bootstrap_ci(g["kl"].to_numpy(), n_boot=n_boot)
    ld = bootstrap_ci(g["ld_drop"].to_numpy(), n_boot=n_boot)
    f = g[g["flipped"]]
    den = f["ld_clean"].mean() if len(f) else np.nan
    fr = bootstrap_ci((f["ld_drop"] / den).to_numpy(), n_boot=n_boot) if len(f) else (np.nan,) * 3
    return {"n": len(g), "kl": kl[0], "kl_lo": kl[1], "kl_hi": kl[2], "ld_drop": ld[0], "ld_drop_lo": ld[1],
            "ld_drop_hi": ld[2], "n_solved": len(f), "ld_frac": fr[0], "ld_frac_lo": fr[1], "ld_frac_hi": fr[2],
            "p_answer": float(g["p_answer"].mean()), "top5_overlap": float(g["top5_overlap"].mean()), **_extra(g)}


def _means(rows: pd.DataFrame) -> pd.DataFrame:
    """`_cell`'s point estimates for every cell at once, without intervals."""
    rows = rows.assign(direct=rows["direct"] if "direct" in rows else np.nan)
    g = rows.groupby(KEYS, sort=True)
    out = g.agg(n=("kl", "size"), kl=("kl", "mean"), ld_drop=("ld_drop", "mean"),
                p_answer=("p_answer", "mean"), top5_overlap=("top5_overlap", "mean"), ld_clean=("ld_clean", "mean"),
                direct_drop=("direct", "mean"))
    f = rows[rows["flipped"]].groupby(KEYS, sort=True).agg(n_solved=("kl", "size"), drop=("ld_drop", "mean"),
                                                           clean=("ld_clean", "mean"), fdirect=("direct", "mean"))
    out = out.join(f, how="left")
    out["n_solved"] = out["n_solved"].fillna(0).astype(int)
    pos = lambda x: x.where(x > 0)  # noqa: E731 - a fraction of a positive clean LD only
    out["ld_frac"] = out.pop("drop") / out["clean"]
    out["direct_frac"] = out.pop("fdirect") / pos(out.pop("clean"))
    out["ld_frac_all"] = out["ld_drop"] / pos(out["ld_clean"])
    out["direct_frac_all"] = out["direct_drop"] / pos(out["ld_clean"])
    return out.reset_index()


def _neutral_kl(neutral: pd.DataFrame) -> pd.DataFrame:
    """Mean KL per (unit, seed) on neutral text, keyed like the effects (any split)."""
    keys = [k for k in KEYS if k not in ("family", "split")]
    return neutral.groupby(keys, sort=True)["kl"].mean().rename("kl_neutral").reset_index()


@dataclass
class Atlas:
    model: str
    fingerprint: str
    n_layers: int
    n_heads: int
    effects: pd.DataFrame
    meta: dict = field(default_factory=dict)
    primary_metric: str = "ld_frac"
    solved: pd.DataFrame = field(default_factory=pd.DataFrame)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: pd.DataFrame, model: str, fingerprint: str, n_layers: int, n_heads: int,
                  meta: dict | None = None, n_boot: int = 1000, neutral: pd.DataFrame | None = None) -> Atlas:
        """Aggregate tidy per-prompt rows (from `sweep`) into effects with 95% CIs (studentized bootstrap).

        Rows may carry `direct` (`direct.attach`); `neutral` are sweep rows of the same units on neutral text
        (`neutral_items`), giving each cell `kl_neutral` and `specificity` = kl - kl_neutral."""
        from ..tasks import flipped, solved

        rows = rows.assign(split=[split_of(i) for i in rows["item_id"]],
                           flipped=flipped(rows["ld_clean"], rows["ld_corrupt"]))
        if n_boot:
            recs = pd.DataFrame([{**dict(zip(KEYS, key)), **_cell(g, n_boot)} for key, g in rows.groupby(KEYS, sort=True)])
        else:  # means only (null simulations): no intervals
            recs = _means(rows)
        if neutral is not None and len(neutral):
            recs = recs.merge(_neutral_kl(neutral), on=[k for k in KEYS if k not in ("family", "split")], how="left")
        else:
            recs["kl_neutral"] = np.nan
        recs["specificity"] = recs["kl"] - recs["kl_neutral"]
        # held at the precision atlas.json stores, so a loaded atlas answers exactly like the one that saved it
        eff = pd.DataFrame(_records(recs))
        sol = pd.DataFrame(_records(solved(rows)))
        return cls(model, fingerprint, n_layers, n_heads, eff, dict(meta or {}), solved=sol)

    def gated(self, solved: pd.DataFrame) -> Atlas:
        """This atlas with its testable families decided by `solved` (e.g. `tasks.gate` on more items than the
        atlas sampled: 16 items need 16/16 flips to pass the gate, 48 about 40)."""
        from dataclasses import replace

        return replace(self, solved=solved.reset_index(drop=True))

    # -- views -----------------------------------------------------------------------------------
    @property
    def families(self) -> list[str]:
        return sorted(self.effects["family"].unique())

    @property
    def testable_families(self) -> list[str]:
        """Families the model flips reliably enough to localize (`tasks.solved`)."""
        return sorted(self.solved.loc[self.solved["testable"], "family"]) if len(self.solved) else []

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.effects["seed"].unique())

    def _layerwise(self, component: str, method: str, position: str = "all") -> pd.DataFrame:
        e = self.effects
        return e[(e["component"] == component) & (e["method"] == method) & (e["head"] == -1) & (e["position"] == position)]

    def _scope(self, e: pd.DataFrame, metric: str, family: str | None, split: str | None) -> pd.DataFrame:
        """Effects of one family, or of the families a metric can speak for (ld_frac: the testable ones)."""
        if split is not None:
            e = e[e["split"] == split]
        if family is not None:
            return e[e["family"] == family]
        return e[e["family"].isin(self.testable_families)] if metric == "ld_frac" else e

    def layer_scores(self, family: str | None = None, component: str = "block", method: str = "zero",
                     metric: str | None = None, position: str = "all", split: str | None = None) -> pd.Series:
        """Mean effect per layer (bigger = more important), over seeds and (if family is None) families.

        With the default metric `ld_frac`, family=None averages the testable families; a family with no
        flipped items gives NaN (nothing to localize)."""
        metric = metric or self.primary_metric
        e = self._layerwise(component, method, position)
        if e.empty:
            raise KeyError(f"no effects for component={component} method={method} position={position}")
        e = self._scope(e, metric, family, split)
        if e.empty:
            return pd.Series(np.nan, index=range(self.n_layers), name=metric).rename_axis("layer")
        fam_mean = e.groupby(["family", "layer"])[metric].mean()  # seeds and splits first, then families equally
        return fam_mean.groupby("layer").mean().rename(metric)

    def head_scores(self, family: str | None = None, method: str = "zero", metric: str | None = None) -> pd.DataFrame:
        """Mean effect per (layer, head) as a layers x heads table."""
        metric = metric or self.primary_metric
        e = self.effects[(self.effects["component"] == "head") & (self.effects["method"] == method)]
        e = self._scope(e, metric, family, None)
        return e.groupby(["family", "layer", "head"])[metric].mean().groupby(["layer", "head"]).mean().unstack("head")

    def ranks(self, component: str = "block", method: str = "zero", metric: str | None = None) -> pd.DataFrame:
        """Per-family rank of every layer (1 = largest effect) and the overall rank."""
        metric = metric or self.primary_metric
        e = self._scope(self._layerwise(component, method), metric, None, None)
        t = e.groupby(["family", "layer"])[metric].mean().unstack("family")
        r = t.rank(ascending=False, method="min")
        r["overall"] = self.layer_scores(None, component, method, metric).rank(ascending=False, method="min")
        return r

    def hub(self, component: str | None = None, method: str | None = None, exclude: tuple[int, ...] = (),
            split: str | None = None) -> dict:
        """The top layer and how far families and seeds agree on it. `exclude` drops layers (e.g. layer 0).

        Scored by `ld_frac` over the testable families; when the model solves none, by KL over all families
        (a disruption hub, `testable: False`: it says where ablation hurts, not where a behaviour lives)."""
        component = component or self._default("component", ("block", "mlp", "attn", "mixer", "resid"))
        method = method or self._default("method", ("zero", "mean", "resample", "denoise", "noise"))
        testable = self.testable
        metric = self._metric()
        e = self._scope(self._layerwise(component, method), metric, None, split)
        e = e[~e["layer"].isin(exclude)]
        fam = e.groupby(["family", "layer"])[metric].mean()
        score = fam.groupby("layer").mean()
        hub = int(score.idxmax())
        fam_top = fam.unstack("layer").idxmax(axis=1)
        per_seed = e.groupby(["seed", "family", "layer"])[metric].mean().groupby(["seed", "layer"]).mean().unstack("layer")
        return {
            "component": component, "method": method, "metric": metric, "layer": hub, "score": float(score.max()),
            "testable": testable, "excluded": list(exclude), "n_candidates": int(score.size),
            "family_agreement": float((fam_top == hub).mean()),
            "family_top_layers": {k: int(v) for k, v in fam_top.items()},
            "seed_hubs": {str(k): int(v) for k, v in per_seed.idxmax(axis=1).items()},
            "seed_scores": {str(k): float(v) for k, v in per_seed[hub].items()},
        }

    def hub_evidence(self, component: str | None = None, method: str | None = None,
                     exclude: tuple[int, ...] = ()) -> dict:
        """Evidence for "layer H is the hub", chosen on the select split and tested on the test split.

        Control: the median layer (by select-split score). Test: exact sign-flip test of hub minus control
        over the (family, seed) cells of the test split, with a 95% CI. Seeds replicate when the hub beats the
        control on that seed's test cells; other methods agree when their own select-split hub is H; families
        agree when their own select-split top layer is H. Only testable families count."""
        sel = self.hub(component, method, exclude, split="select")
        comp, meth, h, metric = sel["component"], sel["method"], sel["layer"], sel["metric"]
        ev = {"hub": h, "component": comp, "method": meth, "metric": metric, "excluded": list(exclude),
              "n_candidates": sel["n_candidates"], "selection": "held-out", "testable": sel["testable"]}
        if not sel["testable"]:
            from ..tasks import untestable_why

            return {**ev, "untestable_why": untestable_why(self.solved), "control": "none (not testable)"}
        score = self.layer_scores(None, comp, meth, metric, split="select").drop(list(exclude), errors="ignore")
        others = score.drop(h).sort_values()
        control = int(others.index[len(others) // 2])
        e = self._scope(self._layerwise(comp, meth), metric, None, "test")
        t = e.pivot_table(index=["family", "seed"], columns="layer", values=metric)
        d = (t[h] - t[control]).dropna() if {h, control} <= set(t.columns) else pd.Series(dtype=float)
        est, lo, hi = bootstrap_ci(d.to_numpy())
        by_seed = d.groupby(level="seed").mean()
        methods = sorted(set(self.effects.loc[self.effects["component"] == comp, "method"]) - {meth})
        m_hubs = {m: self.hub(comp, m, exclude, split="select")["layer"] for m in methods}
        ev.update({
            "control": f"median layer {control}", "n_cells": int(d.size), "effect_minus_control": est, "ci": [lo, hi],
            "p_value": sign_flip_p(d.to_numpy()) if d.size else float("nan"),
            "seeds_replicated": int((by_seed > 0).sum()), "n_seeds": int(by_seed.size),
            "methods_agreeing": sum(v == h for v in m_hubs.values()), "n_methods": len(m_hubs), "method_hubs": m_hubs,
            "families_agreeing": sum(v == h for v in sel["family_top_layers"].values()),
            "n_families": len(sel["family_top_layers"]),
        })
        sink = self._sink(comp, meth, h, metric)
        if sink is not None:
            ev["first_token_share"] = sink
            ev["sink"] = sink >= 0.5
        ev["compensated_layers"] = self.compensated_layers(comp, meth)
        return ev

    def _sink(self, comp: str, meth: str, h: int, metric: str) -> float | None:
        """Share of the hub's all-position effect that ablating the first token alone reproduces (attention sink)."""
        if comp != "block" or meth != "zero":
            return None
        try:
            first = self.layer_scores(None, comp, meth, metric, position="first").get(h, np.nan)
        except KeyError:
            return None
        allp = self.layer_scores(None, comp, meth, metric).get(h, np.nan)
        return float(first / allp) if np.isfinite(allp) and allp > 0 and np.isfinite(first) else None

    @property
    def testable(self) -> bool:
        """Whether the primary metric can speak: it is not the behaviour metric, or some family is testable."""
        return self.primary_metric != "ld_frac" or bool(self.testable_families)

    def _metric(self) -> str:
        """The metric a summary can use: the primary one where it can speak, else KL (disruption)."""
        return self.primary_metric if self.testable else "kl"

    def method_agreement(self, metric: str | None = None, split: str | None = "test", by_seed: bool = False) -> pd.DataFrame:
        """Spearman correlation of layer profiles between each pair of methods, per component (and seed), with a
        one-sided p-value (rho > 0; scipy's exact/t approximation over layers). Default: the test split."""
        metric = metric or self._metric()
        recs = []
        e = self._scope(self.effects[(self.effects["head"] == -1) & (self.effects["position"] == "all")], metric, None, split)
        groups = ["component", "seed"] if by_seed else ["component"]
        for key, g in e.groupby(groups):
            key = key if isinstance(key, tuple) else (key,)
            t = g.groupby(["method", "family", "layer"])[metric].mean().groupby(["method", "layer"]).mean()
            t = t.unstack("method").dropna()
            for a, b in combinations(sorted(t.columns), 2):
                if len(t) > 2 and t[a].nunique() > 1 and t[b].nunique() > 1:
                    r = spearmanr(t[a], t[b], alternative="greater")
                    rho, p = float(r.statistic), float(r.pvalue)
                else:
                    rho, p = float("nan"), float("nan")
                recs.append({**dict(zip(groups, key)), "method_a": a, "method_b": b, "spearman": rho, "p_value": p})
        return pd.DataFrame(recs, columns=[*groups, "method_a", "method_b", "spearman", "p_value"])

    def agreement_evidence(self, component: str) -> dict:
        """Evidence for "the ablation methods rank this component's layers alike" (test split, testable families).

        Every pair must agree (intersection-union test: p = the largest pair p-value); a method agrees when all
        its pairs have p <= 0.05; a seed replicates when every pair's rho > 0 in that seed."""
        metric = self._metric()
        ev: dict = {"component": component, "metric": metric, "testable": self.testable}
        if not ev["testable"]:
            from ..tasks import untestable_why

            return {**ev, "untestable_why": untestable_why(self.solved)}
        pairs = self.method_agreement(metric)
        pairs = pairs[pairs["component"] == component]
        seeds = self.method_agreement(metric, by_seed=True)
        seeds = seeds[seeds["component"] == component]
        methods = sorted(set(pairs["method_a"]) | set(pairs["method_b"]))
        ok = pairs.assign(ok=pairs["p_value"] <= 0.05)
        agree = [m for m in methods if ok.loc[(ok["method_a"] == m) | (ok["method_b"] == m), "ok"].all()]
        seed_ok = seeds.groupby("seed")["spearman"].apply(lambda r: bool((r > 0).all()))
        return {**ev, "methods": methods, "min_spearman": float(pairs["spearman"].min()),
                "pairs": {f"{r.method_a}/{r.method_b}": round(r.spearman, 3) for r in pairs.itertuples()},
                "p_value": float(pairs["p_value"].max()) if len(pairs) else float("nan"),
                "n_methods": len(methods), "methods_agreeing": len(agree),
                "n_seeds": int(seed_ok.size), "seeds_replicated": int(seed_ok.sum())}

    def position_effects(self, component: str = "block", method: str = "zero", metric: str | None = None) -> pd.DataFrame:
        """Layer effects at the first vs last token (where those units were run)."""
        metric = metric or self._metric()
        e = self.effects[(self.effects["component"] == component) & (self.effects["method"] == method)
                         & (self.effects["position"].isin(["first", "last", "all"]))]
        e = self._scope(e, metric, None, None)
        return e.groupby(["position", "family", "layer"])[metric].mean().groupby(["position", "layer"]).mean().unstack("position")

    def _fractions(self) -> tuple[str, str, list[str]]:
        """(total, direct, families) for direct-vs-total views: flipped-item fractions over the testable families,
        or, on a model that solves none, all-item fractions over every family (LD mechanics, no behaviour claim)."""
        if self.testable_families:
            return "ld_frac", "direct_frac", self.testable_families
        return "ld_frac_all", "direct_frac_all", self.families

    def _by_layer(self, col: str, component: str, method: str, families: list[str], position: str = "all") -> pd.Series:
        """Mean of `col` per layer: over seeds and splits per family, then over `families` equally."""
        e = self._layerwise(component, method, position)
        e = e[e["family"].isin(families)]
        if col not in e or e.empty:
            return pd.Series(np.nan, index=range(self.n_layers), name=col).rename_axis("layer")
        return e.groupby(["family", "layer"])[col].mean().groupby("layer").mean().rename(col)

    def direct_vs_total(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """Per layer: total effect (ablation), direct effect (through the unembedding, `direct.py`), both as
        fractions of the clean LD, and `compensated` (|total| < 0.5 |direct|, |direct| >= direct.MIN_DIRECT)."""
        from .direct import compensated

        tot, dirc, fams = self._fractions()
        t = pd.concat({"total": self._by_layer(tot, component, method, fams),
                       "direct": self._by_layer(dirc, component, method, fams)}, axis=1).rename_axis("layer")
        t["compensated"] = compensated(t["total"], t["direct"])
        t.insert(0, "metric", tot)
        return t.reset_index()

    def compensated_layers(self, component: str = "block", method: str = "zero") -> list[int]:
        t = self.direct_vs_total(component, method)
        return [int(x) for x in t.loc[t["compensated"], "layer"]]

    def layer_table(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """The layer map as a table: total and direct effect, `compensated`, disruption (KL) and its specificity
        (KL on task prompts minus on length-matched neutral text), and for block zero-ablation the first-token
        share and the `sink` flag (first-token-only ablation reproduces >= half of the all-position effect).
        `reading` never calls a compensated layer unimportant."""
        t = self.direct_vs_total(component, method).set_index("layer")
        t["kl"] = self._by_layer("kl", component, method, self.families)
        t["specificity"] = self._by_layer("specificity", component, method, self.families)
        tot, _, fams = self._fractions()
        first = self._by_layer(tot, component, method, fams, position="first")
        share = (first / t["total"].where(t["total"] > 0)).where(first.notna())
        t["first_token_share"] = share
        t["sink"] = pd.array(np.where(share.notna(), share >= 0.5, None), dtype="boolean")  # NA: no first-token unit
        floor = 0.1  # the same floor as direct.MIN_DIRECT
        reading = np.select([t["total"].isna(), t["compensated"], t["total"] >= floor, t["total"] <= -floor],
                            ["no effect measured", "compensated: direct effect repaired downstream (not unimportant)",
                             "large loss", "large gain (ablating it helps the answer)"], "small total effect")
        reading = pd.Series(reading, index=t.index).where(~t["sink"].fillna(False), reading + ", via the first token (sink)")
        if not self.testable_families:
            reading = reading + " - LD mechanics only, not a behaviour (not testable)"
        t["reading"] = reading
        return t.reset_index()

    def item_maps(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """Layer maps on flipped items only (`ld_frac`) and on all items (`ld_frac_all`), per family with both
        defined and `overall` (the testable families, or every family with both maps when none is testable)."""
        fams = [f for f in self.families
                if self._by_layer("ld_frac", component, method, [f]).notna().any()
                and self._by_layer("ld_frac_all", component, method, [f]).notna().any()]
        recs = []
        scopes = [(f, [f]) for f in fams] + [("overall", self.testable_families or fams)]
        for name, fs in scopes:
            if not fs:
                continue
            t = pd.concat({"flipped": self._by_layer("ld_frac", component, method, fs),
                           "all": self._by_layer("ld_frac_all", component, method, fs)}, axis=1)
            recs.append(t.rename_axis("layer").reset_index().assign(family=name))
        cols = ["family", "layer", "flipped", "all"]
        return pd.concat(recs, ignore_index=True)[cols] if recs else pd.DataFrame(columns=cols)

    def item_map_agreement(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """Spearman rank correlation between the flipped-only and the all-item layer maps, per family and overall
        (two-sided p over layers; NaN with < 3 layers or a constant map)."""
        recs = []
        for fam, g in self.item_maps(component, method).groupby("family", sort=False):
            g = g.dropna(subset=["flipped", "all"])
            if len(g) > 2 and g["flipped"].nunique() > 1 and g["all"].nunique() > 1:
                r = spearmanr(g["flipped"], g["all"])
                rho, p = float(r.statistic), float(r.pvalue)
            else:
                rho, p = float("nan"), float("nan")
            recs.append({"family": fam, "n_layers": len(g), "spearman": rho, "p_value": p})
        return pd.DataFrame(recs, columns=["family", "n_layers", "spearman", "p_value"])

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
            "primary_metric": self.primary_metric, "effects": recs, "hub": hub, "solved": _records(self.solved),
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
                   d.get("meta", {}), d.get("primary_metric", "ld_frac"), pd.DataFrame(d.get("solved", [])))


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
    neutral_prompts: int | None = None,
    direct: bool | None = None,
) -> Atlas:
    """Sample prompts per family and seed, sweep every unit, aggregate into an Atlas (and save it).

    positions: extra block zero-ablation units at these token positions (first / last token effects).
    neutral_prompts: neutral sentences per seed, length-matched to that seed's task prompts, swept with the
    layer units for the specificity score (default: prompts_per_family; 0: none).
    direct: add each unit's direct effect (`direct.py`; one clean forward per batch, no unit forwards); default:
    on, except for a remote subject (direct effects read the weights locally)."""
    import warnings

    from .. import tasks
    from ..engine.interventions import Site, Unit, head_sweep, layer_sweep, method_op
    from ..engine.sweep import Cache, code_version, sweep
    from ..evidence import registry
    from ..paths import locked, writable_dir
    from ..tasks.core import distinct
    from . import direct as direct_mod

    t0 = time.time()
    named = families is not None
    fams = distinct(families if named else tasks.FAMILIES, "families")
    unknown = sorted(set(fams) - set(tasks.FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(tasks.FAMILIES)}")
    for what, vals in (("families", fams), ("components", components), ("methods", methods), ("seeds", seeds)):
        if not list(vals):
            raise ValueError(f"{what} is empty: give at least one (families=None means all)")
    seeds = distinct(seeds, "seeds")
    if prompts_per_family < 1:
        raise ValueError(f"prompts_per_family={prompts_per_family}: must be >= 1 (mean and resample ablation need >= 2)")
    if out is not None:
        writable_dir(out)  # before the compute, not after it
    arch = subject.arch
    items_all, report = tasks.validate(
        [it for f in fams for it in tasks.load_items(f, variant=variant, bucket=bucket)], subject.tokenizer)
    kept = {f: sum(it.family == f for it in items_all) for f in fams}
    empty = [f for f in fams if not kept[f]]
    where = f"{variant}/{bucket} items valid for {subject.name}'s tokenizer"
    if empty and (named or len(empty) == len(fams)):
        raise ValueError(f"families {empty} have no {where}: choose other families, --bucket or --variant")
    if empty:
        warnings.warn(f"families {empty} have no {where}: mapped without them", stacklevel=2)
        fams = [f for f in fams if kept[f]]
    short = {f: kept[f] for f in fams if kept[f] < prompts_per_family}
    if short:
        raise ValueError(f"prompts_per_family={prompts_per_family} is more than some families have ({where}: "
                         f"{', '.join(f'{f} {n}' for f, n in short.items())}); allowed: 1..{min(kept[f] for f in fams)}")
    cache = cache if cache is not None else Cache()
    n_neutral = prompts_per_family if neutral_prompts is None else neutral_prompts
    direct = not subject.remote if direct is None else direct
    frames, neutral_frames, stats = [], [], {"computed": 0, "cached": 0}
    for seed in seeds:
        items = [it for f in fams for it in tasks.sample([i for i in items_all if i.family == f], prompts_per_family, seed)]
        units = layer_sweep(components, methods, arch.n_layers, arch, seed=seed)
        if n_neutral:
            lengths = [len(subject.tokenizer(it.prompt)["input_ids"]) for it in items]
            nd = sweep(subject, neutral_items(subject.tokenizer, lengths, n_neutral, seed), units, seed=seed,
                       cache=cache, progress=progress, desc=f"neutral seed {seed}")
            stats["computed"] += nd.attrs["computed"]
            stats["cached"] += nd.attrs["cached"]
            neutral_frames.append(nd)
        if heads:
            units += head_sweep(arch, "zero")
        for pos in positions:
            units += [Unit.of(Site("block", layer, position=pos), method_op("zero"))
                      for layer in range(arch.n_layers)]
        df = sweep(subject, items, units, seed=seed, cache=cache, progress=progress, desc=f"atlas seed {seed}")
        stats["computed"] += df.attrs["computed"]
        stats["cached"] += df.attrs["cached"]
        if direct:
            df = direct_mod.attach(df, direct_mod.direct_rows(subject, items, units, seed=seed))
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    neutral = pd.concat(neutral_frames, ignore_index=True) if neutral_frames else None
    meta = {"families": fams, "components": list(components), "methods": list(methods), "seeds": list(seeds),
            "prompts_per_family": prompts_per_family, "heads": heads, "positions": list(positions),
            "neutral_prompts": n_neutral, "direct": direct,
            "bucket": bucket, "variant": variant, "code_version": code_version(), "suite_hash": tasks.suite_hash(items_all),
            "dropped_by_validation": int(report["total"].sum() - report["kept"].sum()) if len(report) else 0}
    atlas = Atlas.from_rows(rows, subject.name, subject.fingerprint, arch.n_layers, arch.n_heads, meta, neutral=neutral)
    paths = {}
    if out is not None:
        with locked(out, reentrant=True) as out:  # two runs never write one directory at once
            paths["atlas"] = str(atlas.save(out))
            for name, df in (("rows", rows), ("neutral", neutral)):
                if df is not None:
                    df.to_parquet(out / f"{name}.parquet.tmp", index=False)
                    (out / f"{name}.parquet.tmp").replace(out / f"{name}.parquet")
                    paths[name] = str(out / f"{name}.parquet")
    wall = time.time() - t0
    registry.append("atlas", model=subject.name, fingerprint=subject.fingerprint, params=meta,
                    units_computed=stats["computed"], units_cached=stats["cached"], seconds=round(wall, 2), outputs=paths)
    atlas.run_stats = {"computed": stats["computed"], "cached": stats["cached"], "seconds": wall}
    return atlas


def neutral_items(tokenizer, lengths: list[int], n: int, seed: int = 0) -> list:
    """`n` neutral texts (`neutral.sentences`) whose token lengths match `n` evenly spaced quantiles of `lengths`
    (the task prompts' token lengths, special tokens included): consecutive sentences joined, cut to length.

    Items for `sweep`: family "neutral", corrupt = prompt, answer = distractor = the last token (LD is 0 by
    construction; only KL is read)."""
    from types import SimpleNamespace

    from ..tasks import neutral

    texts = neutral.sentences(seed=seed)
    specials = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    order = sorted(lengths)
    targets = [order[round(q)] for q in np.linspace(0, len(order) - 1, n)] if order else []
    out, start, m = [], 0, len(texts)
    for i, target in enumerate(targets):
        for _ in range(m):
            k, ids = 0, []
            while len(ids) < target - specials and k < m:
                k += 1
                ids = tokenizer(" ".join(texts[(start + j) % m] for j in range(k)), add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(ids[:max(1, target - specials)])
            got = tokenizer(text)["input_ids"]
            start = (start + (k if len(got) == target else 1)) % m
            if len(got) == target:
                out.append(SimpleNamespace(id=f"neutral/{seed}/{i}", family="neutral", prompt=text, corrupt=text,
                                           answer_id=got[-1], distractor_id=got[-1], diff_pos=0, bucket="",
                                           variant="neutral"))
                break
        else:
            raise ValueError(f"no neutral text re-tokenizes to {target} tokens")
    return out


def hub_claim(atlas: Atlas, component: str, exclude: tuple[int, ...] = (), method: str = "zero", **tags):
    """The claim "component layer H is the hub", its statement and direction taken from `hub_evidence`."""
    from ..evidence.claims import Claim

    ev = atlas.hub_evidence(component, method, exclude)
    where = f" (excluding layer{'s' if len(exclude) > 1 else ''} {', '.join(map(str, exclude))})" if exclude else ""
    kw = dict(counterfactual=f"{method}-ablate the {component} write at each layer, all positions",
              control=ev["control"], evidence=ev, **tags)
    if not ev["testable"]:
        return Claim(f"{component}: no {method}-ablation hub{where} can be localized — not testable here, the model "
                     "solves no task family", metric="fraction of the clean logit difference lost (none solved)", **kw)
    h, k = ev["hub"], ev["n_candidates"]
    held = f"held-out {ev['effect_minus_control']:+.2f} vs {ev['control']}, p = {ev['p_value']:.3g}; best of {k} layers"
    if ev["p_value"] <= 0.05 and ev["effect_minus_control"] > 0:
        text = f"{component} layer {h} is the {method}-ablation hub{where} ({held})"
    else:
        text = f"{component} layer {h} scores highest{where} but does not beat the median layer on held-out prompts ({held})"
    share = ev.get("first_token_share")
    if share is not None and share >= 0.5:
        text += f"; ablating the first token alone reproduces {share:.0%} of its effect (an attention-sink effect)"
    comp_layers = [x for x in ev.get("compensated_layers", []) if x != h]
    if comp_layers:
        many = len(comp_layers) > 1
        text += (f"; layer{'s' if many else ''} {', '.join(map(str, comp_layers))} ha{'ve' if many else 's'} a direct "
                 f"effect at least twice {'their' if many else 'its'} total effect: compensated downstream, not unimportant")
    return Claim(text, metric="fraction of the clean logit difference lost, flipped items of testable families", **kw)


def agreement_claim(atlas: Atlas, component: str, **tags):
    """The claim "the ablation methods rank this component's layers alike", worded from `agreement_evidence`."""
    from ..evidence.claims import Claim

    ev = atlas.agreement_evidence(component)
    kw = dict(metric="Spearman correlation of layer profiles between methods (test split)",
              counterfactual="the same layers ablated by each method", control="rho = 0 (no shared ranking)",
              evidence=ev, **tags)
    if not ev["testable"]:
        return Claim(f"{component}: whether ablation methods agree is not testable here (the model solves no task family)", **kw)
    names = ", ".join(ev["methods"])
    if ev["p_value"] <= 0.05:
        return Claim(f"{names} ablation rank {component} layers alike (min Spearman {ev['min_spearman']:.2f}, every pair p <= 0.05)", **kw)
    return Claim(f"{names} ablation do not demonstrably rank {component} layers alike (min Spearman "
                 f"{ev['min_spearman']:.2f}; largest pair p = {ev['p_value']:.2g})", **kw)
