"""LoRA targeting, training and adapter surgery on tiny random models (seconds)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_subject

from atlas_core import tasks
from atlas_core.evidence.claims import Claim
from atlas_core.model import tiny
from atlas_core.model.archmap import ArchMap
from atlas_core.model.subject import wrap
from atlas_core.studies import adapters
from atlas_core.studies.atlas import map_atlas

SCORES = pd.Series({0: 0.1, 1: 0.5, 2: 0.3, 3: 0.9, 4: 0.2, 5: 0.4, 6: 0.05, 7: 0.35})
DATA = [{"prompt": f"Item {i}: the sky is", "completion": " blue"} for i in range(8)]
HELD_OUT = [{"prompt": f"Item {i}: the sky is", "completion": " blue"} for i in range(20, 24)]
LEVELS = ("none", "low", "medium", "high")


class StubAtlas:
    """What the adapters read from an `Atlas`: its primary metric, testable families and `layer_scores(metric=...)`."""

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
    return wrap("tiny-llama-d32", model, tok, "random init", {})


@pytest.fixture(scope="module")
def adapter(subject, tmp_path_factory):
    t = adapters.Target("atlas", (1, 3), adapters.ALL_LINEAR, r=4, alpha=8.0)
    tc = adapters.TrainConfig(steps=16, lr=2e-2, batch=4, seed=0)
    return adapters.train(subject, "toy", DATA, t, tc, checkpoints=(0, 4), root=tmp_path_factory.mktemp("lora"))


def test_strategies_pick_layers():
    arch = _arch("llama")
    assert adapters.target(SCORES, "f", arch, k=2, strategy="atlas").layers == (1, 3)
    assert adapters.target({"f": SCORES}, "f", arch, k=2, strategy="atlas-late").layers == (5, 7)
    t = adapters.target(None, "f", arch, k=2, strategy="all-linear", modules="o")
    assert t.layers is None and t.modules == adapters.ALL_LINEAR
    cfg = adapters.to_lora_config(SCORES, "f", arch, k=3, strategy="atlas", modules="o", r=4)
    assert cfg.layers_to_transform == [1, 3, 5] and set(cfg.target_modules) == {"self_attn.o_proj"}
    assert cfg.layers_pattern == "layers" and cfg.r == 4 and cfg.lora_alpha == 8
    with pytest.raises(ValueError, match="unknown strategy"):
        adapters.target(SCORES, "f", arch, k=2, strategy="best")


def test_random_draws_distinct_same_size():
    arch = _arch("llama", 30)
    draws = [adapters.target(None, "f", arch, k=5, strategy="random", seed=s).layers for s in range(3)]
    assert all(len(set(d)) == 5 and all(0 <= i < 30 for i in d) for d in draws)
    assert len(set(draws)) == 3
    assert draws[0] == adapters.target(None, "f", arch, k=5, strategy="random", seed=0).layers


@pytest.mark.parametrize("family, modules, want", [
    ("gpt2", ("q", "k", "v", "o"), {"attn.c_attn", "attn.c_proj"}),
    ("gpt2", ("down",), {"mlp.c_proj"}),
    ("lfm2", ("o", "gate"), {"self_attn.out_proj", "feed_forward.w1"}),
])
def test_target_names_other_families(family, modules, want):
    from peft import get_peft_model

    arch = _arch(family, 4)
    assert set(adapters.target_names(arch, modules)) == want
    model, _ = tiny.build(family, vocab_size=64, n_layers=4)
    pm = get_peft_model(model, adapters.lora_config(adapters.Target("atlas", (1, 3), modules, r=2), arch))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in pm.named_parameters() if ".lora_A." in n}
    layers = {int(n.split(f"{arch.paths.layers.split('.')[-1]}.")[1].split(".")[0]) for n in adapted}
    assert layers <= {1, 3} and adapted and all(any(n.endswith(w) for w in want) for n in adapted)


def test_training_reduces_loss_and_caches(subject, adapter, tmp_path):
    assert adapter.losses[-1] < 0.6 * adapter.losses[0]
    assert adapter.n_trainable == 2 * 4 * sum(  # r=4: A [4, in] + B [out, 4] for 7 modules in 2 layers
        (m.in_features + m.out_features) for n, m in subject.model.named_modules()
        if n.startswith("model.layers.1.") and isinstance(m, torch.nn.Linear))
    again = adapters.train(subject, "toy", DATA, adapter.target, adapter.train, checkpoints=(0, 4), root=adapter.path.parents[2])
    assert again.cached and again.losses == adapter.losses and set(again.checkpoints) == {0, 4}
    fresh = adapters.train(subject, "toy", DATA, adapter.target, adapter.train, root=tmp_path)  # deterministic given seed
    assert not fresh.cached and fresh.losses == pytest.approx(adapter.losses, rel=1e-4)


def test_base_model_restored(subject, adapter):
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    with adapters.attach(subject, adapter):
        pass
    after = subject.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_norms_match_direct_computation(subject, adapter):
    with adapters.attach(subject, adapter) as pm:
        norms = adapters.update_norms(pm, subject.arch).set_index(["layer", "module"])["norm"]
        lm = pm.base_model.model.model.layers[3].mlp.down_proj
        direct = (lm.lora_B["default"].weight @ lm.lora_A["default"].weight * lm.scaling["default"]).norm()
    assert len(norms) == 14 and norms[(3, "down")] == pytest.approx(float(direct), rel=1e-5)


def test_rank_truncation(subject, adapter):
    enc = subject.encode(["Item 3: the sky is", "hello"])
    with adapters.attach(subject, adapter) as pm:
        full = pm(**enc).logits
        with adapters.truncated(pm, subject.arch, rank=4):
            same = pm(**enc).logits
        with adapters.truncated(pm, subject.arch, rank=1):
            lm = pm.base_model.model.model.layers[1].self_attn.o_proj
            delta = lm.lora_B["default"].weight @ lm.lora_A["default"].weight
            assert torch.linalg.matrix_rank(delta) <= 1
        restored = pm(**enc).logits
        with adapters.scaled(pm, subject.arch, None, 0.0):
            off = pm(**enc).logits
        with pm.disable_adapter():
            base = pm(**enc).logits
    assert torch.allclose(full, same, atol=1e-4) and torch.equal(full, restored)
    assert torch.allclose(off, base, atol=1e-5)


def test_lowrank_svd_matches_the_product_svd():
    """Truncation decomposes the r x r core of B·A: the same singular values and rank-k approximations as the
    SVD of the full product, including a rank-deficient update (a zero column of B)."""
    from atlas_core.studies.adapters.surgery import lowrank_svd

    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(6, 30, generator=g, dtype=torch.float64)
    B[:, 2] = 0
    U, S, Vh = lowrank_svd(B, A)
    U0, S0, Vh0 = torch.linalg.svd(B @ A, full_matrices=False)
    assert torch.allclose(S, S0[:6], atol=1e-10) and torch.allclose(U @ torch.diag(S) @ Vh, B @ A, atol=1e-10)
    for k in (1, 2, 4):
        approx0 = U0[:, :k] @ torch.diag(S0[:k]) @ Vh0[:k]
        assert torch.allclose(U[:, :k] @ torch.diag(S[:k]) @ Vh[:k], approx0, atol=1e-9)


def test_layer_ablation_and_lock_in(subject, adapter):
    with adapters.attach(subject, adapter) as pm:
        abl = adapters.layer_ablation(pm, subject, DATA[:4])
    assert list(abl.layer) == [1, 3, "all"] and (abl.effect.iloc[-1] > 0)
    maps = adapters.lock_in(subject, adapter, DATA[:4])
    assert sorted(maps.step.unique()) == [0, 4, 16]
    assert (maps[maps.step == 0].norm == 0).all()
    with adapters.attach(subject, adapter.checkpoints[0]) as pm:  # step 0: B = 0, so every forward equals the base
        computed = adapters.layer_ablation(pm, subject, DATA[:4])
    assert (computed.effect == 0).all() and (maps[maps.step == 0].effect == 0).all()  # the shortcut is exact
    assert set(adapters.lock_in_summary(maps, "norm").columns) == {"step", "rho_prev", "rho_final"}
    both = adapters.lock_in_table(maps)
    assert list(both["step"]) == [0, 4, 16]
    assert both["rho_final_norm"].equals(adapters.lock_in_summary(maps, "norm")["rho_final"].rename("rho_final_norm"))


def test_mismatch_error_names_both_shapes(adapter):
    model, tok = tiny.build("llama", n_layers=4, d=48, heads=2, kv_heads=1)
    other = wrap("tiny-llama-d48", model, tok, "random init", {})
    with pytest.raises(ValueError) as err:
        with adapters.attach(other, adapter):
            pass
    msg = str(err.value)
    assert "\n" not in msg and "tiny-llama-d32" in msg and "tiny-llama-d48" in msg
    assert re.search(r"lora_[AB] of shape \[\d+, \d+\]", msg) and "[out=48, in=96]" in msg


def test_evaluation_is_on_held_out_items(subject, adapter):
    """Evaluated on prompts the adapter never trained on: training taught ' blue' + EOS, so the adapted model
    completes held-out prompts exactly where the random base model does not."""
    assert not {e["prompt"] for e in HELD_OUT} & {e["prompt"] for e in DATA}
    ev = adapters.EvalSet("toy", HELD_OUT, ["Hello there", "The capital of"], lambda t, e: t.strip() == "blue", 3)
    base = adapters.evaluate(subject, ev)
    res = adapters.evaluate(subject, ev, adapter)
    assert base["drift"] == pytest.approx(0.0, abs=1e-6) and res["drift"] > 0
    assert res["eval_loss"] < base["eval_loss"] - 2
    assert base["exact_match"] == 0.0 and res["exact_match"] == 1.0
    df = pd.DataFrame([{"s": "a", "n_trainable": 5, "eval_loss": x, "exact_match": 1.0, "drift": 0.1, "train_loss": 1.0}
                       for x in (1.0, 3.0)])
    out = adapters.fmt_pm(adapters.summarize(df, ["s"]))
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
    P = {**adapters.profile("full"), "n_train": 10**6, "n_eval": 10**6}
    train, evalsets, P2 = adapters.task_data(s, tasks.TRAIN_FAMILIES, P)
    rtok = adapters.train_tokenizer(s)
    for f, ev in evalsets.items():
        assert len(ev.examples) == len(tasks.training_split(f, "eval"))
        for e in ev.examples:
            ids = adapters.completion_ids(rtok, e)[: ev.max_new_tokens]
            assert ev.exact_match(tok.decode(ids, skip_special_tokens=True), e), (f, e["completion"])
        for e in train[f] + ev.examples:
            ids, labels = adapters.encode_pair(rtok, e, P2["max_len"])
            assert len(ids) == len(rtok(e["prompt"])["input_ids"]) + len(adapters.completion_ids(rtok, e))
        assert ev.max_len == P2["max_len"]
    assert max(ev.max_new_tokens for ev in evalsets.values()) > 28 and P2["max_len"] > 96
    line = adapters.data_limits(train, evalsets, P2)
    assert line.startswith(f"max_len {P2['max_len']} tokens") and str({f: ev.max_new_tokens for f, ev in evalsets.items()}) in line
    fams, seeds = list(tasks.TRAIN_FAMILIES), adapters.headline_seeds([1, 2, 3], P)
    assert len(seeds) == 8 and seeds[3:] == [1000, 1001, 1002, 1003, 1004]
    line = adapters.budget("full", P, fams, adapters.HEADLINE, seeds)
    assert (f"learning-rate search 6 strategies x {len(P['lrs'])} rates {P['lrs']} x 2 seed(s) on {fams}; headline 3 "
            "task(s) x 6 strategies x 8 seeds of 100 steps (batch 8)") in line
    n = 6 * len(P["lrs"]) * 2 * 3 + (3 * 6 * 8 - 6 * 2 * 3) + len(P["modules"]) + len(set(P["ranks"]) - {8}) + 2
    assert line.endswith(f"{n} trainings in all")


def test_last_logprobs_left_padding_absolute_positions(tok, tmp_path):
    """GPT-2 (absolute positions): a left-padded batch gives each prompt's own last-position log-probs, with and
    without an adapter attached. A forward without position ids (what `last_logprobs` once ran) does not: padding
    shifts every real token's position, so this check can fail. Greedy generation is batched the same way and stops
    at the tokenizer's EOS (the token training appends), which this model's generation config does not name."""
    s = tiny_subject("gpt2", tok)
    prompts = ["The capital of France is a city called", "Hi", "Item 3: the sky is"]
    enc = s.encode(prompts)
    assert len(set(enc["attention_mask"].sum(1).tolist())) == 3  # three lengths: two rows are left-padded
    one = torch.cat([adapters.last_logprobs(s, [p]) for p in prompts])
    assert torch.allclose(adapters.last_logprobs(s, prompts), one, atol=1e-4)
    with torch.no_grad():
        naive = torch.log_softmax(s.model(**enc).logits[:, -1].float(), -1)
    assert not torch.allclose(naive, one, atol=1e-4)
    ad = adapters.train(s, "toy", DATA, adapters.Target("all-linear", None, r=4, alpha=8.0),
                        adapters.TrainConfig(steps=16, lr=2e-2, batch=4), root=tmp_path)
    eos = tok.eos_token_id
    assert s.model.generation_config.eos_token_id != eos
    held = [e["prompt"] for e in HELD_OUT] + ["Hi", "The capital of France is a city called"]
    with adapters.attach(s, ad):
        tuned = torch.cat([adapters.last_logprobs(s, [p]) for p in prompts])
        assert torch.allclose(adapters.last_logprobs(s, prompts), tuned, atol=1e-4)
        texts = adapters.generate(s, held, 4)
        assert texts == [adapters.generate(s, [p], 4)[0] for p in held]
        enc = s.encode(held)
        with torch.no_grad():  # the same greedy run, stopping only where the generation config says
            raw = s.model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert not torch.allclose(tuned, one, atol=1e-2)  # the adapter was attached while it ran
    cut = [r[: r.index(eos)] if eos in r else r for r in raw[:, enc["input_ids"].shape[1]:].tolist()]
    assert any(len(c) < 4 for c in cut)  # some completion reaches the tokenizer's EOS early ...
    assert texts == tok.batch_decode(cut, skip_special_tokens=True)  # ... and generation ends there


def test_cache_keys_are_unchanged():
    """Adapters and their evaluations are cached by content: these keys name the folders and files of every
    adapter trained so far (results/lora), so a refactor must not change what goes into them."""
    s = SimpleNamespace(fingerprint="0123456789abcdef01234567")
    t = adapters.Target("atlas", (3, 5), adapters.ALL_LINEAR, 8, 16.0, "ld_frac")
    tc = adapters.TrainConfig(24, 2e-3, 8, "adamw", 42, 57)
    assert adapters.data_hash(DATA) == "08598f92b54d5024"
    path = adapters.adapter_dir(s, "json_schema", t, tc, adapters.data_hash(DATA), Path("/r"))
    assert path == Path("/r/0123456789ab/json_schema/atlas-s42-0b6815f63811b636")
    ev = adapters.EvalSet("toy", DATA[:4], ["Hello there", "The capital of"], None, 3, 57, DATA[4:])
    assert ev.key == "140be183fa4ccdbf"
    assert adapters.training.cache_key(adapters.data_hash(ev.val), ev.max_len) == "1d1ba45e4ad85451"


def _count(subject, t: adapters.Target) -> int:
    from peft import get_peft_model

    pm = get_peft_model(copy.deepcopy(subject.model), adapters.lora_config(t, subject.arch))
    return sum(p.numel() for p in pm.parameters() if p.requires_grad)


def test_random_control_matches_parameters_on_a_hybrid_model(tok):
    """tiny LFM2: convolution layers lack q/k/v/o, so two random layers are not two attention layers' worth of
    parameters. The random-matched control matches the count (within 5%) and is not the atlas's own set; where
    no other set can match, the comparison is flagged and not graded."""
    s = tiny_subject("lfm2", tok)
    counts = adapters.layer_params(s.model, s.arch, adapters.ALL_LINEAR, 8)
    assert counts[0] != counts[1]
    ref = adapters.target(pd.Series({0: 0.9, 1: 0.8, 2: 0.1, 3: 0.0}), "f", s.arch, 2, "atlas")  # conv + attention
    n_ref = _count(s, ref)
    assert n_ref == counts[list(ref.layers)].sum()
    for seed in range(4):
        t = adapters.matched_target(s, ref, seed)
        assert t.layers != ref.layers and abs(_count(s, t) / n_ref - 1) <= adapters.PARAM_TOL
    both_attn = adapters.target(pd.Series({0: 0.0, 1: 0.8, 2: 0.1, 3: 0.9}), "f", s.arch, 2, "atlas")
    assert both_attn.layers == (1, 3)
    assert adapters.random_matched(counts, int(counts[[1, 3]].sum()), 2, 0, exclude=(1, 3)) is None
    t = adapters.matched_target(s, both_attn, 0)
    assert t.layers != (1, 3) and abs(_count(s, t) / _count(s, both_attn) - 1) > adapters.PARAM_TOL
    head = _head({"atlas": [1.0] * 6, **{c: [2.0] * 6 for c in adapters.CONTROLS}},
                 n={"atlas": 22528, "random": 18944, "depth-matched": 22528, "wrong-family": 22528})
    v = adapters.compare(head)
    assert not v.set_index("vs").loc["random", "params_matched"]
    claims = adapters.lora_claims(v, NORM_NULL, _targets(), 2, lrs=_lrs(head))
    assert "not graded" in claims[0].statement and "random layer set matches" in claims[0].statement
    assert claims[0].confidence == "none"


# --------------------------------------------------------------------------- claims
NORM_NULL = {"rho": 0.4, "p_value": 0.75, "min_p": 2 / 24, "n_layers": 4}


def _head(eval_loss: dict[str, list[float]], family: str = "f", n: dict | None = None, basis: str = "ld_frac") -> pd.DataFrame:
    return pd.DataFrame([{"family": family, "strategy": st, "seed": i, "eval_loss": x, "exact_match": 0.0,
                          "n_trainable": (n or {}).get(st, 100), "basis": basis if st.startswith("atlas") else ""}
                         for st, xs in eval_loss.items() for i, x in enumerate(xs)])


def _lrs(head: pd.DataFrame, n_lrs: int = 4) -> pd.DataFrame:
    """A `choose_lr` table: every (family, strategy) of `head` searched on its own validation split."""
    pairs = head[["family", "strategy"]].drop_duplicates()
    return pairs.assign(lr=1e-3, val_loss=1.0, n_lrs=n_lrs, n_search_seeds=1, at_edge=False)


def _controls(atlas: list[float], others: list[float], family: str = "f", **kw) -> pd.DataFrame:
    """atlas vs the three controls and all-linear, each control with the same `others` losses."""
    return _head({"atlas": atlas, **{c: others for c in (*adapters.CONTROLS, "all-linear")}}, family, **kw)


def _targets(basis: str = "ld_frac", family: str = "f") -> pd.DataFrame:
    return pd.DataFrame([{"family": family, "metric": "ld_frac", "basis": basis,
                          "why": "" if basis == "ld_frac" else "the model flips 0/4 f items"}]).set_index("family")


def _claim(claims: list[Claim], word: str) -> Claim:
    return next(c for c in claims if word in c.statement)


def test_atlas_vs_its_controls_is_an_exact_sign_flip_test_over_seeds():
    """3 seeds, atlas lower in each: a bootstrap CI over them is [min, max] and would exclude 0; the exact
    sign-flip test gives p = 1/8, which the statement reports along with why it cannot pass the control."""
    head = _controls([1.0, 2.0, 3.0], [1.5, 2.1, 3.9])
    v = adapters.compare(head)
    r = v.set_index("vs").loc["random"]
    assert r.p_value == pytest.approx(0.125) and r.min_p == pytest.approx(0.125) and r.n_seeds == 3
    c = adapters.lora_claims(v, NORM_NULL, _targets(), 2, lrs=_lrs(head))[0]
    assert "ci_excludes_control" not in c.evidence and c.evidence["p_value"] == pytest.approx(0.125)
    assert "3 seeds cannot give p below 0.125" in c.statement and "not significantly" in c.statement
    assert c.confidence == "none"


def test_claims_follow_the_evidence():
    """Evidence saying the opposite flips the statement or lowers the confidence."""
    others = [1.5, 1.2, 1.9, 1.1, 1.3, 1.4]
    better, worse = _controls([1.0] * 6, others), _controls([1.0] * 6, [2 - x for x in others])
    c_b = adapters.lora_claims(adapters.compare(better), NORM_NULL, _targets(), 2, lrs=_lrs(better))[0]
    c_w = adapters.lora_claims(adapters.compare(worse), NORM_NULL, _targets(), 2, lrs=_lrs(worse))[0]
    assert "beats every strategy it was compared with" in c_b.statement
    assert c_b.evidence["p_value"] == pytest.approx(1 / 64)
    # one family: the control alone (the seeds are its replicates, breadth needs >= 2 families) -> low
    assert c_b.confidence == "low" and "does not beat every strategy" in c_w.statement
    assert LEVELS.index(c_w.confidence) < LEVELS.index(c_b.confidence)
    assert "ci_excludes_control" not in c_b.evidence and "ci_excludes_control" not in c_w.evidence
    # the norm/effect statement follows the sign AND the test
    better = adapters.compare(better)
    rises = {"rho": 0.9, "p_value": 0.01, "min_p": 1e-4, "n_layers": 30}
    for norm, word, level in [(rises, "rises", "low"), ({**rises, "rho": -0.9}, "falls", "low"),
                              ({**rises, "p_value": 0.3}, "no clear association", "none"),
                              (NORM_NULL, "no clear association", "none")]:
        c = _claim(adapters.lora_claims(better, norm, _targets(), 2), "‖B·A‖")
        assert word in c.statement and c.confidence == level, (word, c.statement)
    assert "4 layers cannot give p below" in _claim(adapters.lora_claims(better, NORM_NULL, _targets(), 2), "‖B·A‖").statement
    # an atlas that cannot target the family: "not testable here", and the fallback row is labelled
    cl = adapters.lora_claims(better, NORM_NULL, _targets("kl"), 2)
    assert "not testable here" in cl[0].statement and cl[0].confidence == "none"
    assert "disruption-targeted" in cl[1].statement and "atlas-guided" not in cl[1].statement


def test_spearman_permutation_is_exact_for_few_layers():
    rho, p, min_p = adapters.spearman_perm([1, 2, 3, 4], [10, 20, 30, 40])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24) and min_p == pytest.approx(2 / 24)
    rho, p, _ = adapters.spearman_perm(np.arange(30), np.arange(30) + np.random.default_rng(0).normal(0, 3, 30))
    assert rho > 0.8 and p < 1e-3
    assert np.isnan(adapters.spearman_perm([1, 1, 1], [1, 2, 3])[0])


def test_layer_scores_read_the_metric_and_fall_back_labelled():
    """ld_frac scores with NaN layers drop them; a family not solved has none, so atlas targeting falls back to
    KL labelled as disruption-targeted, or raises "not testable here" without a fallback."""
    arch = _arch("llama", 4)
    kl = {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.2}
    a = StubAtlas({0: np.nan, 1: 0.1, 2: 0.8, 3: 0.7}, kl, ["f"])
    assert list(adapters.layer_scores(a, "f").index) == [1, 2, 3]
    t = adapters.target(a, "f", arch, 2, "atlas")
    assert t.layers == (2, 3) and t.basis == "ld_frac"
    assert adapters.target(a, "f", arch, 2, "atlas", metric="kl").layers == (1, 2)
    unsolved = StubAtlas(dict.fromkeys(range(4), np.nan), kl, [])
    assert adapters.layer_scores(unsolved, "f").empty
    t = adapters.target(unsolved, "f", arch, 2, "atlas")
    assert t.layers == (1, 2) and t.basis == "kl"
    tg = adapters.targeting(unsolved, ["f"], arch, 2).loc["f"]
    assert tg["basis"] == "kl" and "disruption" in tg["targeting"] and tg["why"]
    with pytest.raises(ValueError, match="not testable here"):
        adapters.target(unsolved, "f", arch, 2, "atlas", fallback=None)
    # scores that are not flagged testable do not count under ld_frac, even where some cell has a value
    assert adapters.layer_scores(StubAtlas({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}, kl, []), "f").empty


def test_random_init_model_earns_no_claim_above_low(tok, tmp_path, monkeypatch):
    """Chapter 05's pipeline end to end on a random-init tiny model (its real atlas over two families, the smoke
    profile's learning-rate search and controls, cut down to 2 steps, over 5 seeds), with the chapter's tables: the
    headline summary, the surgery and atlas-diff adapters (the search's and the headline's, reused), the diff."""
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    s = tiny_subject("llama", tok, d=32, heads=2, kv_heads=1)
    fams, pool = ["json_schema"], ["json_schema", "factual_recall"]
    atlas = map_atlas(s, pool, ["block"], ["zero"], [0], 4, heads=False, positions=(), progress=False)
    P = {**adapters.profile("smoke"), "n_train": 8, "n_val": 2, "n_eval": 2, "n_drift": 1, "steps": 2}
    train, evalsets, P = adapters.task_data(s, fams, P)
    evalsets = {f: replace(ev, max_new_tokens=4) for f, ev in evalsets.items()}  # no claim reads exact match
    targets = adapters.targeting(atlas, fams, s.arch, P["k"], pool=pool)
    scores = adapters.score_table(atlas, pool, s.arch, P["k"])
    bases = adapters.targeting(atlas, pool, s.arch, P["k"])["basis"]
    assert set(scores["family"]) == set(pool) and (scores["basis"] == scores["family"].map(bases)).all()
    seeds = [42, 137, 256, 512, 1024]
    search = adapters.run_grid(s, adapters.lr_runs(atlas, s, fams, seeds, P, pool), train, evalsets, progress=False,
                               score="val")
    lrs = adapters.choose_lr(search)
    head = adapters.run_grid(s, adapters.headline_runs(atlas, s, fams, seeds, P, lr=lrs, pool=pool), train, evalsets,
                             progress=False)
    assert set(head["strategy"]) == {"none", *P["strategies"]} and head.query("seed == 42")["cached"].all()
    table, note = adapters.headline_table(head, search, P["k"], s.arch.n_layers)
    assert list(table["strategy"]) == ["none", *P["strategies"]] and (table["n_seeds"][1:] == 5).all()
    assert table.loc[1, "eval_loss"].count(" ± ") == 1
    assert note.splitlines() == ["atlas-guided adapters train 50% of the all-linear parameters (by construction: 2 of "
                                 "4 layers)", f"{len(search)} search runs, 25 headline runs (5 of them reused from "
                                 "the search)"]
    surg = adapters.sweep_adapter(s, atlas, "all-linear", train, lrs, P, seeds[0], P["checkpoints"])
    a_ad = adapters.sweep_adapter(s, atlas, "atlas", train, lrs, P, seeds[0])
    assert surg.cached and a_ad.cached  # the search's and the headline's runs, not trained again
    assert a_ad.target.layers == targets.loc[fams[0], "atlas"] and surg.target.layers is None
    final = adapters.effect_map(s, surg.path, evalsets[fams[0]].examples[:2], P["max_len"])
    claims = adapters.lora_claims(adapters.compare(head), adapters.norm_effect(final), targets, P["k"], lrs=lrs)
    assert len(claims) >= 2 and all(c.confidence in ("none", "low") for c in claims), [c.row() for c in claims]
    assert all(c.evidence.get("ci_excludes_control") is not True for c in claims)
    moved = adapters.atlas_diff(s, a_ad, fams, P, [0])
    assert set(moved["component"]) == {"block"} and sorted(moved["layer"]) == list(range(s.arch.n_layers))
    assert np.allclose(moved["delta"], moved["b"] - moved["a"]) and moved["delta"].abs().max() > 0


def test_a_run_finished_meanwhile_by_another_process_is_kept(subject, tmp_path, monkeypatch):
    """Two processes training the same run: the second to finish keeps the first's adapter instead of
    deleting a directory the first may be reading."""
    t = adapters.target(None, "toy", subject.arch, 2, "all-linear", r=2)
    tc = adapters.TrainConfig(2, 1e-2, 2, "adamw", 0, 32)
    first = adapters.train(subject, "toy", DATA, t, tc, root=tmp_path)
    marker = first.path / "kept.txt"
    marker.write_text("first")
    real = adapters.training.load_cached
    calls = {"n": 0}

    def not_there_at_start(*a, **k):  # the cache check at the start misses, as if the other process were still training
        calls["n"] += 1
        return None if calls["n"] == 1 else real(*a, **k)

    monkeypatch.setattr(adapters.training, "load_cached", not_there_at_start)
    second = adapters.train(subject, "toy", DATA, t, tc, root=tmp_path)
    assert second.path == first.path and marker.exists()
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_grid_shared_with_a_helper_process(tmp_path, monkeypatch):
    """workers=2: a helper process trains the grid from the other end into the shared cache; the numbers are
    those of a one-process run, and the helper leaves no job file or temporary directory behind."""
    from atlas_core import load

    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "one"))
    s = load("tiny-llama")
    ev = adapters.EvalSet("toy", DATA[:4], ["Hello there"], lambda t, e: t.strip() == "blue", 3)
    runs = [({"family": "toy"}, adapters.target(None, "toy", s.arch, 2, "all-linear", r=2),
             adapters.TrainConfig(3, 1e-2, 2, "adamw", seed, 32)) for seed in range(4)]
    one = adapters.run_grid(s, runs, {"toy": DATA}, {"toy": ev}, progress=False)
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "two"))
    two = adapters.run_grid(s, runs, {"toy": DATA}, {"toy": ev}, progress=False, workers=2)
    assert np.allclose(one["eval_loss"], two["eval_loss"], atol=1e-5)
    assert not list((tmp_path / "two").rglob(".tmp-*"))
    # the helper process alone fills the cache (from the other end), so the grid then only reads it; with eval
    # sets it can be sent (a picklable exact match), it scores its runs too, and the grid evaluates nothing
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "three"))
    proc, job = adapters.start_helper(s, runs, {"toy": DATA})
    assert proc.wait(timeout=120) == 0
    Path(job).unlink()
    three = adapters.run_grid(s, runs, {"toy": DATA}, {"toy": ev}, progress=False)
    assert three["cached"].all() and np.allclose(one["eval_loss"], three["eval_loss"], atol=1e-5)
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "four"))
    ev4 = adapters.EvalSet("toy", [{**e, "expected": "blue"} for e in DATA[:4]], ["Hello there"],
                           partial(tasks.exact_match, "toy"), 3)
    proc, job = adapters.start_helper(s, runs, {"toy": DATA}, evalsets={"toy": ev4})
    assert proc.wait(timeout=120) == 0
    Path(job).unlink()
    monkeypatch.setattr(adapters.evaluation, "generate", lambda *a, **k: pytest.fail("the helper did not evaluate"))
    four = adapters.run_grid(s, runs, {"toy": DATA}, {"toy": ev4}, progress=False)
    assert four["cached"].all() and np.allclose(one["eval_loss"], four["eval_loss"], atol=1e-5)
    assert (four["exact_match"] >= 0).all()


# --------------------------------------------------------------------------- issue 18, item 8: controls and learning rates
def test_learning_rate_is_the_validation_argmin_and_never_reads_eval_items(subject, tmp_path, monkeypatch):
    """Each strategy's rate is the argmin of its validation loss over the grid; the search never evaluates (no
    generation, no eval items: replacing them changes nothing); the headline trains each strategy at its own rate
    and reuses the search seed's adapter instead of training it again."""
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    data = [{"prompt": f"Item {i}: the sky is", "completion": " blue"} for i in range(12)]
    train, val = adapters.split_val(data, 8, 4)
    assert len(train) == 8 and not {e["prompt"] for e in train} & {e["prompt"] for e in val}
    ev = adapters.EvalSet("toy", HELD_OUT, ["Hello there"], lambda t, e: t.strip() == "blue", 3, None, val)
    P = {"k": 2, "r": 4, "steps": 6, "batch": 4, "lr": 1e-3, "lrs": [1e-4, 1e-3, 1e-2, 5e-2], "search_seeds": 1,
         "sweep_family": "toy", "checkpoints": [0, 2], "strategies": ["atlas", "random", "all-linear"]}
    real = adapters.evaluation.evaluate
    monkeypatch.setattr(adapters.evaluation, "evaluate", lambda *a, **k: pytest.fail("the search evaluated on eval items"))
    runs = adapters.lr_runs(SCORES.iloc[:4], subject, ["toy"], [0, 1, 2], P)
    assert len(runs) == 3 * 4 and {tc.seed for _, _, tc in runs} == {0}
    search = adapters.run_grid(subject, runs, {"toy": train}, {"toy": ev}, progress=False, score="val")
    chosen = adapters.choose_lr(search).set_index("strategy")
    for st, g in search.groupby("strategy"):
        assert chosen.loc[st, "lr"] == g.loc[g["val_loss"].idxmin(), "lr"] and chosen.loc[st, "n_lrs"] == 4
    other = replace(ev, examples=[{"prompt": "Something else", "completion": " red"}] * 4)
    again = adapters.run_grid(subject, runs, {"toy": train}, {"toy": other}, progress=False, score="val")
    assert again["cached"].all() and adapters.choose_lr(again).equals(adapters.choose_lr(search))
    monkeypatch.setattr(adapters.evaluation, "evaluate", real)
    head = adapters.run_grid(subject, adapters.headline_runs(SCORES.iloc[:4], subject, ["toy"], [0, 1], P, lr=adapters.choose_lr(search)),
                         {"toy": train}, {"toy": ev}, progress=False)
    trained = head[head["strategy"] != "none"]
    assert (trained["lr"] == trained["strategy"].map(chosen["lr"])).all()
    assert trained.query("seed == 0")["cached"].all()  # the search's run at the chosen rate, not trained again
    surg = adapters.train(subject, "toy", train, adapters.target(None, "toy", subject.arch, 2, "all-linear", r=4),
                      adapters.TrainConfig(6, chosen.loc["all-linear", "lr"], 4, "adamw", 0), checkpoints=(0, 2))
    assert surg.cached  # the surgery adapter kept its checkpoints in the search


