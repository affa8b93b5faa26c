"""Loader, architecture maps, embedded model, one-line errors."""

from __future__ import annotations

import pytest
import torch
import transformers

import atlas_core
from atlas_core.model import tiny
from atlas_core.model.archmap import ArchMap, UnsupportedArchitecture


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_map_paths_exist_and_heads_match_config(family):
    model, _ = tiny.build(family, vocab_size=128, n_layers=4)
    arch = ArchMap.from_model(model)
    assert arch.n_layers == 4
    for p in (arch.paths.embed, arch.paths.final_norm, arch.paths.unembed, arch.paths.layers):
        model.get_submodule(p)
    for i in range(arch.n_layers):
        lay = arch.layer(model, i)
        comps = ["block", "mlp", "mixer"] + list(arch.paths.modules) * (arch.layer_kinds[i] == "attention")
        comps += ["attn", "head"] if arch.layer_kinds[i] == "attention" else ["conv"]
        for c in comps:
            rel = arch.relative_path(c, i)
            if rel:
                lay.get_submodule(rel)
        if arch.layer_kinds[i] == "attention":
            out_proj = lay.get_submodule(arch.paths.out_proj)
            in_features = out_proj.weight.shape[0 if family == "gpt2" else 1]
            assert in_features == arch.n_heads * arch.head_dim
            assert arch.head_slice(arch.n_heads - 1).stop == in_features
    if family == "lfm2":
        assert set(arch.layer_kinds) == {"attention", "conv"}
    if family in ("llama", "qwen2", "lfm2"):
        assert arch.n_kv_heads == 2 and arch.n_heads == 4


def test_unsupported_architecture_one_line():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, is_decoder=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitecture) as e:
        ArchMap.from_model(model)
    msg = str(e.value)
    assert "\n" not in msg and "'bert'" in msg and "llama" in msg and "FAMILIES" in msg


def test_bad_names_and_paths_one_line(tmp_path):
    for bad, needle in [("no-such-model", "unknown model"), (str(tmp_path), "no config.json"),
                        ("some-org/not-on-this-machine", "cannot load")]:
        with pytest.raises(atlas_core.ModelNotFound) as e:
            atlas_core.load(bad)
        assert "\n" not in str(e.value) and needle in str(e.value)


def test_batched_left_padded_logits_equal_single(smol):
    prompts = ["The capital of France is", "When Mary and John went to the store, John gave a drink to", "1, 2, 3,"]
    with torch.inference_mode():
        batched = smol.model(**smol.encode(prompts)).logits[:, -1]
        for i, p in enumerate(prompts):
            single = smol.model(**smol.encode([p])).logits[:, -1]
            assert (batched[i] - single[0]).abs().max() < 1e-4


@pytest.mark.embedded
def test_embedded_model_says_paris(smol):
    enc = smol.encode(["The capital of France is"])
    out = smol.model.generate(**enc, max_new_tokens=1, do_sample=False)
    assert smol.tokenizer.decode(out[0, enc["input_ids"].shape[1]:]) == " Paris"
    text = str(smol)
    for needle in ("family=llama", "layers=30", "heads=9", "kv_heads=3", "params=", "dequantized", "float32"):
        assert needle in text
    assert len(smol.fingerprint) == 24


def test_fingerprint_follows_the_weights(tok):
    from conftest import tiny_subject

    a, same, other = tiny_subject("llama", tok, seed=0), tiny_subject("llama", tok, seed=0), tiny_subject("llama", tok, seed=1)
    assert a.fingerprint == same.fingerprint != other.fingerprint
    edited = tiny_subject("llama", tok, seed=0)
    with torch.no_grad():
        edited.model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert edited.fingerprint != a.fingerprint


def test_tiny_gemma3_has_sliding_and_global_layers():
    from atlas_core.model import tiny

    assert set(tiny.config("gemma3", 100).layer_types) == {"sliding_attention", "full_attention"}


def test_profiles_choose_the_device_every_load_follows(monkeypatch):
    """A profile's "auto" device is CUDA only where torch sees one; `load` without a device follows $ATLAS_DEVICE
    (what `profiles.chapter` sets for its kernel), so compare models and helper processes land on it too."""
    import torch

    from atlas_core import load, profiles

    assert profiles.device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert profiles.device("cpu") == "cpu" and profiles.get("smoke").get("device", "cpu") == "cpu"
    monkeypatch.setenv("ATLAS_DEVICE", "meta")
    assert load("tiny-llama").device.type == "meta"
    monkeypatch.delenv("ATLAS_DEVICE")
    assert load("tiny-llama").device.type == "cpu"
