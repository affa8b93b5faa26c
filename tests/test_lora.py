"""LoRA targeting, training and adapter surgery on tiny random models (seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from atlas_core import lora, tiny
from atlas_core.archmap import ArchMap
from atlas_core.subject import _finish

SCORES = pd.Series({0: 0.1, 1: 0.5, 2: 0.3, 3: 0.9, 4: 0.2, 5: 0.4, 6: 0.05, 7: 0.35})
DATA = [{"prompt": f"Item {i}: the sky is", "completion": " blue"} for i in range(8)]


def _arch(family: str, n_layers: int = 8) -> ArchMap:
    model, _ = tiny.build(family, vocab_size=64, n_layers=n_layers)
    return ArchMap.from_model(model)


@pytest.fixture(scope="module")
def subject():
    model, tok = tiny.build("llama", n_layers=4, d=32, heads=2, kv_heads=1)
    return _finish("tiny-llama-d32", model, tok, "random init", {})


@pytest.fixture(scope="module")
def adapter(subject, tmp_path_factory):
    t = lora.Target("atlas", (1, 3), lora.ALL_LINEAR, r=4, alpha=8.0)
    tc = lora.TrainConfig(steps=16, lr=2e-2, batch=4, seed=0)
    return lora.train(subject, "toy", DATA, t, tc, checkpoints=(0, 4), root=tmp_path_factory.mktemp("lora"))


def test_strategies_pick_layers():
    arch = _arch("llama")
    assert lora.target(SCORES, "f", arch, k=2, strategy="atlas").layers == (1, 3)
    assert lora.target({"f": SCORES}, "f", arch, k=2, strategy="atlas-late").layers == (5, 7)
    t = lora.target(None, "f", arch, k=2, strategy="all-linear", modules="o")
    assert t.layers is None and t.modules == lora.ALL_LINEAR
    cfg = lora.to_lora_config(SCORES, "f", arch, k=3, strategy="atlas", modules="o", r=4)
    assert cfg.layers_to_transform == [1, 3, 5] and set(cfg.target_modules) == {"self_attn.o_proj"}
    assert cfg.layers_pattern == "layers" and cfg.r == 4 and cfg.lora_alpha == 8
    with pytest.raises(ValueError, match="unknown strategy"):
        lora.target(SCORES, "f", arch, k=2, strategy="best")


def test_random_draws_distinct_same_size():
    arch = _arch("llama", 30)
    draws = [lora.target(None, "f", arch, k=5, strategy="random", seed=s).layers for s in range(3)]
    assert all(len(set(d)) == 5 and all(0 <= i < 30 for i in d) for d in draws)
    assert len(set(draws)) == 3
    assert draws[0] == lora.target(None, "f", arch, k=5, strategy="random", seed=0).layers


@pytest.mark.parametrize("family, modules, want", [
    ("gpt2", ("q", "k", "v", "o"), {"attn.c_attn", "attn.c_proj"}),
    ("gpt2", ("down",), {"mlp.c_proj"}),
    ("lfm2", ("o", "gate"), {"self_attn.out_proj", "feed_forward.w1"}),
])
def test_target_names_other_families(family, modules, want):
    from peft import get_peft_model

    arch = _arch(family, 4)
    assert set(lora.target_names(arch, modules)) == want
    model, _ = tiny.build(family, vocab_size=64, n_layers=4)
    pm = get_peft_model(model, lora.lora_config(lora.Target("atlas", (1, 3), modules, r=2), arch))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in pm.named_parameters() if ".lora_A." in n}
    layers = {int(n.split(f"{arch.paths.layers.split('.')[-1]}.")[1].split(".")[0]) for n in adapted}
    assert layers <= {1, 3} and adapted and all(any(n.endswith(w) for w in want) for n in adapted)


def test_training_reduces_loss_and_caches(subject, adapter, tmp_path):
    assert adapter.losses[-1] < 0.6 * adapter.losses[0]
    assert adapter.n_trainable == 2 * 4 * sum(  # r=4: A [4, in] + B [out, 4] for 7 modules in 2 layers
        (m.in_features + m.out_features) for n, m in subject.model.named_modules()
        if n.startswith("model.layers.1.") and isinstance(m, torch.nn.Linear))
    again = lora.train(subject, "toy", DATA, adapter.target, adapter.train, checkpoints=(0, 4), root=adapter.path.parents[2])
    assert again.cached and again.losses == adapter.losses and set(again.checkpoints) == {0, 4}
    fresh = lora.train(subject, "toy", DATA, adapter.target, adapter.train, root=tmp_path)  # deterministic given seed
    assert not fresh.cached and fresh.losses == pytest.approx(adapter.losses, rel=1e-4)


def test_base_model_restored(subject, adapter):
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    with lora.attach(subject, adapter):
        pass
    after = subject.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_norms_match_direct_computation(subject, adapter):
    with lora.attach(subject, adapter) as pm:
        norms = lora.update_norms(pm, subject.arch).set_index(["layer", "module"])["norm"]
        lm = pm.base_model.model.model.layers[3].mlp.down_proj
        direct = (lm.lora_B["default"].weight @ lm.lora_A["default"].weight * lm.scaling["default"]).norm()
    assert len(norms) == 14 and norms[(3, "down")] == pytest.approx(float(direct), rel=1e-5)


def test_rank_truncation(subject, adapter):
    enc = subject.encode(["Item 3: the sky is", "hello"])
    with lora.attach(subject, adapter) as pm:
        full = pm(**enc).logits
        with lora.truncated(pm, subject.arch, rank=4):
            same = pm(**enc).logits
        with lora.truncated(pm, subject.arch, rank=1):
            lm = pm.base_model.model.model.layers[1].self_attn.o_proj
            delta = lm.lora_B["default"].weight @ lm.lora_A["default"].weight
            assert torch.linalg.matrix_rank(delta) <= 1
        restored = pm(**enc).logits
        with lora.scaled(pm, subject.arch, None, 0.0):
            off = pm(**enc).logits
        with pm.disable_adapter():
            base = pm(**enc).logits
    assert torch.allclose(full, same, atol=1e-4) and torch.equal(full, restored)
    assert torch.allclose(off, base, atol=1e-5)


def test_layer_ablation_and_lock_in(subject, adapter):
    with lora.attach(subject, adapter) as pm:
        abl = lora.layer_ablation(pm, subject, DATA[:4])
    assert list(abl.layer) == [1, 3, "all"] and (abl.effect.iloc[-1] > 0)
    maps = lora.lock_in(subject, adapter, DATA[:4])
    assert sorted(maps.step.unique()) == [0, 4, 16]
    assert (maps[maps.step == 0].norm == 0).all()
    assert set(lora.lock_in_summary(maps, "norm").columns) == {"step", "rho_prev", "rho_final"}


def test_mismatch_error_names_both_shapes(adapter):
    model, tok = tiny.build("llama", n_layers=4, d=48, heads=2, kv_heads=1)
    other = _finish("tiny-llama-d48", model, tok, "random init", {})
    with pytest.raises(ValueError) as err:
        with lora.attach(other, adapter):
            pass
    msg = str(err.value)
    assert "\n" not in msg and "tiny-llama-d32" in msg and "tiny-llama-d48" in msg
    assert re.search(r"lora_[AB] of shape \[\d+, \d+\]", msg) and "[out=48, in=96]" in msg


def test_evaluate_and_summary(subject, adapter):
    ev = lora.EvalSet("toy", DATA[:4], ["Hello there", "The capital of"], lambda t, e: t.strip() == "blue", 3)
    base = lora.evaluate(subject, ev)
    res = lora.evaluate(subject, ev, adapter)
    assert base["drift"] == pytest.approx(0.0, abs=1e-6) and res["drift"] > 0
    assert res["eval_loss"] < base["eval_loss"] and 0 <= res["exact_match"] <= 1
    df = pd.DataFrame([{"s": "a", "n_trainable": 5, "eval_loss": x, "exact_match": 1.0, "drift": 0.1, "train_loss": 1.0}
                       for x in (1.0, 3.0)])
    out = lora.fmt_pm(lora.summarize(df, ["s"]))
    assert out.loc[0, "eval_loss"] == "2.000 ± 1.414" and out.loc[0, "n_seeds"] == 2


def test_a_run_finished_meanwhile_by_another_process_is_kept(subject, tmp_path, monkeypatch):
    """Two processes training the same run: the second to finish keeps the first's adapter instead of
    deleting a directory the first may be reading."""
    t = lora.target(None, "toy", subject.arch, 2, "all-linear", r=2)
    tc = lora.TrainConfig(2, 1e-2, 2, "adamw", 0, 32)
    first = lora.train(subject, "toy", DATA, t, tc, root=tmp_path)
    marker = first.path / "kept.txt"
    marker.write_text("first")
    real = lora._load_cached
    calls = {"n": 0}

    def not_there_at_start(*a, **k):  # the cache check at the start misses, as if the other process were still training
        calls["n"] += 1
        return None if calls["n"] == 1 else real(*a, **k)

    monkeypatch.setattr(lora, "_load_cached", not_there_at_start)
    second = lora.train(subject, "toy", DATA, t, tc, root=tmp_path)
    assert second.path == first.path and marker.exists()
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_grid_shared_with_a_helper_process(tmp_path, monkeypatch):
    """workers=2: a helper process trains the grid from the other end into the shared cache; the numbers are
    those of a one-process run, and the helper leaves no job file or temporary directory behind."""
    from atlas_core import load

    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "one"))
    s = load("tiny-llama")
    ev = lora.EvalSet("toy", DATA[:4], ["Hello there"], lambda t, e: t.strip() == "blue", 3)
    runs = [({"family": "toy"}, lora.target(None, "toy", s.arch, 2, "all-linear", r=2),
             lora.TrainConfig(3, 1e-2, 2, "adamw", seed, 32)) for seed in range(4)]
    one = lora.run_grid(s, runs, {"toy": DATA}, {"toy": ev}, progress=False)
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "two"))
    two = lora.run_grid(s, runs, {"toy": DATA}, {"toy": ev}, progress=False, workers=2)
    assert np.allclose(one["eval_loss"], two["eval_loss"], atol=1e-5)
    assert not list((tmp_path / "two").rglob(".tmp-*"))
    # the helper process alone fills the cache (from the other end), so the grid then only reads it
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "three"))
    proc, job = lora._helper(s, runs, {"toy": DATA})
    assert proc.wait(timeout=120) == 0
    Path(job).unlink()
    three = lora.run_grid(s, runs, {"toy": DATA}, {"toy": ev}, progress=False)
    assert three["cached"].all() and np.allclose(one["eval_loss"], three["eval_loss"], atol=1e-5)