def test_task_data_validation_is_disjoint_from_train_and_eval(tok):
    """Validation items come from the training split (never the eval split) and share no prompt or fact with the
    training items."""
    s = SimpleNamespace(tokenizer=tok)
    train, evalsets, _ = adapters.task_data(s, tasks.TRAIN_FAMILIES, {**adapters.profile("default"), "n_eval": 8})
    for f, ev in evalsets.items():
        val, tr = ev.val, train[f]
        assert len(val) == 32 and tr
        assert not {e["prompt"] for e in val} & ({e["prompt"] for e in tr} | {e["prompt"] for e in ev.examples})
        assert not {e.get("fact") for e in val if "fact" in e} & {e.get("fact") for e in tr if "fact" in e}, f
        assert {e["prompt"] for e in val} <= {e["prompt"] for e in tasks.training_split(f, "train")}


def test_depth_matched_control_stays_in_the_atlas_layers_depth_bins(tok):
    """30 layers: bins of 3. Each atlas layer gets a random other layer of its own bin, never an atlas layer; a
    bin with no free layer falls back to the nearest free one; on a hybrid model the sizes match too."""
    counts = pd.Series(100, index=range(30))
    bins = adapters.depth_bins(30)
    assert list(bins[:7]) == [0, 0, 0, 1, 1, 1, 2] and bins.max() == 9
    ref = (1, 7, 13, 19, 22, 28)
    draws = {adapters.depth_matched(counts, ref, seed) for seed in range(6)}
    assert len(draws) > 1
    for d in draws:
        assert len(d) == 6 and not set(d) & set(ref)
        assert sorted(bins[list(d)]) == sorted(bins[list(ref)])
    assert adapters.depth_matched(counts, (0, 1, 2), 0) == (3, 4, 5)  # bin 0 is all atlas: the nearest free layers
    s = tiny_subject("lfm2", tok)
    c = adapters.layer_params(s.model, s.arch, adapters.ALL_LINEAR, 8)
    ref_t = adapters.target(pd.Series({0: 0.9, 1: 0.0, 2: 0.1, 3: 0.8}), "f", s.arch, 2, "atlas")  # layers 0 and 3
    for seed in range(4):
        t = adapters.control_target(pd.Series({0: 0.9, 1: 0.0, 2: 0.1, 3: 0.8}), s, "f", "depth-matched", seed, 2)
        assert t.strategy == "depth-matched" and not set(t.layers) & set(ref_t.layers)
        assert c[list(t.layers)].sum() == c[list(ref_t.layers)].sum()  # same size, layer by layer


