"""Chapter 07 (studies.compression): skipping as a real smaller model equals the engine's skip; criteria find
planted identity layers; quality metrics; precisions and their one-line errors; qualitative checks; claims."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from atlas_core.engine.batch import Batch, generate, last_logits
from atlas_core.model import tiny
from atlas_core.model.subject import load, wrap
from atlas_core.studies import compression as cmp

PROMPTS = ["The bus stops at the corner twice", "A narrow path runs along the edge of", "Water boils at a lower",
           "The committee meets in the room"]


def planted(keep, n_layers=4):
    model, tok = tiny.build("llama", n_layers=n_layers)
    tiny.plant(model, keep_blocks=keep)
    return wrap("tiny-llama-planted", model, tok, "planted", {})


def last(s, model=None):
    enc = s.encode(PROMPTS)
    with torch.inference_mode():
        return (model or s.model)(**enc, position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)).logits[:, -1]


@pytest.mark.parametrize("family", ["llama", "gemma3", "lfm2", "gpt2"])
def test_smaller_model_equals_engine_skip_and_generates_the_same(family):
    s = load(f"tiny-{family}")
    layers = [1, 2]
    small = cmp.smaller(s, layers)
    assert small.arch.n_layers == 2 and small.model.config.num_hidden_layers == 2
    if getattr(s.model.config, "layer_types", None):
        assert small.model.config.layer_types == [t for i, t in enumerate(s.model.config.layer_types) if i not in layers]
    engine = Batch(s, PROMPTS).run([cmp.skip_unit(layers)])[0]
    enc = small.encode(PROMPTS)
    real = last_logits(small, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(engine, real, atol=1e-4, rtol=1e-4)
    # generation uses the KV cache (layer indices renumbered): the smaller model continues like the engine's skip
    assert generate(s, PROMPTS, cmp.skip_unit(layers), 6) == generate(small, PROMPTS, None, 6)
    assert s.arch.n_layers == 4 and s.model.config.num_hidden_layers == 4  # the original is untouched


def test_removed_in_place_restores_everything():
    s = load("tiny-gemma3")
    before = last(s)
    types = list(s.model.config.layer_types)
    idx = [m.layer_idx for m in s.model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    small = cmp.smaller(s, [0, 3])
    with cmp.removed(s, [0, 3]) as m:
        assert len(m.get_submodule(s.arch.paths.layers)) == 2 and m.config.layer_types == types[1:3]
        torch.testing.assert_close(last(s, m), last(small), atol=1e-5, rtol=1e-5)
    assert s.model.config.layer_types == types and s.model.config.num_hidden_layers == 4
    assert [m.layer_idx for m in s.model.modules() if isinstance(getattr(m, "layer_idx", None), int)] == idx
    torch.testing.assert_close(last(s), before)


def test_saved_checkpoint_reloads(tmp_path):
    s = load("tiny-llama")
    row = cmp.skip_check(s, [1, 2], PROMPTS).iloc[0]
    assert row.layers_config == 2 and row.layers_reloaded == 2
    assert row.max_diff_engine_vs_smaller < 1e-4 and row.max_diff_reloaded_vs_smaller < 1e-5
    back = load(str(cmp.save(cmp.smaller(s, [0]), tmp_path / "ck")))
    assert back.arch.n_layers == 3


def test_skip_unit_and_runs():
    u = cmp.skip_unit([3, 1])
    assert [e.site.layer for e in u.edits] == [1, 3] and all(e.site.component == "block" and e.op.kind == "zero"
                                                              for e in u.edits)
    assert cmp.tag([2, 3, 4]) == "L2-4" and cmp.tag([1, 4]) == "L1,4"
    every = cmp.runs(10, [2, 3])
    assert len(every) == 9 + 8 and all(r == tuple(range(r[0], r[0] + len(r))) for r in every)
    sub = cmp.runs(10, [2], per_length=3)
    assert sub[0] == (0, 1) and sub[-1] == (8, 9) and len(sub) == 3
    with pytest.raises(ValueError):
        cmp.smaller(load("tiny-llama"), [0, 1, 2, 3])


def test_identity_layer_is_chosen_by_geometry_and_atlas_and_its_removal_changes_nothing():
    s = planted(keep=[0, 1, 3])  # layer 2 writes nothing: an exact identity
    g = cmp.geometry(s, PROMPTS)
    assert g["bi"][2] == pytest.approx(0, abs=1e-6) and g["bi"].argmin() == 2
    assert g["angular"][2, 3] == pytest.approx(0, abs=2e-3)
    assert cmp.choose("angular", 1, 4, g) == (2,) and cmp.choose("block_influence", 1, 4, g) == (2,)
    items = cmp.task_items(s, ["ioi"], 4, seed=0)
    eff = cmp.atlas_effects(s, items)
    assert eff[2] == pytest.approx(0, abs=1e-6) and cmp.choose("atlas", 1, 4, effects=eff) == (2,)
    ref = cmp.reference(s, PROMPTS, 5)
    with cmp.removed(s, [2]) as m:
        ag = cmp.agreement(m, ref)
    assert (ag.top1 == 1).all() and (ag.top5 == 1).all() and ag.kl.max() < 1e-6
    with cmp.removed(s, [0]) as m:  # a layer that writes: removal must show
        assert cmp.agreement(m, ref).kl.mean() > 1e-3


def test_angular_distance_finds_a_planted_identity_run():
    s = planted(keep=[0, 3], n_layers=5)  # layers 1, 2 and 4 silent; 1-2 is the contiguous identity run
    g = cmp.geometry(s, PROMPTS)
    assert cmp.choose("angular", 2, 5, g) == (1, 2)
    assert set(cmp.choose("block_influence", 3, 5, g)) == {1, 2, 4}
    draws = {cmp.choose("random", 2, 5, draw=d) for d in range(8)}
    assert len(draws) > 1 and all(len(d) == 2 for d in draws)


def test_quality_of_the_base_against_itself_and_perplexity():
    s = load("tiny-llama")
    ref = cmp.reference(s, PROMPTS, 4)
    ag = cmp.agreement(s.model, ref)
    assert (ag.top1 == 1).all() and (ag.top5 == 1).all() and ag.kl.max() < 1e-6
    assert ref.ids.shape[1] == ref.n_prompt + 4
    ppl = cmp.perplexity(s.model, s, PROMPTS)
    assert np.isfinite(ppl) and ppl > 1


def test_a_missing_backend_is_a_one_line_error(monkeypatch):
    s = load("tiny-llama")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    for kind in ("int8", "nf4"):
        with pytest.raises(ValueError, match=f"^{kind} is not available on this machine") as err:
            cmp.load_precision(s, kind)
        assert "\n" not in str(err.value)
    subs, status = cmp.precision_subjects(s, ["fp32", "nf4"])
    assert list(subs) == ["fp32"] and status.status.iloc[1].startswith("not available: nf4 is not available")
    with pytest.raises(ValueError, match="unknown precision"):
        cmp.available("fp8")


def test_precisions_load_and_agree_with_fp32():
    s = load("tiny-llama")
    subs, status = cmp.precision_subjects(s, ["fp32", "bf16", "int8"])
    assert (status.status == "ok").all(), status
    assert subs["bf16"].dtype == torch.bfloat16 and subs["int8"].meta.get("quantization") == "int8"
    ref = cmp.reference(s, PROMPTS, 3)
    pr = cmp.Probe(ref, [], PROMPTS, pd.Series(dtype=float), 1.0)
    fid = cmp.fidelity(subs, pr).set_index("precision")
    assert fid.loc["fp32", "kl"] < 1e-6 and fid.loc["bf16", "memory_mb"] < fid.loc["fp32", "memory_mb"]
    units = cmp.steering_units(s, [("good day", "bad day"), ("a fine meal", "an awful meal")], 1, [2.0])
    sens = cmp.sensitivity({k: subs[k] for k in ("fp32", "bf16")}, PROMPTS, units)
    amp = cmp.amplification(sens)
    assert amp.precision.tolist() == ["bf16"] and amp.lo.iloc[0] <= amp.ratio.iloc[0] <= amp.hi.iloc[0]


def test_qualitative_prompts_and_checks():
    assert len(cmp.PROMPTS) >= 30 and {k for _, k, _ in cmp.PROMPTS} <= set(cmp.CHECKS)
    assert cmp.check("Blue and calm.", "max_words", 3) and not cmp.check("one two three four", "max_words", 3)
    assert cmp.check("- a\n- b\n- c", "list", 3) and cmp.check("1. a\n2. b", "list", 2) and not cmp.check("a, b", "list", 2)
    assert cmp.check('Here: {"name": "Ann", "age": 30}', "json") and not cmp.check("{name: Ann}", "json")
    assert cmp.check('{"person": {"name": "Ann"}, "tags": ["a"]}', "json")  # nested (a non-greedy regex missed it)
    assert not cmp.check('["a", "b"]', "json") and not cmp.check("no braces", "json")
    assert cmp.check("HELLO", "upper") and not cmp.check("Hello", "upper")
    assert cmp.check("Yes, it is.", "yes_no") and cmp.check("The hot sun", "contains", "hot")
    assert not cmp.check("The sun is hot", "lacks", "hot") and cmp.check("The sun is bright", "lacks", "hot")
    assert cmp.check("Sure! The ocean...", "starts", "sure") and cmp.check("12", "number")
    s = load("tiny-llama")
    q = cmp.qualitative.run("fp32", s, 4, 3)
    summ = cmp.qualitative.summary(pd.concat([q, q.assign(config="copy")]))
    assert summ.set_index("config").loc["copy", "n_discordant"] == 0
    html = cmp.details_html(q)
    assert html.count("<details>") == 1 and "constraints met" in html


def test_healing_trains_and_reports_base_unhealed_healed():
    s = load("tiny-llama")
    P = {"heal_r": 2, "heal_steps": 2, "heal_lr": 1e-2, "heal_batch": 2}
    ex = cmp.heal_examples(["The bus stops at the corner twice every hour.", "Rain fell steadily.",
                            "The river widens as it approaches the coast."])
    assert ex[0] == {"prompt": "The bus stops", "completion": " at the corner twice every hour."}
    pr = cmp.probe(s, PROMPTS[:2], cmp.task_items(s, ["ioi"], 2, 0), PROMPTS, 3)
    sets = pd.DataFrame([{"criterion": "atlas", "depth": 1, "layers": (3,)},
                         {"criterion": "random", "depth": 1, "layers": (3,)}])
    rec = cmp.recovery(s, sets, pr, ex, ex[:1], P, [0, 1])
    assert rec.state.tolist() == ["base", "unhealed", "healed", "healed"] * 1 + ["unhealed", "healed", "healed"]
    assert rec.loc[0, "top5"] == pytest.approx(1.0)
    r = cmp.restored(rec, "heal_loss")
    assert len(r) == 2 and len(r.gain_by_seed.iloc[0]) == 2
    claims = cmp.healing_claims(rec, [0, 1], 2)
    assert len(claims) == 3 and all(c.evidence["n_seeds"] == 2 for c in claims)


def test_criterion_test_gives_the_smallest_p_to_a_criterion_above_every_draw():
    rows = [{"criterion": "random", "depth": d, "draw": r, "top5": 0.1 + 0.01 * r} for d in (1, 2) for r in range(9)]
    rows += [{"criterion": "angular", "depth": d, "draw": 0, "top5": 0.9} for d in (1, 2)]
    rows += [{"criterion": "atlas", "depth": d, "draw": 0, "top5": 0.05} for d in (1, 2)]
    rows += [{"criterion": "block_influence", "depth": d, "draw": 0, "top5": 0.14} for d in (1, 2)]
    t = cmp.criterion_tests(pd.DataFrame(rows)).set_index("criterion")
    assert t.loc["angular", "p"] == pytest.approx(0.01) and t.loc["atlas", "p"] == pytest.approx(1.0)
    assert 0.01 < t.loc["block_influence", "p"] < 1  # above 4 of 9 draws at each depth: ranks 5 and 5
    claims = cmp.criterion_claims(t.reset_index().sort_values("delta_vs_random", ascending=False))
    assert "angular distance" in claims[-1].statement and claims[-1].evidence["n_candidates"] == 3
    assert "keeps less" in [c for c in claims if "the atlas" in c.statement][0].statement


def test_single_layer_claim_reports_the_measured_best_layer():
    skips = pd.DataFrame([{"kind": "single", "skipped": "L0", "top5": 0.2, "per_prompt_top5": [0.1, 0.3, 0.2]},
                          {"kind": "single", "skipped": "L1", "top5": 0.6, "per_prompt_top5": [0.5, 0.7, 0.6]},
                          {"kind": "run", "skipped": "L0-1", "top5": 0.9, "per_prompt_top5": [0.9, 0.9, 0.9]}])
    c = cmp.single_layer_claim(skips, 8)
    assert "at most 0.60" in c.statement and "L1" in c.statement and c.evidence["ci_excludes_control"]


def test_best_adapter_is_the_highest_exact_match_or_not_available(tmp_path):
    s = load("tiny-llama")
    path, note = cmp.best_adapter(s, tmp_path)
    assert path is None and "not available" in note
    for name, em, loss in (("atlas-s1-a", 0.5, 1.0), ("random-s1-b", 0.75, 2.0), ("all-s1-c", 0.75, 1.5)):
        d = tmp_path / s.fingerprint[:12] / "json_schema" / name
        d.mkdir(parents=True)
        (d / "eval-x.json").write_text(f'{{"exact_match": {em}, "eval_loss": {loss}}}')
    path, note = cmp.best_adapter(s, tmp_path)
    assert path.name == "all-s1-c" and "best of 3" in note
