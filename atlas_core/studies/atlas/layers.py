"""Per-layer readings beside the total effect: the direct effect and compensation (`direct.py`), specificity on
neutral text, the first-token (sink) share, and flipped-only vs all-item maps. A mixin of `Atlas` on `Views`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..direct import MIN_DIRECT, compensated
from .views import Views

SINK = 0.5  # first-token share from which a layer's effect is read as an attention-sink effect


class Layers(Views):
    def _fractions(self) -> tuple[str, str, list[str]]:
        """(total, direct, families) for direct-vs-total views: flipped-item fractions over the testable families,
        or, on a model that solves none, all-item fractions over every family (LD mechanics, no behaviour claim)."""
        if self.testable_families:
            return "ld_frac", "direct_frac", self.testable_families
        return "ld_frac_all", "direct_frac_all", self.families

    def direct_vs_total(self, component: str = "block", method: str = "zero") -> pd.DataFrame:
        """Per layer: total effect (ablation), direct effect (through the unembedding, `direct.py`), both as
        fractions of the clean LD, and `compensated` (|total| < 0.5 |direct|, |direct| >= direct.MIN_DIRECT)."""
        tot, dirc, fams = self._fractions()
        t = pd.concat({"total": self._by_layer(tot, component, method, fams),
                       "direct": self._by_layer(dirc, component, method, fams)}, axis=1).rename_axis("layer")
        t["compensated"] = compensated(t["total"], t["direct"])
        t.insert(0, "metric", tot)
        return t.reset_index()

    def compensated_layers(self, component: str = "block", method: str = "zero") -> list[int]:
        """Layers whose direct effect is repaired downstream (`direct.compensated`)."""
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
        t["sink"] = pd.array(np.where(share.notna(), share >= SINK, None), dtype="boolean")  # NA: no first-token unit
        reading = np.select([t["total"].isna(), t["compensated"], t["total"] >= MIN_DIRECT, t["total"] <= -MIN_DIRECT],
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