def test_wrong_family_control_uses_another_familys_scores():
    """The layers of the family whose map correlates least with the target's (only families the atlas scores
    under the target's metric); missing where there is none."""
    arch = _arch("llama")
    f = {0: 0.1, 1: 0.5, 2: 0.3, 3: 0.9, 4: 0.2, 5: 0.4, 6: 0.05, 7: 0.35}
    g = {i: 1 - v for i, v in f.items()}  # the opposite map
    h = {i: v + 0.01 * i for i, v in f.items()}  # nearly the same map
    atlas = {"f": pd.Series(f), "g": pd.Series(g), "h": pd.Series(h)}
    fam, rho, scores = adapters.wrong_family(atlas, "f", ["f", "h", "g"], "score")
    assert fam == "g" and rho < -0.9 and scores.equals(atlas["g"].astype(float).rename_axis("layer"))
    s = SimpleNamespace(arch=arch)
    t = adapters.control_target(atlas, s, "f", "wrong-family", 0, 2, pool=["f", "g", "h"])
    assert t.layers == (0, 6) and t.layers == adapters.target(atlas, "g", arch, 2, "atlas").layers
    assert t.layers != adapters.target(atlas, "f", arch, 2, "atlas").layers
    assert adapters.wrong_family(atlas, "f", ["f"], "score") is None
    # under ld_frac only a family the model solves counts: none here, so the control is missing
    stub = StubAtlas(f, g, ["f"])
    assert adapters.wrong_family(stub, "f", ["f", "g"], "ld_frac") is None
    tg = adapters.targeting(stub, ["f"], arch, 2, pool=["f", "g"]).loc["f"]
    assert tg["wrong_family"] == "" and tg["wrong-family"] is None and tg["wrong_of"] == 0
    tg = adapters.targeting(StubAtlas(f, g, ["f", "g"]), ["f"], arch, 2, pool=["f", "g"]).loc["f"]
    assert tg["wrong_family"] == "g" and tg["wrong-family"] == (1, 3)  # g's ld_frac map here is f's (a stub)
    assert tg["wrong_of"] == 1  # the claims then say it was the only other family mapped
    assert adapters.targeting(atlas, ["f"], arch, 2, pool=["f", "g", "h"]).loc["f", "wrong_of"] == 2


