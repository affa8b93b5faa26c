"""LoRA targeting, training and adapter surgery on tiny random models (seconds)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_subject

from atlas_core import lora, tasks, tiny
from atlas_core.archmap import ArchMap
from atlas_core.claims import Claim
from atlas_core.subject import _finish

SCORES = pd.Series({0: 0.1, 1: 0.5, 2: 0.3, 3: 0.9, 4: 0.2, 5: 0.4, 6: 0.05, 7: 0.35})
DATA = [{"prompt": f"Item {i}: the sky is", "completion": " blue"} for i in range(8)]
HELD_OUT = [{"prompt": f"Item {i}: the sky is", "completion": " blue"} for i in range(20, 24)]
LEVELS = ("none", "low", "medium", "high")


class StubAtlas:
    """What lora reads from an `Atlas`: its primary metric, testable families and `layer_scores(metric=...)`."""

    primary_metric = "ld_frac"

    def __init__(self, ld_frac: dict, kl: dict, testable: list[str]):
        self.scores, self.testable_families = {"ld_frac": ld_frac, "kl": kl}, testable

    def layer_scores(self, family, component="block", method="zero", metric=None):
        return pd.Series(self.scores[metric or self.primary_metric], dtype=float).rename_axis("layer")


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


def test_evaluation_is_on_held_out_items(subject, adapter):
    """Evaluated on prompts the adapter never trained on: training taught ' blue' + EOS, so the adapted model
    completes held-out prompts exactly where the random base model does not."""
    assert not {e["prompt"] for e in HELD_OUT} & {e["prompt"] for e in DATA}
    ev = lora.EvalSet("toy", HELD_OUT, ["Hello there", "The capital of"], lambda t, e: t.strip() == "blue", 3)
    base = lora.evaluate(subject, ev)
    res = lora.evaluate(subject, ev, adapter)
    assert base["drift"] == pytest.approx(0.0, abs=1e-6) and res["drift"] > 0
    assert res["eval_loss"] < base["eval_loss"] - 2
    assert base["exact_match"] == 0.0 and res["exact_match"] == 1.0
    df = pd.DataFrame([{"s": "a", "n_trainable": 5, "eval_loss": x, "exact_match": 1.0, "drift": 0.1, "train_loss": 1.0}
                       for x in (1.0, 3.0)])
    out = lora.fmt_pm(lora.summarize(df, ["s"]))
    assert out.loc[0, "eval_loss"] == "2.000 ± 1.414" and out.loc[0, "n_seeds"] == 2


def test_training_families_eval_disjoint_from_train():
    """Chapter 05's eval sets share no prompt (and, for facts, no fact) with its training sets."""
    for f in tasks.TRAIN_FAMILIES:
        tr, ev = tasks.training_split(f, "train"), tasks.training_split(f, "eval")
        assert tr and ev and not {e["prompt"] for e in tr} & {e["prompt"] for e in ev}, f
        assert not {e.get("fact") for e in tr if "fact" in e} & {e.get("fact") for e in ev if "fact" in e}, f


def test_limits_come_from_the_data(tok):
    """Reference completions, cut at the generation cap, score exact match 1 (json_schema's longest completion
    did not fit the old 28-token cap); max_len truncates no train or eval example (27% were cut at 96)."""
    s = SimpleNamespace(tokenizer=tok)
    P = {**lora.profile("full"), "n_train": 10**6, "n_eval": 10**6}
    train, evalsets, P2 = lora.task_data(s, tasks.TRAIN_FAMILIES, P)
    rtok = lora.train_tokenizer(s)
    for f, ev in evalsets.items():
        assert len(ev.examples) == len(tasks.training_split(f, "eval"))
        for e in ev.examples:
            ids = lora.completion_ids(rtok, e)[: ev.max_new_tokens]
            assert ev.exact_match(tok.decode(ids, skip_special_tokens=True), e), (f, e["completion"])
        for e in train[f] + ev.examples:
            ids, labels = lora._encode_pair(rtok, e, P2["max_len"])
            assert len(ids) == len(rtok(e["prompt"])["input_ids"]) + len(lora.completion_ids(rtok, e))
        assert ev.max_len == P2["max_len"]
    assert max(ev.max_new_tokens for ev in evalsets.values()) > 28 and P2["max_len"] > 96


def test_last_logprobs_left_padding_absolute_positions(tok):
    """GPT-2 (absolute positions): a left-padded batch gives the one-by-one last-position log-probs."""
    s = tiny_subject("gpt2", tok)
    prompts = ["The capital of France is a city called", "Hi", "Item 3: the sky is"]
    batched = lora.last_logprobs(s.model, s, prompts)
    one = torch.cat([lora.last_logprobs(s.model, s, [p]) for p in prompts])
    assert torch.allclose(batched, one, atol=1e-4)


def _count(subject, t: lora.Target) -> int:
    from peft import get_peft_model

    pm = get_peft_model(copy.deepcopy(subject.model), lora.lora_config(t, subject.arch))
    return sum(p.numel() for p in pm.parameters() if p.requires_grad)


