"""The atlas's layer views: which families and seeds it holds, per-layer and per-head scores, the layer map,
first- vs last-token effects. A mixin of `Atlas` (it reads `effects`, `solved`, `n_layers`, `primary_metric`)."""

from __future__ import annotations

import numpy as np
import pandas as pd


class Views:
    effects: pd.DataFrame
    solved: pd.DataFrame
    n_layers: int
    primary_metric: str

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

    @property
    def testable(self) -> bool:
        """Whether the primary metric can speak: it is not the behaviour metric, or some family is testable."""
        return self.primary_metric != "ld_frac" or bool(self.testable_families)

    def _metric(self) -> str:
        """The metric a summary can use: the primary one where it can speak, else KL (disruption)."""
        return self.primary_metric if self.testable else "kl"

    def _default(self, col: str, prefs: tuple[str, ...]) -> str:
        have = set(self.effects[col].unique())
        for p in prefs:
            if p in have:
                return p
        return sorted(have)[0]

    def _layerwise(self, component: str | None, method: str | None, position: str = "all") -> pd.DataFrame:
        """Whole-component units at `position` (component / method None: every one)."""
        e = self.effects
        e = e[(e["head"] == -1) & (e["position"] == position)]
        if component is not None:
            e = e[e["component"] == component]
        return e if method is None else e[e["method"] == method]

    def _scope(self, e: pd.DataFrame, metric: str, family: str | None, split: str | None) -> pd.DataFrame:
        """Effects of one family, or of the families a metric can speak for (ld_frac: the testable ones)."""
        if split is not None:
            e = e[e["split"] == split]
        if family is not None:
            return e[e["family"] == family]
        return e[e["family"].isin(self.testable_families)] if metric == "ld_frac" else e

    def _by_layer(self, col: str, component: str, method: str, families: list[str], position: str = "all") -> pd.Series:
        """Mean of `col` per layer: over seeds and splits per family, then over `families` equally."""
        e = self._layerwise(component, method, position)
        e = e[e["family"].isin(families)]
        if col not in e or e.empty:
            return pd.Series(np.nan, index=range(self.n_layers), name=col).rename_axis("layer")
        return e.groupby(["family", "layer"])[col].mean().groupby("layer").mean().rename(col)

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

    def layer_map(self, component: str | None = "block", method: str | None = "zero",
                  metric: str | None = None) -> pd.DataFrame:
        """The layer map: per family and layer, the mean of `metric` over seeds and splits (whole-component units,
        all positions) as a tidy frame family, layer, value, lo, hi (lo/hi: the mean CI bounds where the metric has
        them, else NaN); `.attrs["metric"]` names the metric.

        Default metric: the headline one (`ld_frac` on the testable families; KL on every family when none is
        testable); `ld_frac` always keeps to the testable families (empty when none is). component / method None:
        every one, in `component` / `method` columns before `family`."""
        metric = metric or self._metric()
        e = self._scope(self._layerwise(component, method), metric, None, None)
        keys = [k for k, v in (("component", component), ("method", method)) if v is None] + ["family", "layer"]
        e = e.assign(**{b: e[f"{metric}_{b}"] if f"{metric}_{b}" in e else np.nan for b in ("lo", "hi")})
        out = e.groupby(keys).agg(value=(metric, "mean"), lo=("lo", "mean"), hi=("hi", "mean")).reset_index()
        out.attrs["metric"] = metric
        return out

    def head_scores(self, family: str | None = None, method: str = "zero", metric: str | None = None) -> pd.DataFrame:
        """Mean effect per (layer, head) as a layers x heads table."""
        metric = metric or self.primary_metric
        e = self.effects[(self.effects["component"] == "head") & (self.effects["method"] == method)]
        e = self._scope(e, metric, family, None)
        return e.groupby(["family", "layer", "head"])[metric].mean().groupby(["layer", "head"]).mean().unstack("head")

    def position_effects(self, component: str = "block", method: str = "zero", metric: str | None = None) -> pd.DataFrame:
        """Layer effects at the first vs last token (where those units were run) beside all positions."""
        metric = metric or self._metric()
        e = self.effects[(self.effects["component"] == component) & (self.effects["method"] == method)
                         & (self.effects["position"].isin(["first", "last", "all"]))]
        e = self._scope(e, metric, None, None)
        return e.groupby(["position", "family", "layer"])[metric].mean().groupby(["position", "layer"]).mean().unstack("position")