def test_beating_random_but_not_depth_matched_is_no_atlas_win():
    """8 seeds: the atlas beats random-matched, wrong-family and all-linear in every seed but not depth-matched:
    no claim says it wins and none reaches medium. Beating depth-matched too, in both families, wins at medium."""
    seeds = np.arange(8)
    lower = list(1.0 + 0.1 * seeds)
    above = [x + 0.5 for x in lower]
    heads, wins = [], []
    for fam in ("f", "g"):
        h = _controls(lower, above, fam)
        h.loc[h["strategy"] == "depth-matched", "eval_loss"] = [x - 0.05 * (-1) ** i for i, x in enumerate(lower)]
        heads.append(h)
        wins.append(_controls(lower, above, fam))
    targets = pd.concat([_targets(family="f"), _targets(family="g")])
    for head, won in ((pd.concat(heads), False), (pd.concat(wins), True)):
        v = adapters.verdict(adapters.compare(head))
        assert v["wins"].all() == won and v["graded"].all()
        cl = [c for c in adapters.lora_claims(adapters.compare(head), NORM_NULL, targets, 2, lrs=_lrs(head)) if "‖B·A‖" not in c.statement]
        assert len(cl) == 2
        for c in cl:
            assert ("beats every strategy it was compared with" in c.statement) == won, c.statement
            assert c.confidence == "medium" if won else c.confidence in ("none", "low"), (c.confidence, c.reasons)
        if not won:
            assert all("weakest: depth-matched" in c.statement for c in cl)
    # a missing control: not graded, whatever the others say
    head = pd.concat(wins)
    cl = adapters.lora_claims(adapters.compare(head[head["strategy"] != "wrong-family"]), NORM_NULL, targets, 2, lrs=_lrs(head))
    assert all(c.confidence == "none" and "wrong-family control is missing" in c.statement for c in cl[:2])


