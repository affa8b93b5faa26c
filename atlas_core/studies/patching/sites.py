"""Patching units and sites: denoising and noising units over components × layers × positions, the cumulative
units of cross-model patching, a 'diff' edit expanded to every differing token, and how a site is named."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from ...engine.interventions import Edit, Op, Site, Unit, exists
from ...model.archmap import ArchMap

MIN_GAP = 0.5  # logits: below this mean clean − corrupt gap a recovery ratio is refused (odds change < 1.65x)
SITE = ["component", "layer", "head", "position"]
METRIC = "normalized recovery of the mean logit difference over flipped prompts (ratio of means)"
OPS = {"denoise": Op.patch("clean"), "noise": Op.patch("corrupt")}


def units(arch: ArchMap, components: Sequence[str] = ("resid", "block", "attn", "mlp"),
          positions: Sequence = ("last", "diff"), methods: Sequence[str] = ("denoise", "noise"),
          layers: Sequence[int] | None = None, head_layers: Sequence[int] = (), head_positions: Sequence = ("last",),
          head_methods: Sequence[str] = ("denoise",), noise_positions: Sequence | None = None) -> list[Unit]:
    """Patching units over components × layers × positions × methods, plus heads at `head_layers`;
    `noise_positions` narrows the noising units to those positions (None: every position)."""
    layers = range(arch.n_layers) if layers is None else layers
    out = [Unit.of(Site(c, layer, position=p), OPS[m]) for c in components for layer in layers
           if c in ("resid", "block") or exists(arch, c, layer)
           for p in positions for m in methods if m != "noise" or noise_positions is None or p in noise_positions]
    out += [Unit.of(Site("head", layer, head=h, position=p), OPS[m]) for layer in head_layers
            if arch.layer_kinds[layer] == "attention" for h in range(arch.n_heads) for p in head_positions
            for m in head_methods]
    return out


def cumulative(component: str, n_layers: int, position: str = "all") -> list[Unit]:
    """Units patching the source's values at layers 0..k for every k (one multi-edit unit each)."""
    return [Unit(tuple(Edit(Site(component, layer, position=position), Op.patch("clean")) for layer in range(k + 1)))
            for k in range(n_layers)]


def expand(unit: Unit, span: Sequence[int]) -> Unit:
    """`unit` with each 'diff' edit replaced by one int-position edit per differing token (labels kept)."""
    edits: list[Edit] = []
    for e in unit.edits:
        edits += [Edit(replace(e.site, position=p), e.op) for p in span] if e.site.position == "diff" else [e]
    return replace(unit, edits=tuple(edits))


def site_name(r: Mapping) -> str:
    """'head h of layer l' or 'the <component> of layer l' for a row with component, layer and head."""
    if r["component"] == "head":
        return f"head {r['head']} of layer {r['layer']}"
    return f"the {r['component']} of layer {r['layer']}"