def test_random_control_matches_parameters_on_a_hybrid_model(tok):
    """tiny LFM2: convolution layers lack q/k/v/o, so two random layers are not two attention layers' worth of
    parameters. The random-matched control matches the count (within 5%) and is not the atlas's own set; where
    no other set can match, the comparison is flagged and not graded."""
    s = tiny_subject("lfm2", tok)
    counts = lora.layer_params(s.model, s.arch, lora.ALL_LINEAR, 8)
    assert counts[0] != counts[1]
    ref = lora.target(pd.Series({0: 0.9, 1: 0.8, 2: 0.1, 3: 0.0}), "f", s.arch, 2, "atlas")  # conv + attention
    n_ref = _count(s, ref)
    assert n_ref == counts[list(ref.layers)].sum()
    for seed in range(4):
        t = lora.matched_target(s, ref, seed)
        assert t.layers != ref.layers and abs(_count(s, t) / n_ref - 1) <= lora.PARAM_TOL
    both_attn = lora.target(pd.Series({0: 0.0, 1: 0.8, 2: 0.1, 3: 0.9}), "f", s.arch, 2, "atlas")
    assert both_attn.layers == (1, 3)
    assert lora.random_matched(counts, int(counts[[1, 3]].sum()), 2, 0, exclude=(1, 3)) is None
    t = lora.matched_target(s, both_attn, 0)
    assert t.layers != (1, 3) and abs(_count(s, t) / _count(s, both_attn) - 1) > lora.PARAM_TOL
    head = _head({"atlas": [1.0, 1.0, 1.0], "random": [2.0, 2.0, 2.0]}, n={"atlas": 22528, "random": 18944})
    v = lora.compare(head)
    assert not v.set_index("vs").loc["random", "params_matched"]
    claims = lora.lora_claims(v, NORM_NULL, _targets(), 2)
    assert "not graded" in claims[0].statement and claims[0].confidence == "none"


# --------------------------------------------------------------------------- claims
NORM_NULL = {"rho": 0.4, "p_value": 0.75, "min_p": 2 / 24, "n_layers": 4}


def _head(eval_loss: dict[str, list[float]], family: str = "f", n: dict | None = None, basis: str = "ld_frac") -> pd.DataFrame:
    return pd.DataFrame([{"family": family, "strategy": st, "seed": i, "eval_loss": x, "exact_match": 0.0,
                          "n_trainable": (n or {}).get(st, 100), "basis": basis if st.startswith("atlas") else ""}
                         for st, xs in eval_loss.items() for i, x in enumerate(xs)])


def _targets(basis: str = "ld_frac", family: str = "f") -> pd.DataFrame:
    return pd.DataFrame([{"family": family, "metric": "ld_frac", "basis": basis,
                          "why": "" if basis == "ld_frac" else "the model flips 0/4 f items"}]).set_index("family")


def _claim(claims: list[Claim], word: str) -> Claim:
    return next(c for c in claims if word in c.statement)


def test_atlas_vs_random_is_an_exact_sign_flip_test_over_seeds():
    """3 seeds, atlas lower in each: a bootstrap CI over them is [min, max] and would exclude 0; the exact
    sign-flip test gives p = 1/8, which the statement reports along with why it cannot pass the control."""
    v = lora.compare(_head({"atlas": [1.0, 2.0, 3.0], "random": [1.5, 2.1, 3.9]}))
    r = v.set_index("vs").loc["random"]
    assert r.p_value == pytest.approx(0.125) and r.min_p == pytest.approx(0.125) and r.n_seeds == 3
    c = lora.lora_claims(v, NORM_NULL, _targets(), 2)[0]
    assert "ci_excludes_control" not in c.evidence and c.evidence["p_value"] == pytest.approx(0.125)
    assert "3 seeds cannot give p below 0.125" in c.statement and "not significantly" in c.statement
    assert c.confidence == "none"  # the seeds are the test's own replicates: not counted again