def test_fewer_than_five_seeds_or_one_learning_rate_cap_the_verdict():
    """4 seeds, the atlas ahead of every control in every seed: not graded (4 seeds cannot reach p <= 0.05), and
    the reason says so. 8 seeds at one learning rate for all, or rates chosen on another family's validation
    split: capped at low, saying why; searched per family over 4 rates: medium."""
    def two(n):
        h = pd.concat([_controls([1.0] * n, [2.0] * n, fam) for fam in ("f", "g")])
        return h, pd.concat([_targets(family="f"), _targets(family="g")])

    head, targets = two(4)
    c = adapters.lora_claims(adapters.compare(head), NORM_NULL, targets, 2, lrs=_lrs(head))[0]
    assert c.confidence == "none" and "4 paired seeds" in c.reasons[0] and "graded from 5" in c.reasons[0]
    head, targets = two(8)
    cmp = adapters.compare(head)
    assert adapters.lora_claims(cmp, NORM_NULL, targets, 2, lrs=_lrs(head))[0].confidence == "medium"
    one = adapters.lora_claims(cmp, NORM_NULL, targets, 2)[0]
    assert one.confidence == "low" and "capped at low: one learning rate for every strategy" in one.statement
    moved = adapters.lora_claims(cmp, NORM_NULL, targets, 2, lrs=_lrs(head).query("family == 'g'"))[0]
    assert moved.confidence == "low" and "chosen on g's validation split, not f's" in moved.statement
    few = adapters.lora_claims(cmp, NORM_NULL, targets, 2, lrs=_lrs(head, n_lrs=3))[0]
    assert few.confidence == "low" and "3 < 4 values" in few.statement


