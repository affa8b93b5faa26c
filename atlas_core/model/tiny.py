"""Tiny random models built locally (seconds), and planted-structure models whose causal layers are known.

Tiny models share the embedded SmolLM2 tokenizer so that the task suite runs on them (smoke profile);
pass `vocab_size` to build one without any tokenizer (unit tests on token ids).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FAMILIES = ("llama", "qwen2", "gemma3", "lfm2", "gpt2")


def config(family: str, vocab_size: int, n_layers: int = 4, d: int = 64, heads: int = 4, kv_heads: int = 2):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048)
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "gemma3":
        # every other layer global, so tiny gemma3 exercises both attention kinds (HF's 5:1 pattern would
        # leave a 4-layer model with none)
        kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        return tf.Gemma3TextConfig(**common, head_dim=d // heads, sliding_window=8, layer_types=kinds)
    if family == "lfm2":
        kinds = ["conv" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        return tf.Lfm2Config(**common, layer_types=kinds)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=d, n_layer=n_layers, n_head=heads, n_positions=2048,
                             bos_token_id=0, eos_token_id=0)
    raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def build(family: str, vocab_size: int | None = None, seed: int = 0, **kw):
    """(model, tokenizer) for a tiny random model; tokenizer is None when vocab_size is given."""
    from transformers import AutoModelForCausalLM

    tok = None
    if vocab_size is None:
        tok = shared_tokenizer()
        vocab_size = len(tok)
    cfg = config(family, vocab_size, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    d = kw.get("d", 64)
    with torch.no_grad():  # HF's default init (std 0.02) makes every layer nearly silent; use 1/sqrt(d)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not any(k in name for k in ("embed", "wte", "wpe")):
                p.normal_(0, d**-0.5)
    model.eval()
    return model, tok


def shared_tokenizer():
    from transformers import AutoTokenizer

    from .sources import embedded_dir

    tok = AutoTokenizer.from_pretrained(embedded_dir("smollm2-135m"))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def plant(model: torch.nn.Module, keep_blocks: Iterable[int] = (), keep_heads: Iterable[tuple[int, int]] = ()):
    """Zero every residual write except those planted, so the causal structure is known by construction.

    keep_blocks: layers whose attention and MLP both write to the residual stream.
    keep_heads: (layer, head) pairs whose attention output survives (their layer's MLP is silenced).
    Every other layer writes nothing: ablating it must change nothing, exactly."""
    from .archmap import ArchMap

    arch = ArchMap.from_model(model)
    keep_blocks, keep_heads = set(keep_blocks), set(keep_heads)
    with torch.no_grad():
        for i in range(arch.n_layers):
            lay = arch.layer(model, i)
            attn_o = lay.get_submodule(arch.paths.out_proj)
            mlp_o = lay.get_submodule(arch.paths.modules["down"])
            if i in keep_blocks:
                continue
            heads = [h for (li, h) in keep_heads if li == i]
            _zero_out_proj(attn_o, arch, keep=heads)
            _zero_out_proj(mlp_o, arch, keep=None)
    return model


def _zero_out_proj(lin: torch.nn.Module, arch, keep: list[int] | None) -> None:
    w = lin.weight  # nn.Linear: [out, in]; GPT-2 Conv1D: [in, out]
    in_dim = 0 if arch.family == "gpt2" else 1
    mask = torch.zeros(w.shape[in_dim], dtype=w.dtype)
    for h in keep or []:
        mask[arch.head_slice(h)] = 1
    shape = [1, 1]
    shape[in_dim] = -1
    w.mul_(mask.view(shape))
    if getattr(lin, "bias", None) is not None and not keep:
        lin.bias.zero_()
