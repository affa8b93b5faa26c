"""Architecture maps: where embeddings, blocks, attention, heads, MLPs and residual deltas live.

One `ArchMap` per loaded model. Paths are dotted module names; per-layer paths are relative to a
decoder layer. To support a new family, add an entry to `FAMILIES` (paths) and, if its config uses
unusual attribute names, extend `_dims`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class FamilyPaths:
    """Module paths of one architecture family (per-layer paths are relative to a decoder layer)."""

    layers: str
    embed: str
    final_norm: str
    unembed: str
    attn: str  # attention module (returns a tuple whose [0] is its output)
    attn_delta: str  # module whose output is the attention's write into the residual stream
    out_proj: str  # attention output projection; its input holds the per-head outputs
    mlp: str
    mlp_delta: str
    conv: str | None = None  # LFM2 short-convolution mixer
    conv_out_proj: str | None = None
    modules: dict[str, str] = field(default_factory=dict)  # canonical name -> path within a layer


_LLAMA_MODULES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}

FAMILIES: dict[str, FamilyPaths] = {
    "llama": FamilyPaths(
        layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
        attn="self_attn", attn_delta="self_attn", out_proj="self_attn.o_proj", mlp="mlp", mlp_delta="mlp",
        modules=_LLAMA_MODULES,
    ),
    "qwen2": FamilyPaths(
        layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
        attn="self_attn", attn_delta="self_attn", out_proj="self_attn.o_proj", mlp="mlp", mlp_delta="mlp",
        modules=_LLAMA_MODULES,
    ),
    # Gemma3 uses sandwich norms: the residual stream receives the post-norm outputs.
    "gemma3_text": FamilyPaths(
        layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
        attn="self_attn", attn_delta="post_attention_layernorm", out_proj="self_attn.o_proj",
        mlp="mlp", mlp_delta="post_feedforward_layernorm", modules=_LLAMA_MODULES,
    ),
    # LFM2 hybrids: each layer's mixer is either attention (self_attn) or a short convolution (conv).
    "lfm2": FamilyPaths(
        layers="model.layers", embed="model.embed_tokens", final_norm="model.embedding_norm",
        unembed="lm_head", attn="self_attn", attn_delta="self_attn", out_proj="self_attn.out_proj",
        mlp="feed_forward", mlp_delta="feed_forward", conv="conv", conv_out_proj="conv.out_proj",
        modules={
            "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
            "o": "self_attn.out_proj", "gate": "feed_forward.w1", "up": "feed_forward.w3",
            "down": "feed_forward.w2",
        },
    ),
    # GPT-2 fuses q, k, v into one Conv1D (c_attn); its weights are [in, out].
    "gpt2": FamilyPaths(
        layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
        attn="attn", attn_delta="attn", out_proj="attn.c_proj", mlp="mlp", mlp_delta="mlp",
        modules={"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    ),
}
ALIASES = {"gemma3": "gemma3_text", "mistral": "llama"}


class UnsupportedArchitecture(ValueError):
    """The model's family has no architecture map."""


def family_of(config) -> str:
    """Normalized family name for an HF config; raises a one-line error if unsupported."""
    mt = getattr(config, "model_type", None)
    if mt == "gemma3" and hasattr(config, "text_config"):
        mt = "gemma3_text"
    mt = ALIASES.get(mt, mt)
    if mt not in FAMILIES:
        raise UnsupportedArchitecture(
            f"unsupported architecture {mt!r}; supported: {', '.join(sorted(FAMILIES))} "
            f"(add a FamilyPaths entry to atlas_core/model/archmap.py FAMILIES to map a new one)"
        )
    return mt


@dataclass(frozen=True)
class ArchMap:
    """Resolved architecture of one model: dims, layer kinds and module paths."""

    family: str
    paths: FamilyPaths
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    layer_kinds: tuple[str, ...]  # "attention" or "conv" per layer

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ArchMap:
        cfg = model.config
        fam = family_of(cfg)
        paths = FAMILIES[fam]
        layers = _get(model, paths.layers)
        n_layers, d, h, kv, hd = _dims(cfg, fam)
        if fam == "lfm2":
            kinds = tuple("attention" if getattr(lay, "is_attention_layer", False) else "conv" for lay in layers)
        else:
            kinds = ("attention",) * len(layers)
        return cls(fam, paths, len(layers), d, h, kv, hd, kinds)

    # -- module resolution -------------------------------------------------
    def layer(self, model: torch.nn.Module, i: int) -> torch.nn.Module:
        return _get(model, self.paths.layers)[i]

    def layer_path(self, i: int) -> str:
        return f"{self.paths.layers}.{i}"

    def site_path(self, component: str, i: int) -> str:
        """Full dotted path of the module whose output is the component's residual write at layer i."""
        rel = self.relative_path(component, i)
        return f"{self.layer_path(i)}.{rel}" if rel else self.layer_path(i)

    def relative_path(self, component: str, i: int) -> str:
        p = self.paths
        kind = self.layer_kinds[i]
        if component in ("block", "resid"):
            return ""
        if component == "attn":
            if kind != "attention":
                raise ValueError(f"layer {i} is a {kind} layer: use component 'conv' (or 'mixer') there")
            return p.attn_delta
        if component == "conv":
            if kind != "conv":
                raise ValueError(f"layer {i} is an {kind} layer; 'conv' exists only on conv layers")
            return p.conv
        if component == "mixer":
            return p.conv if kind == "conv" else p.attn_delta
        if component == "mlp":
            return p.mlp_delta
        if component == "head":
            if kind != "attention":
                raise ValueError(f"layer {i} is a {kind} layer and has no attention heads")
            return p.out_proj
        if component in p.modules:
            return p.modules[component]
        raise ValueError(
            f"unknown component {component!r} for {self.family}; known: "
            f"block, resid, attn, mlp, mixer, head{', conv' if p.conv else ''}, {', '.join(p.modules)}"
        )

    def head_slice(self, h: int) -> slice:
        if not 0 <= h < self.n_heads:
            raise ValueError(f"head {h} out of range: this model has {self.n_heads} heads per layer")
        return slice(h * self.head_dim, (h + 1) * self.head_dim)

    def summary(self) -> str:
        kinds = sorted(set(self.layer_kinds))
        if len(kinds) == 1:
            kd = f"{kinds[0]} x{self.n_layers}"
        else:
            kd = "".join("A" if k == "attention" else "C" for k in self.layer_kinds) + " (A=attention, C=conv)"
        return (
            f"family={self.family} layers={self.n_layers} d_model={self.d_model} "
            f"heads={self.n_heads} kv_heads={self.n_kv_heads} head_dim={self.head_dim} layer_kinds={kd}"
        )


def _get(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return root.get_submodule(path) if path else root


def _dims(cfg, fam: str) -> tuple[int, int, int, int, int]:
    if fam == "gpt2":
        d, h = cfg.n_embd, cfg.n_head
        return cfg.n_layer, d, h, h, d // h
    d, h = cfg.hidden_size, cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or h
    hd = getattr(cfg, "head_dim", None) or d // h
    return cfg.num_hidden_layers, d, h, kv, hd