def test_lora_null_with_a_partial_effect_makes_no_win():
    """The simulated null runs the real claim builder: an atlas better than random only, or than all but the
    depth-matched control, never reaches medium; an atlas better than every control mostly does (8 seeds)."""
    from atlas_core.evidence import nulls

    for beats in (["random"], ["random", "wrong-family", "all-linear"]):
        r = nulls.lora_null(60, 8, effect=1.5, beats=beats)
        assert r["medium_or_high"] == 0.0, (beats, r)
    assert nulls.lora_null(20, 8, effect=1.5)["medium_or_high"] >= 0.6


# ---------------------------------------------------------------- training families chosen by the flip gate


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_item_examples_split_by_content_and_keep_selection_prompts_out_of_eval(family):
    """Every family's task items give train / eval examples that share no prompt and no content key (a fact, an
    antonym pair, ...); `exclude` drops prompts from the eval split only; the reference answers score exact match."""
    tr, ev = tasks.item_examples(family, "train"), tasks.item_examples(family, "eval")
    assert len(tr) > 300 and len(ev) > 60
    assert not {e["prompt"] for e in tr} & {e["prompt"] for e in ev}
    assert not {e["key"] for e in tr} & {e["key"] for e in ev}
    assert all(tasks.exact_match(family, e["completion"], e) for e in tr + ev)
    assert tasks.item_examples(family, "eval") == ev  # deterministic
    drop = [e["prompt"] for e in ev[:5]] + [tr[0]["prompt"]]
    ev2, tr2 = tasks.item_examples(family, "eval", exclude=drop), tasks.item_examples(family, "train", exclude=drop)
    assert ev2 == ev[5:] and tr2 == tr
    variants = {e["id"].split("/")[1] for e in ev[:40]}
    assert variants == {"synthetic", "natural"}  # hash order: a prefix mixes both


