"""The `Atlas`: effects with CIs and the solved table of one model, its views (`Views`, `Layers`, `Hub`),
construction from sweep rows, atlas.json (save / load), and `diff` between two atlases."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ...paths import write_json_atomic
from .effects import KEYS, SCHEMA, aggregate, records
from .hub import Hub


@dataclass
class Atlas(Hub):
    model: str
    fingerprint: str
    n_layers: int
    n_heads: int
    effects: pd.DataFrame
    meta: dict = field(default_factory=dict)
    primary_metric: str = "ld_frac"
    solved: pd.DataFrame = field(default_factory=pd.DataFrame)
    # units computed / cached and seconds of the `map_atlas` run that made it (not saved: the registry has them)
    run_stats: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, model: str, fingerprint: str, n_layers: int, n_heads: int,
                  meta: dict | None = None, n_boot: int = 1000, neutral: pd.DataFrame | None = None) -> Atlas:
        """Aggregate tidy per-prompt rows (from `sweep`) into effects with 95% CIs (studentized bootstrap).

        Rows may carry `direct` (`direct.attach`); `neutral` are sweep rows of the same units on neutral text
        (`neutral_items`), giving each cell `kl_neutral` and `specificity` = kl - kl_neutral."""
        eff, sol = aggregate(rows, n_boot, neutral)
        return cls(model, fingerprint, n_layers, n_heads, eff, dict(meta or {}), solved=sol)

    def gated(self, solved: pd.DataFrame) -> Atlas:
        """This atlas with its testable families decided by `solved` (e.g. `tasks.gate` on more items than the
        atlas sampled: 16 items need 16/16 flips to pass the gate, 48 about 40)."""
        return replace(self, solved=solved.reset_index(drop=True))

    def to_json(self) -> dict:
        """The atlas.json document (`SCHEMA`; see the package docstring)."""
        eff = self.effects.sort_values(KEYS).reset_index(drop=True)
        hub = self.hub() if not self._layerwise(None, None).empty else None
        return {
            "schema": SCHEMA, "model": self.model, "fingerprint": self.fingerprint, "n_layers": self.n_layers,
            "n_heads": self.n_heads, "families": self.families, "seeds": self.seeds,
            "methods": sorted(self.effects["method"].unique()), "components": sorted(self.effects["component"].unique()),
            "primary_metric": self.primary_metric, "effects": records(eff), "hub": hub, "solved": records(self.solved),
            "method_agreement": records(self.method_agreement()),
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write atlas.json (into `path`, a directory, or as `path` ending in .json) atomically: a crash never
        leaves a half-written file."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "atlas.json"
        return write_json_atomic(path, self.to_json(), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> Atlas:
        """An atlas from its atlas.json (or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "atlas.json"
        d = json.loads(path.read_text())
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not an atlas ({d.get('schema')!r} != {SCHEMA!r})")
        return cls(d["model"], d["fingerprint"], d["n_layers"], d["n_heads"], pd.DataFrame(d["effects"]),
                   d.get("meta", {}), d.get("primary_metric", "ld_frac"), pd.DataFrame(d.get("solved", [])))


UNIT = ["component", "head", "position", "method"]


def _table(x: Atlas, metric: str, bins: int | None) -> pd.Series:
    """Mean `metric` per (unit, layer), families weighted equally; layers binned by depth into `bins` if given."""
    e = x.effects.groupby([*UNIT, "family", "layer"])[metric].mean().groupby([*UNIT, "layer"]).mean().reset_index()
    if bins:
        e["layer"] = np.minimum((e["layer"] / max(1, x.n_layers - 1) * bins).astype(int), bins - 1)
        e = e.groupby([*UNIT, "layer"])[metric].mean().reset_index()
    return e.set_index([*UNIT, "layer"])[metric]


def diff(a: Atlas, b: Atlas, metric: str = "kl", bins: int | None = None) -> pd.DataFrame:
    """Per-component change b - a, averaged over seeds and families. When layer counts differ the
    layers are depth-normalized (layer / (n_layers - 1)) and binned into `bins` (default: the smaller depth)."""
    nb = bins if bins else (None if a.n_layers == b.n_layers else min(a.n_layers, b.n_layers))
    out = pd.concat({"a": _table(a, metric, nb), "b": _table(b, metric, nb)}, axis=1).dropna()
    out["delta"] = out["b"] - out["a"]
    out = out.reset_index().rename(columns={"layer": "depth_bin" if nb else "layer"})
    return out.sort_values("delta", key=np.abs, ascending=False).reset_index(drop=True)
