"""The hub (the top layer) and the evidence for it, chosen on the select split and tested on the test split,
and whether ablation methods rank layers alike. A mixin of `Atlas` on top of `Layers`."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ...evidence.stats import bootstrap_ci, sign_flip_p
from ...tasks import untestable_why
from .layers import SINK, Layers

COMPONENTS = ("block", "mlp", "attn", "mixer", "resid")  # the default hub component, first present
METHODS = ("zero", "mean", "resample", "denoise", "noise")  # the default hub method, first present


class Hub(Layers):
    def hub(self, component: str | None = None, method: str | None = None, exclude: tuple[int, ...] = (),
            split: str | None = None) -> dict:
        """The top layer and how far families and seeds agree on it. `exclude` drops layers (e.g. layer 0).

        Scored by `ld_frac` over the testable families; when the model solves none, by KL over all families
        (a disruption hub, `testable: False`: it says where ablation hurts, not where a behaviour lives)."""
        component = component or self._default("component", COMPONENTS)
        method = method or self._default("method", METHODS)
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
            "testable": self.testable, "excluded": list(exclude), "n_candidates": int(score.size),
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
            ev["sink"] = sink >= SINK
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

    def method_agreement(self, metric: str | None = None, split: str | None = "test", by_seed: bool = False) -> pd.DataFrame:
        """Spearman correlation of layer profiles between each pair of methods, per component (and seed), with a
        one-sided p-value (rho > 0; scipy's exact/t approximation over layers). Default: the test split."""
        metric = metric or self._metric()
        recs = []
        e = self._scope(self._layerwise(None, None), metric, None, split)
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
            return {**ev, "untestable_why": untestable_why(self.solved)}
        pairs = self.method_agreement(metric)
        pairs = pairs[pairs["component"] == component]
        seeds = self.method_agreement(metric, by_seed=True)
        seeds = seeds[seeds["component"] == component]
        methods = sorted(set(pairs["method_a"]) | set(pairs["method_b"]))
        ok = pairs.assign(ok=pairs["p_value"] <= 0.05)
        agree = [m for m in methods if ok.loc[(ok["method_a"] == m) | (ok["method_b"] == m), "ok"].all()]
        seed_ok = (seeds["spearman"] > 0).groupby(seeds["seed"]).all()
        return {**ev, "methods": methods, "min_spearman": float(pairs["spearman"].min()),
                "pairs": {f"{r.method_a}/{r.method_b}": round(r.spearman, 3) for r in pairs.itertuples()},
                "p_value": float(pairs["p_value"].max()) if len(pairs) else float("nan"),
                "n_methods": len(methods), "methods_agreeing": len(agree),
                "n_seeds": int(seed_ok.size), "seeds_replicated": int(seed_ok.sum())}