def test_item_content_keys_group_repeated_content():
    """Antonym pairs (either direction) and facts go to one split: no eval item asks a pair or fact trained on."""
    its = tasks.load_items("antonyms", None, None)
    a = next(it for it in its if it.meta.get("query"))
    flipped = SimpleNamespace(family="antonyms", prompt="x", answer=" " + a.meta["query"],
                              meta={"query": a.answer.strip()})
    assert tasks.content_key(a) == tasks.content_key(flipped)
    tr = tasks.item_examples("factual_recall", "train")
    assert len({e["key"] for e in tr}) < len(tr)  # facts repeat across prompts, and stay on one side


def test_first_word_match():
    assert tasks.first_word_match(" Paris", "Paris") and tasks.first_word_match(" Paris.\nQ: next", "Paris")
    assert not tasks.first_word_match(" Parisian", "Paris") and not tasks.first_word_match(" the Paris", "Paris")
    assert tasks.first_word_match(" >", ">") and not tasks.first_word_match("", "x")


def _gate(rows: dict[str, tuple[int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"family": f, "n_items": 48, "n_flipped": n, "flip_rate": n / 48, "flip_lo": lo,
                          "flip_hi": 1.0, "testable": lo >= tasks.FLIP_GATE} for f, (n, lo) in rows.items()])


