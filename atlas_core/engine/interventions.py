"""One intervention vocabulary: a *site* (where) and an *operation* (what), composed into units.

Ablation, patching, steering, knockout and skipping are all (site, operation) pairs:

    zero-ablate layer 12's MLP      Edit(Site("mlp", 12), Op.zero())
    skip block 3                    Edit(Site("block", 3), Op.zero())       # block = the block's residual delta
    patch clean residual into corrupt at layer 8, subject token
                                    Edit(Site("resid", 8, position=("diff")), Op.patch("clean"))
    steer layer 10 by alpha*v       Edit(Site("resid", 10), Op.add(v, alpha))

Site values are what the component writes into the residual stream (its *delta*): `block` is
output - input of the decoder layer, `attn`/`mlp`/`conv`/`mixer` their residual writes (post-norm for
Gemma3), `head` a head's slice of the attention out-projection input, `q`/`k`/`v`/`o`/`gate`/`up`/`down`
module outputs, and `resid` the residual stream after the layer.

A `head` edit is the removal of that head's additive term from the attention write only where the write is
the out-projection itself (llama, qwen2, gpt2, lfm2: write = o_proj(x) = sum of per-head terms). Gemma3 has a
sandwich norm: write = post_attention_layernorm(o_proj(x)), so zeroing one head's slice of x also rescales
every other head's term (the RMSNorm is taken over the remaining sum). A Gemma3 head ablation therefore
measures "the layer's attention without this head, renormalized", not "the full write minus this head's
share" (pinned by tests/test_engine.py::test_head_ablation_is_additive_on_llama_but_not_on_gemma3).

An int position counts from each prompt's first real token (negative: from its last token) and must lie
inside the batch's shortest prompt, else ValueError (it never clamps silently).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch

COMPONENTS = ("resid", "block", "attn", "mlp", "mixer", "conv", "head", "q", "k", "v", "o", "qkv", "gate", "up", "down")
OPS = ("zero", "mean", "resample", "patch", "add", "project", "scale", "random")
POSITIONS = ("all", "first", "last", "diff")  # or an int: from the first real token (negative: from the end)


@dataclass(frozen=True)
class Site:
    """Where: a component at a layer, optionally one head, at some token positions."""

    component: str
    layer: int
    head: int | None = None
    position: str | int = "all"

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r}; known: {', '.join(COMPONENTS)}")
        if (self.head is not None) != (self.component == "head"):
            raise ValueError("a 'head' site needs head=<index>, and only head sites take one")
        if not isinstance(self.position, int) and self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; use one of {', '.join(POSITIONS)} or an int")

    @property
    def key(self) -> str:
        h = f".h{self.head}" if self.head is not None else ""
        return f"{self.component}.L{self.layer}{h}@{self.position}"


@dataclass(frozen=True)
class Op:
    """What: replace/modify the site's value. Build with the class methods."""

    kind: str
    alpha: float = 1.0
    source: str | None = None  # patch: which run the value comes from ("clean" or "corrupt")
    seed: int = 0
    vector: torch.Tensor | None = field(default=None, compare=False, repr=False)
    vector_id: str | None = None

    def __post_init__(self):
        if self.kind not in OPS:
            raise ValueError(f"unknown operation {self.kind!r}; known: {', '.join(OPS)}")

    @classmethod
    def zero(cls) -> Op:
        return cls("zero")

    @classmethod
    def mean(cls) -> Op:
        """Leave-one-out mean: prompt i's value becomes the site's mean over the OTHER prompts of its batch.

        A sweep batch holds sampled prompts of one family, so this is the mean over the family's prompts
        excluding the ablated one. The first real token gets the mean of the others' first real tokens; every
        other real token gets the mean over all non-first real tokens of the others (pooled over positions).
        Needs >= 2 prompts in the batch (ValueError otherwise)."""
        return cls("mean")

    @classmethod
    def resample(cls, seed: int = 0) -> Op:
        """The value from another prompt of the batch (same family): donors are a derangement seeded by this
        seed together with the batch's seed (`Batch.donors`), so different op seeds give different donors.

        Alignment on real tokens, never on padded indices: the recipient's first real token receives the
        donor's first real token; every other token is right-aligned (last <- donor's last, second-to-last
        <- donor's second-to-last, ...). Recipient tokens with no non-first counterpart in a shorter donor
        receive the donor's mean over its non-first real tokens (its first token if it has no other). Donor
        padding is never used. Needs >= 2 prompts in the batch (ValueError otherwise)."""
        return cls("resample", seed=seed)

    @classmethod
    def patch(cls, source: str = "clean") -> Op:
        """Write the value from the `source` run: "clean" (denoising, run on corrupt) or "corrupt" (noising)."""
        if source not in ("clean", "corrupt"):
            raise ValueError("patch source must be 'clean' (denoising) or 'corrupt' (noising)")
        return cls("patch", source=source)

    @classmethod
    def add(cls, vector: torch.Tensor, alpha: float = 1.0, name: str | None = None) -> Op:
        v = vector.detach().float().flatten().cpu()
        vid = name or hashlib.blake2b(v.numpy().tobytes(), digest_size=8).hexdigest()
        return cls("add", alpha=float(alpha), vector=v, vector_id=vid)

    @classmethod
    def project(cls, vector: torch.Tensor, name: str | None = None) -> Op:
        """Directional ablation (Arditi et al. 2024): remove the value's component along `vector`,
        x - (x . v) v with v the unit vector, at every addressed token. Tests necessity of a direction,
        where adding a negative multiple tests sufficiency of a push."""
        v = vector.detach().float().flatten().cpu()
        if not torch.isfinite(v).all() or float(v.norm()) == 0:
            raise ValueError("Op.project needs a finite, non-zero direction")
        v = v / v.norm()
        vid = name or hashlib.blake2b(v.numpy().tobytes(), digest_size=8).hexdigest()
        return cls("project", vector=v, vector_id=vid)

    @classmethod
    def scale(cls, factor: float) -> Op:
        return cls("scale", alpha=float(factor))

    @classmethod
    def random(cls, seed: int = 0) -> Op:
        """Replace the value by a random direction of equal norm (per token)."""
        return cls("random", seed=seed)

    @property
    def key(self) -> str:
        if self.kind == "add":
            return f"add[{self.vector_id}]x{self.alpha:g}"
        if self.kind == "project":
            return f"project[{self.vector_id}]"
        if self.kind == "scale":
            return f"scale{self.alpha:g}"
        if self.kind == "patch":
            return f"patch[{self.source}]"
        if self.kind in ("resample", "random"):
            return f"{self.kind}{self.seed}"
        return self.kind

    @property
    def method(self) -> str:
        """Short method label used in tables (zero, mean, resample, denoise, noise, add, project, scale, random)."""
        if self.kind == "patch":
            return "denoise" if self.source == "clean" else "noise"
        return self.kind