def test_claims_follow_the_evidence():
    """Evidence saying the opposite flips the statement or lowers the confidence."""
    better = lora.compare(_head({"atlas": [1.0] * 6, "random": [1.5, 1.2, 1.9, 1.1, 1.3, 1.4]}))
    worse = lora.compare(_head({"atlas": [1.0] * 6, "random": [0.5, 0.8, 0.1, 0.9, 0.7, 0.6]}))
    c_b = lora.lora_claims(better, NORM_NULL, _targets(), 2)[0]
    c_w = lora.lora_claims(worse, NORM_NULL, _targets(), 2)[0]
    assert "reaches lower eval loss than" in c_b.statement and c_b.evidence["p_value"] == pytest.approx(1 / 64)
    # one family: the control alone (the seeds are its replicates, breadth needs >= 2 families) -> low
    assert c_b.confidence == "low" and "does not reach lower" in c_w.statement
    assert LEVELS.index(c_w.confidence) < LEVELS.index(c_b.confidence)
    assert "ci_excludes_control" not in c_b.evidence and "ci_excludes_control" not in c_w.evidence
    # the norm/effect statement follows the sign AND the test
    rises = {"rho": 0.9, "p_value": 0.01, "min_p": 1e-4, "n_layers": 30}
    for norm, word, level in [(rises, "rises", "low"), ({**rises, "rho": -0.9}, "falls", "low"),
                              ({**rises, "p_value": 0.3}, "no clear association", "none"),
                              (NORM_NULL, "no clear association", "none")]:
        c = _claim(lora.lora_claims(better, norm, _targets(), 2), "‖B·A‖")
        assert word in c.statement and c.confidence == level, (word, c.statement)
    assert "4 layers cannot give p below" in _claim(lora.lora_claims(better, NORM_NULL, _targets(), 2), "‖B·A‖").statement
    # an atlas that cannot target the family: "not testable here", and the fallback row is labelled
    cl = lora.lora_claims(better, NORM_NULL, _targets("kl"), 2)
    assert "not testable here" in cl[0].statement and cl[0].confidence == "none"
    assert "disruption-targeted" in cl[1].statement and "atlas-guided" not in cl[1].statement


def test_spearman_permutation_is_exact_for_few_layers():
    rho, p, min_p = lora.spearman_perm([1, 2, 3, 4], [10, 20, 30, 40])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24) and min_p == pytest.approx(2 / 24)
    rho, p, _ = lora.spearman_perm(np.arange(30), np.arange(30) + np.random.default_rng(0).normal(0, 3, 30))
    assert rho > 0.8 and p < 1e-3
    assert np.isnan(lora.spearman_perm([1, 1, 1], [1, 2, 3])[0])


def test_layer_scores_read_the_metric_and_fall_back_labelled():
    """ld_frac scores with NaN layers drop them; a family not solved has none, so atlas targeting falls back to
    KL labelled as disruption-targeted, or raises "not testable here" without a fallback."""
    arch = _arch("llama", 4)
    kl = {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.2}
    a = StubAtlas({0: np.nan, 1: 0.1, 2: 0.8, 3: 0.7}, kl, ["f"])
    assert list(lora.layer_scores(a, "f").index) == [1, 2, 3]
    t = lora.target(a, "f", arch, 2, "atlas")
    assert t.layers == (2, 3) and t.basis == "ld_frac"
    assert lora.target(a, "f", arch, 2, "atlas", metric="kl").layers == (1, 2)
    unsolved = StubAtlas(dict.fromkeys(range(4), np.nan), kl, [])
    assert lora.layer_scores(unsolved, "f").empty
    t = lora.target(unsolved, "f", arch, 2, "atlas")
    assert t.layers == (1, 2) and t.basis == "kl"
    tg = lora.targeting(unsolved, ["f"], arch, 2).loc["f"]
    assert tg["basis"] == "kl" and "disruption" in tg["targeting"] and tg["why"]
    with pytest.raises(ValueError, match="not testable here"):
        lora.target(unsolved, "f", arch, 2, "atlas", fallback=None)
    # scores that are not flagged testable do not count under ld_frac, even where some cell has a value
    assert lora.layer_scores(StubAtlas({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}, kl, []), "f").empty


def test_random_init_model_earns_no_claim_above_low(tok, tmp_path, monkeypatch):
    """Chapter 05's pipeline end to end on a random-init tiny model (its real atlas, smoke settings cut down to
    atlas vs random over the smoke profile's 3 seeds)."""
    from atlas_core.atlas import map_atlas

    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    s = tiny_subject("llama", tok, d=32, heads=2, kv_heads=1)
    fams = ["json_schema"]
    atlas = map_atlas(s, fams, ["block"], ["zero"], [0], 4, heads=False, positions=(), progress=False)
    P = {**lora.profile("smoke"), "n_train": 8, "n_eval": 2, "n_drift": 1, "steps": 2}
    train, evalsets, P = lora.task_data(s, fams, P)
    evalsets = {f: replace(ev, max_new_tokens=4) for f, ev in evalsets.items()}  # no claim reads exact match
    targets = lora.targeting(atlas, fams, s.arch, P["k"])
    runs = lora.headline_runs(atlas, s, fams, [42, 137, 256], P, strategies=("atlas", "random"))
    head = lora.run_grid(s, runs, train, evalsets, progress=False)
    surg = lora.train(s, fams[0], train[fams[0]], lora.target(None, fams[0], s.arch, 2, "all-linear"),
                      lora.TrainConfig(P["steps"], P["lr"], P["batch"], "adamw", 0, P["max_len"]))
    final = lora.effect_map(s, surg.path, evalsets[fams[0]].examples[:2], P["max_len"])
    claims = lora.lora_claims(lora.compare(head), lora.norm_effect(final), targets, P["k"])
    assert len(claims) >= 2 and all(c.confidence in ("none", "low") for c in claims), [c.row() for c in claims]
    assert all(c.evidence.get("ci_excludes_control") is not True for c in claims)


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