def test_families_are_the_gate_testable_ones_in_order_of_lower_bound(tok, monkeypatch):
    """Testable families, highest gate lower bound first (ties: more flips, then suite order), the first
    n_families trained, n_pool mapped, eval items disjoint from the gate's and the atlas's prompts; with none
    testable, the stored completion tasks (disruption-targeted) and a note that says so."""
    table = _gate({"ioi": (43, 0.77), "antonyms": (47, 0.89), "copying": (48, 0.93), "agreement": (48, 0.93),
                   "json_schema": (40, 0.698)})
    monkeypatch.setattr(tasks, "gate", lambda subject, fams, n, seed: table[table.family.isin(fams)])
    assert adapters.gate_order(table) == ["copying", "agreement", "antonyms", "ioi"]
    s = SimpleNamespace(tokenizer=tok, name="stub")
    P = adapters.profile("default")
    pick = adapters.choose_families(s, P, 42)
    assert pick.source == "items" and pick.families == ["copying"] and pick.pool == ["copying", "agreement"]
    assert pick.profile["sweep_family"] == "copying" and pick.profile["search_families"] == ["copying"]
    assert "training on ['copying']" in pick.note
    from atlas_core.studies.atlas import atlas_items, item_pool

    pool, _ = item_pool(s, pick.pool)
    atlas_prompts = {it.prompt for it in atlas_items(pool, pick.pool, P["atlas_prompts"], 42)}
    gate_prompts = {it.prompt for it in atlas_items(pool, pick.pool, P["n_gate"], 42)}
    assert atlas_prompts <= gate_prompts <= set(pick.exclude)
    more = adapters.choose_families(s, P, 42, atlas_seeds=[42, 137])  # an atlas on several seeds: all excluded
    later = {it.prompt for it in atlas_items(pool, pick.pool, P["atlas_prompts"], 137)}
    assert later - gate_prompts and (gate_prompts | later) == set(more.exclude)
    train, evalsets, P2 = adapters.task_data(s, pick.families, pick.profile, pick.source, pick.exclude, pick.drift)
    ev = evalsets["copying"]
    assert len(ev.examples) == P["n_eval"] and not {e["prompt"] for e in ev.examples} & set(pick.exclude)
    keys = {e["key"] for e in train["copying"]}
    assert not keys & {e["key"] for e in ev.examples} and not keys & {e["key"] for e in ev.val}
    assert ev.drift_prompts and not set(ev.drift_prompts) & {e["prompt"] for e in tasks.item_examples("copying", "eval")}
    assert ev.max_new_tokens <= 4 and P2["max_len"] < 64  # one-token answers: short sequences, short generations
    rtok = adapters.train_tokenizer(s)
    assert all(ev.exact_match(tok.decode(adapters.completion_ids(rtok, e), skip_special_tokens=True), e)
               for e in ev.examples)
    for e in train["copying"][:8]:  # the loss is on the answer token alone: the prompt's text goes on, no EOS
        ids, labels = adapters.encode_pair(rtok, e, None)
        assert [x for x in labels if x != -100] == ids[-1:] and ids[-1] != rtok.eos_token_id
    e = train["copying"][0]
    assert adapters.data_hash([e]) != adapters.data_hash([{**e, "eos": True}])  # a different cache key
    full = adapters.choose_families(s, adapters.profile("full"), 42)
    assert full.families == ["copying", "agreement", "antonyms", "ioi"] == full.pool  # n_families None: every one
    monkeypatch.setattr(tasks, "gate", lambda subject, fams, n, seed: table.assign(testable=False))
    none = adapters.choose_families(s, P, 42)
    assert none.source == "completions" and none.families == P["families"] and not none.exclude
    assert none.pool == list(dict.fromkeys([*P["families"], *P["atlas_families"]]))
    assert "not testable" in none.note and "disruption-targeted" in none.note


@pytest.mark.parametrize("first", [3, 1])
def test_backward_stops_at_the_first_adapted_layer(first, tmp_path):
    """Training never computes gradients below the first adapted layer: the embeddings and every layer output below
    it do not require grad during training (autograd records no graph there, so backward never reaches them), the
    adapted layers' outputs do, and no base weight gets a gradient."""
    model, tok = tiny.build("llama", n_layers=4, d=32, heads=2, kv_heads=1)
    s = wrap("tiny-llama-d32", model, tok, "random init", {})
    layers = s.model.get_submodule(s.arch.paths.layers)
    seen: dict[str, list[bool]] = {}

    def hook(name):
        def rec(mod, args, out):
            if mod.training:
                seen.setdefault(name, []).append((out[0] if isinstance(out, tuple) else out).requires_grad)
        return rec

    handles = [s.model.get_input_embeddings().register_forward_hook(hook("embed"))]
    handles += [m.register_forward_hook(hook(f"layer{i}")) for i, m in enumerate(layers)]
    try:
        t = adapters.Target("atlas", (first,), adapters.ALL_LINEAR, r=4, alpha=8.0)
        adapters.train(s, "toy", DATA, t, adapters.TrainConfig(steps=2, lr=1e-2, batch=2, seed=0), root=tmp_path)
    finally:
        for h in handles:
            h.remove()
    assert seen["embed"] == [False, False]
    for i in range(4):
        assert seen[f"layer{i}"] == [i >= first] * 2, (i, seen)
    assert all(p.grad is None for p in s.model.parameters())


def test_a_grid_with_a_helper_splits_the_compute_threads(tmp_path, monkeypatch):
    """With a helper process the two share the threads (oversubscribed OpenMP teams stall at every barrier): the
    helper is started with its share, this process trains with the rest and gets its own back afterwards."""
    from atlas_core.studies.adapters import grid

    assert [adapters.split_threads(n) for n in (1, 2, 3, 16)] == [(1, 1), (1, 1), (2, 1), (8, 8)]
    seen, job = {}, tmp_path / "job.pkl"
    job.write_bytes(b"")

    def helper(subject, runs, data, threads=1, evalsets=None, score="eval"):
        seen["helper"] = threads
        return SimpleNamespace(poll=lambda: 0), str(job)

    def rows(*args, **kw):
        seen["main"] = torch.get_num_threads()
        return pd.DataFrame()

    monkeypatch.setattr(grid, "start_helper", helper)
    monkeypatch.setattr(grid, "_grid", rows)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        grid.run_grid(None, [], {}, {}, workers=2)
        assert seen == {"helper": 2, "main": 2} and torch.get_num_threads() == 4 and not job.exists()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2", "lfm2", "gpt2"])
def test_completion_logits_give_the_models_own_loss(family, tok):
    """The LM head projects only the positions that predict completion tokens: the loss equals the model's own
    (every position projected, prompt and padding masked out), per example too, on every family; a model whose
    forward takes no `logits_to_keep` gets the same numbers from the fallback."""
    s = tiny_subject(family, tok, seed=3)
    t = adapters.train_tokenizer(s)
    exs = [{"prompt": "Item 1: the sky is", "completion": " blue"},
           {"prompt": "A much longer prompt about the colour of the sky today is", "completion": " very blue indeed"},
           {"prompt": "x", "completion": " y z"}]
    b = adapters.collate(t, exs, None)
    with torch.no_grad():
        own = s.model(**b)
        logits, targets, rows = adapters.completion_logits(s.model, b)
    assert logits.shape[0] == int((b["labels"] != -100).sum()) == len(targets) == len(rows)
    assert torch.allclose(torch.nn.functional.cross_entropy(logits, targets), own.loss, atol=1e-5)
    full = own.logits.float()[:, :-1]
    lab = b["labels"][:, 1:]
    ref = [float(torch.nn.functional.cross_entropy(full[i][lab[i] != -100], lab[i][lab[i] != -100])) for i in range(3)]
    assert np.allclose(adapters.completion_loss(s.model, t, exs, per_example=True), ref, atol=1e-5)

    class NoKeep(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)

    with torch.no_grad():
        lg2, tg2, _ = adapters.completion_logits(NoKeep(s.model), b)
    assert torch.allclose(lg2, logits, atol=1e-5) and torch.equal(tg2, targets)