@dataclass(frozen=True)
class Edit:
    site: Site
    op: Op

    @property
    def key(self) -> str:
        return f"{self.site.key}:{self.op.key}"


@dataclass(frozen=True)
class Unit:
    """One intervention condition: one or more edits applied together in one forward."""

    edits: tuple[Edit, ...]
    labels: tuple[tuple[str, Any], ...] = field(default=(), compare=False)  # extra sweep columns; not in the key

    @classmethod
    def of(cls, site: Site, op: Op, **labels) -> Unit:
        return cls((Edit(site, op),), tuple(labels.items()))

    def label(self, **labels) -> Unit:
        """The same unit (same key, same cached numbers) carrying extra columns for the sweep's rows."""
        return replace(self, labels=(*self.labels, *labels.items()))

    @property
    def key(self) -> str:
        return "+".join(e.key for e in self.edits)

    @property
    def run(self) -> str:
        """Which prompt the forward runs on: corrupt for denoising, clean otherwise."""
        return "corrupt" if any(e.op.kind == "patch" and e.op.source == "clean" for e in self.edits) else "clean"

    @property
    def start_layer(self) -> int:
        return min(e.site.layer for e in self.edits)

    def describe(self) -> dict:
        """Flat columns for tidy tables: the first edit's site and op, the layer span of all edits
        (`layer`..`last_layer`), `n_edits`, `unit` (the full key), then the labels."""
        e = self.edits[0]
        return {
            "unit": self.key, "component": e.site.component, "layer": e.site.layer,
            "head": -1 if e.site.head is None else e.site.head, "position": str(e.site.position),
            "method": e.op.method, "alpha": e.op.alpha, "n_edits": len(self.edits),
            "last_layer": max(x.site.layer for x in self.edits), **dict(self.labels),
        }


def layer_sweep(components, methods, n_layers: int, arch=None, position="all", seed: int = 0) -> list[Unit]:
    """Units for every (component, layer, method); components missing at a layer (LFM2 conv/attn) are skipped."""
    units = []
    for comp in components:
        for layer in range(n_layers):
            if arch is not None and not exists(arch, comp, layer):
                continue
            for m in methods:
                units.append(Unit.of(Site(comp, layer, position=position), method_op(m, seed)))
    return units


def head_sweep(arch, method: str = "zero", position="all", seed: int = 0, layers=None) -> list[Unit]:
    layers = range(arch.n_layers) if layers is None else layers
    return [
        Unit.of(Site("head", layer, head=h, position=position), method_op(method, seed))
        for layer in layers if arch.layer_kinds[layer] == "attention"
        for h in range(arch.n_heads)
    ]


def method_op(method: str, seed: int = 0) -> Op:
    """Op for a method name used on the CLI and in chapters."""
    table = {"zero": Op.zero, "mean": Op.mean, "resample": lambda: Op.resample(seed),
             "denoise": lambda: Op.patch("clean"), "noise": lambda: Op.patch("corrupt"),
             "random": lambda: Op.random(seed)}
    if method not in table:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(table)}")
    return table[method]()


def exists(arch, comp: str, layer: int) -> bool:
    try:
        arch.relative_path(comp, layer)
        return True
    except ValueError:
        return False
