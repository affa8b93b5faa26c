"""Patching: exact recovery at the last layer, span patching, the flip gate, held-out claims that follow their
evidence (planted models and synthetic rows), cross-model patching, the screen's recall."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_items, tiny_subject
from scipy.stats import hypergeom

from atlas_core import tasks
from atlas_core.engine import screen
from atlas_core.engine.interventions import Op, Site, Unit
from atlas_core.engine.sweep import Cache, sweep
from atlas_core.evidence import metrics
from atlas_core.model import tiny
from atlas_core.model.subject import wrap
from atlas_core.studies import patching
from atlas_core.tasks.baselines import last_logits

LOW = {"none", "low"}


def own_task(s, family: str = "ioi", n: int = 16, bucket: str = "short"):
    """Suite prompts relabelled by the model itself (answer = clean argmax, distractor = corrupt argmax): every kept
    item is flipped by construction, so the family passes the flip gate on any model."""
    its, _ = tasks.validate(tasks.load_items(family, "synthetic", bucket), s.tokenizer)
    its = tasks.sample(its, 4 * n, 0)
    lc, lx = last_logits(s, [i.prompt for i in its]), last_logits(s, [i.corrupt for i in its])
    a, d = lc.argmax(-1).tolist(), lx.argmax(-1).tolist()
    out = [dataclasses.replace(it, answer_id=x, distractor_id=y) for it, x, y in zip(its, a, d) if x != y]
    assert len(out) >= n
    return out[:n]


def planted(tok, keep: list[int]):
    """A tiny llama where only the blocks in `keep` write to the residual stream (logits scaled x5: clear gaps)."""
    model, _ = tiny.build("llama", vocab_size=len(tok), seed=0)
    tiny.plant(model, keep_blocks=keep)
    model.lm_head.weight.data.mul_(5)
    return wrap(f"planted{keep}", model, tok, "planted", {})


def pipeline(s, items, cache, seed: int = 0):
    """Chapter 03's claim pipeline on given items: span sweep, gate from the rows, claims."""
    us = patching.units(s.arch, ("resid", "attn", "mlp"), ("last", "diff"), ("denoise", "noise"), head_layers=[0])
    rows = patching.sweep_span(s, items, us, seed=seed, cache=cache, progress=False)
    solved = tasks.solved(rows) if len(rows) else pd.DataFrame(columns=["family", "testable"])
    return rows, patching.patching_claims(rows, solved, s.arch.n_layers, seed=seed, chapter="03", model=s.name, profile="test")


@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    s = tiny_subject("llama", tok)
    return s, make_items(tok, 6), Cache(tmp_path_factory.mktemp("c") / "c.sqlite")


def test_denoise_and_noise_resid_last_layer_all_positions_are_exact(setup):
    s, _, cache = setup
    items = own_task(s, n=6)
    last = s.arch.n_layers - 1
    us = [Unit.of(Site("resid", last), Op.patch("clean")), Unit.of(Site("resid", last), Op.patch("corrupt"))]
    df = sweep(s, items, us, cache=cache, progress=False)
    den, noi = df[df["method"] == "denoise"], df[df["method"] == "noise"]
    np.testing.assert_allclose(den["logit_diff"], den["ld_clean"], atol=1e-5)
    np.testing.assert_allclose(noi["logit_diff"], noi["ld_corrupt"], atol=1e-5)
    summ = patching.summarize(df, by=("method",)).set_index("method")
    assert summ.loc["denoise", "recovery"] == pytest.approx(1, abs=1e-5)
    assert summ.loc["noise", "recovery"] == pytest.approx(0, abs=1e-5)
    assert summ.loc["noise", "score"] == pytest.approx(1, abs=1e-5)  # noising destroys the whole behaviour


def test_units_cover_components_positions_heads(setup):
    s, *_ = setup
    us = patching.units(s.arch, ("block", "attn"), ("last", "diff"), ("denoise", "noise"), head_layers=[0])
    assert len(us) == 2 * s.arch.n_layers * 2 * 2 + s.arch.n_heads
    assert {u.run for u in us} == {"clean", "corrupt"}
    last = patching.units(s.arch, ("block", "attn"), ("last", "diff"), ("denoise", "noise"), noise_positions=["last"])
    noise = [u for u in last if u.run == "clean"]  # noising patches the clean run
    assert len(last) == 2 * s.arch.n_layers * 3 and {u.edits[0].site.position for u in noise} == {"last"}


def test_recovery_ci_is_ratio_of_means():
    est, lo, hi = patching.recovery_ci([1.0, 3.0], [2.0, 4.0], [0.0, 0.0])
    assert est == pytest.approx(4 / 6) and lo <= est <= hi


def test_recovery_ci_is_the_paired_percentile_bootstrap_of_the_ratio_of_means():
    """The same numbers as resampling prompts (LD, LD_clean, LD_corrupt together) by hand with the same seed."""
    rng = np.random.default_rng(3)
    c, x = rng.normal(3, 1, 11), rng.normal(-1, 1, 11)
    ld = x + rng.uniform(0, 1, 11) * (c - x)
    idx = np.random.default_rng(7).integers(0, 11, (500, 11))
    boots = (ld[idx].mean(1) - x[idx].mean(1)) / (c[idx].mean(1) - x[idx].mean(1))
    est, lo, hi = patching.recovery_ci(ld, c, x, n_boot=500, seed=7)
    assert est == pytest.approx((ld.mean() - x.mean()) / (c.mean() - x.mean()), abs=1e-12)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])), abs=1e-12)
    assert patching.recovery_ci([2.0], [3.0], [-1.0]) == pytest.approx((0.75, 0.75, 0.75))  # one prompt: no spread


def test_near_zero_gap_gives_no_recovery_instead_of_a_huge_one():
    """Flipped prompts whose clean - corrupt gap is a few hundredths of a logit: the old 1e-6 guard returned ~50."""
    ld, c, x = np.array([1.0, 2.0]), np.array([0.02, 0.01]), np.array([-0.01, -0.02])
    assert np.isnan(patching.recovery_ci(ld, c, x)).all()
    assert np.isnan(metrics.recovery(ld, c, x)).all()
    assert not patching.gap_ok(c - x) and patching.gap_ok([3.0, 4.0])
    assert not patching.gap_ok([4.0, -3.9, 4.1, -4.0])  # mean 0.05: within two standard errors of 0
    rows = pd.DataFrame({"family": "f", "item_id": ["a", "b"], "component": "resid", "layer": 0, "head": -1,
                         "position": "last", "method": "denoise", "logit_diff": ld, "ld_clean": c, "ld_corrupt": x, "kl": 0.0})
    assert np.isnan(patching.summarize(rows)["recovery"]).all()
    assert np.isnan(patching.excess_p(rows, 0.0))


def test_summaries_use_flipped_prompts_only():
    """A prompt the model does not flip (clean LD < 0) must not enter the ratio of means."""
    rows = pd.DataFrame({"family": "f", "item_id": ["a", "b", "c"], "component": "resid", "layer": 0, "head": -1,
                         "position": "last", "method": "denoise", "logit_diff": [1.0, 1.0, 40.0],
                         "ld_clean": [2.0, 2.0, -1.0], "ld_corrupt": [0.0 - 1e-3, -1e-3, -3.0], "kl": 0.0})
    assert patching.summarize(rows)["recovery"].iloc[0] == pytest.approx(1.001 / 2.001, abs=1e-9)
    assert patching.summarize(rows, flipped_only=False)["recovery"].iloc[0] > 5


def test_span_patching_covers_every_differing_token(setup):
    """sequence_continuation prompts differ in 3-4 tokens: the layer-0 input patched on the first one ('diff') leaves
    the corrupt tokens after it; patched on the whole span it IS the clean run: recovery 1.00 exactly."""
    s, _, cache = setup
    items = own_task(s, "sequence_continuation", n=8)
    inp = patching.input_patch(s, items)
    span, diff = inp[inp["position"] == "span"], inp[inp["position"] == "diff"]
    assert (span["n_diff"] >= 3).all() and (diff["n_diff"] == 1).all()
    np.testing.assert_allclose(span["logit_diff"], span["ld_clean"], atol=1e-5)
    assert patching.recovery_ci(span["logit_diff"], span["ld_clean"], span["ld_corrupt"])[0] == pytest.approx(1, abs=1e-5)
    assert abs(patching.recovery_ci(diff["logit_diff"], diff["ld_clean"], diff["ld_corrupt"])[0] - 1) > 0.01
    # the sweep's span units: one int-position edit per differing token, rows labelled 'span'
    u = Unit.of(Site("resid", 0, position="diff"), Op.patch("clean"))
    rows = patching.sweep_span(s, items, [u], cache=cache, progress=False)
    assert set(rows["position"]) == {"span"} and (rows["n_edits"] == rows["n_diff"]).all() and (rows["n_diff"] >= 3).all()
    assert not rows["last_in_span"].any()
    one = make_items(s.tokenizer, 6)  # single differing token: span == diff, same numbers as the plain sweep
    a = patching.sweep_span(s, one, [u], cache=cache, progress=False).sort_values("item_id")
    b = sweep(s, one, [u], cache=cache, progress=False).sort_values("item_id")
    np.testing.assert_allclose(a["logit_diff"], b["logit_diff"], atol=1e-5)


def test_expand_turns_a_diff_edit_into_one_edit_per_differing_token_and_keeps_labels():
    u = Unit.of(Site("resid", 1, position="diff"), Op.patch("clean"), group="g")
    x = patching.expand(u, (2, 4, 5))
    assert [e.site.position for e in x.edits] == [2, 4, 5] and x.labels == u.labels and x.run == "corrupt"
    last = Unit.of(Site("resid", 1, position="last"), Op.patch("clean"))
    assert patching.expand(last, (2, 4)) == last


def test_input_check_table():
    """Per family × position: the most tokens patched, the largest |LD − LD_clean| and the recovery."""
    inp = pd.DataFrame({"family": "f", "item_id": ["a", "b", "a", "b"], "position": ["diff", "diff", "span", "span"],
                        "n_diff": [1, 1, 3, 2], "logit_diff": [0.5, 1.0, 2.0, 3.0], "ld_clean": [2.0, 3.0] * 2,
                        "ld_corrupt": [-1.0] * 4, "kl": 0.0})
    t = patching.input_check(inp)
    assert t.loc[("f", "span"), "max_tokens"] == 3 and t.loc[("f", "span"), "max_abs_error"] == 0
    assert t.loc[("f", "span"), "recovery"] == pytest.approx(1) and t.loc[("f", "span"), "n"] == 2
    assert t.loc[("f", "diff"), "max_abs_error"] == pytest.approx(2.0)
    assert t.loc[("f", "diff"), "recovery"] == pytest.approx(1.75 / 3.5)


def test_top_sites_and_layer_maps_tables():
    rows = []
    for f, best in (("a", 2), ("b", 0)):
        for comp in ("attn", "mlp", "head"):
            for layer in range(4):
                for m in ("denoise", "noise"):
                    score = 0.9 if (comp, layer) == ("mlp", best) else 0.1 * layer + 0.01 * len(comp)
                    rows.append({"family": f, "component": comp, "layer": layer, "head": 0 if comp == "head" else -1,
                                 "position": "last", "method": m, "score": score + (0.05 if m == "noise" else 0),
                                 "score_lo": score - 0.1, "score_hi": score + 0.1, "recovery": score, "kl": 0.0})
    summ = pd.DataFrame(rows)
    top = patching.top_sites(summ, k=3)
    assert top.groupby("family").size().to_dict() == {"a": 3, "b": 3}
    first = top.groupby("family").head(1).set_index("family")
    assert (first["component"] == "mlp").all() and first.loc["a", "layer"] == 2 and first.loc["b", "layer"] == 0
    assert (top["noise_score"] - top["score"]).round(9).eq(0.05).all()  # the noising score of the same site
    lay = patching.layer_maps(summ)
    assert "head" not in set(lay["component"]) and set(lay["panel"]) == {"last · denoise", "last · noise"}


def test_cross_choice_takes_the_first_gated_family_and_its_flipped_prompts():
    its = [SimpleNamespace(family=f, id=f"{f}{i}") for f in ("a", "b") for i in range(3)]
    solved = pd.DataFrame({"family": ["a", "b"], "testable": [False, True]})
    sel = patching.Selection(solved, pd.DataFrame(), its, its[4:])
    fam, items = patching.cross_choice(sel, ["a", "b"])
    assert fam == "b" and [it.id for it in items] == ["b1", "b2"]
    none = patching.Selection(solved.assign(testable=False), pd.DataFrame(), its, [])
    fam, items = patching.cross_choice(none, ["a", "b"])
    assert fam == "a" and [it.id for it in items] == ["a0", "a1", "a2"]  # claim then "not testable"


def test_differing_tokens_table():
    scored = pd.DataFrame({"family": ["a", "a", "b"], "n_diff": [1, 3, 1], "last_in_span": [False, True, False]})
    t = patching.differing_tokens(scored)
    assert t.loc["a", "1 token"] == 1 and t.loc["a", "3 tokens"] == 1 and t.loc["a", "mean"] == 2
    assert t.loc["a", "last_token_differs"] == 1


def test_random_init_pipeline_grades_no_claim_above_low(setup, tok):
    """The smoke profile's situation: a random-init model fails the flip gate on the suite, so it earns nothing."""
    s, _, cache = setup
    sel = patching.select(s, ["ioi", "antonyms"], 16, 4, seed=42)
    assert not sel.solved["testable"].any() and sel.items == []
    rows = patching.sweep_span(s, sel.items, patching.units(s.arch), cache=cache, progress=False)
    claims = patching.patching_claims(rows, sel.solved, s.arch.n_layers, chapter="03", model=s.name, profile="test")
    assert len(claims) == 5 and {c.confidence for c in claims} <= LOW
    assert all("not testable here" in c.statement and "not testable here" in c.reasons[0] for c in claims)


def test_crossover_claim_fails_where_only_the_last_layer_carries_the_signal(tok, tmp_path):
    """Planted: only the final layer writes, so no last-token residual before it carries anything; the final
    layer's is sufficient by construction and is not a candidate. The claim must not rise above low."""
    s = planted(tok, [3])
    rows, claims = pipeline(s, own_task(s), Cache(tmp_path / "c.sqlite"))
    assert tasks.solved(rows)["testable"].all()
    cross = claims[0]
    assert "only in layer 3" in cross.statement and cross.confidence in LOW
    assert not patching.crossover(rows, "ioi", 4)["layer"]


def test_crossover_claim_passes_where_the_first_layer_moves_the_decision(tok, tmp_path):
    """Planted: only layer 0 writes, so the last-token residual after layer 0 is final: the crossover is layer 0,
    chosen on half the prompts and confirmed on the other half, by denoising and noising."""
    s = planted(tok, [0])
    rows, claims = pipeline(s, own_task(s), Cache(tmp_path / "c.sqlite"))
    m = patching.crossover(rows, "ioi", 4)
    assert m["layer"] == 0 and m["p"] <= 0.05 and m["noise_p"] <= 0.05 and m["recovery"] == pytest.approx(1, abs=1e-4)
    c = claims[0]
    assert c.evidence["selection"] == "held-out" and c.evidence["n_candidates"] == 3
    assert "by layer 0" in c.statement and c.confidence == "medium"  # control + methods; one family, one seed


# ---------------------------------------------------------------------------------- claims from synthetic rows
def synth(rec, n: int = 16, n_layers: int = 4, families=("f",), seed: int = 0) -> pd.DataFrame:
    """Sweep-like rows where prompt i's score at a site is rec(family, component, layer, position, method, id)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in families:
        for i in range(n):
            iid, c, x = f"{f}{i}", 4 + rng.normal(0, 0.5), -2 + rng.normal(0, 0.5)
            for comp in ("resid", "block", "attn", "mlp"):
                for layer in range(n_layers):
                    for pos in ("last", "span"):
                        for m in ("denoise", "noise"):
                            r = rec(f, comp, layer, pos, m, iid) + rng.normal(0, 0.02)
                            out.append({"family": f, "item_id": iid, "component": comp, "layer": layer, "head": -1,
                                        "position": pos, "method": m, "ld_clean": c, "ld_corrupt": x, "kl": 0.0,
                                        "logit_diff": x + r * (c - x) if m == "denoise" else c - r * (c - x),
                                        "last_in_span": False})
    return pd.DataFrame(out)


def gate(*fams, untestable=()):
    return pd.DataFrame([{"family": f, "n_items": 16, "n_flipped": 16 if f not in untestable else 3, "flip_rate": 1.0,
                          "flip_lo": 0.8, "flip_hi": 1.0, "testable": f not in untestable} for f in fams])


def test_claims_follow_their_evidence():
    """Same builder, opposite evidence: a crossover at layer 1 in both families vs. no last-token residual before
    the final layer; a strong attention write vs. none. Statements flip and confidence drops."""
    def strong(f, comp, layer, pos, m, i):
        if comp == "resid":
            return float(layer >= 1) if pos == "last" else float(layer < 1)
        return 0.6 if (comp, layer, pos) == ("attn", 1, "last") else 0.0

    def weak(f, comp, layer, pos, m, i):
        return float(pos == "last" and comp == "resid" and layer == 3)

    fams = ("a", "b")
    yes = patching.patching_claims(synth(strong, families=fams), gate(*fams), 4, chapter="03")
    no = patching.patching_claims(synth(weak, families=fams), gate(*fams), 4, chapter="03")
    assert "by layer 1" in yes[0].statement and yes[0].confidence == "high"  # control, methods, breadth
    assert "only in layer 3" in no[0].statement and no[0].confidence in LOW
    assert "the attn of layer 1" in yes[1].statement and yes[1].confidence == "high"
    assert yes[1].evidence["n_candidates"] == 12 and yes[1].evidence["selection"] == "held-out"
    assert no[1].confidence in LOW and "not clearly above 0" in no[1].statement
    # a family that fails the gate says so, whatever its rows say
    one = patching.patching_claims(synth(strong, families=fams), gate(*fams, untestable=("b",)), 4)
    assert one[2].confidence == "none" and "not testable here" in one[2].statement and "b fails the flip gate: 3/16" in one[2].reasons[0]


def test_a_site_best_only_on_the_prompts_it_was_chosen_on_is_not_confirmed():
    """The attention write of layer 2 restores 0.9 on the selection half and nothing on the held-out half; graded
    on all prompts (the old way) its CI excluded 0. Held out, the claim does not confirm it."""
    sel, _ = patching.halves([f"f{i}" for i in range(16)], seed=0)

    def lucky(f, comp, layer, pos, m, i):
        if (comp, layer, pos) == ("attn", 2, "last"):
            return 0.9 if i in sel else 0.0
        return 0.2 if (comp, layer, pos) == ("mlp", 1, "last") else 0.0

    rows = synth(lucky)
    w = patching.top_write(rows, "f")
    assert (w["component"], w["layer"]) == ("attn", 2) and w["p"] > 0.05
    old = patching.summarize(rows).set_index(["component", "layer", "position", "method"]).loc[("attn", 2, "last", "denoise")]
    assert old["recovery_lo"] > 0  # what the old same-prompt grading saw
    c = patching.patching_claims(rows, gate("f"), 4)[1]
    assert "not clearly above 0" in c.statement and c.confidence in LOW

    def lucky_layer(f, comp, layer, pos, m, i):  # the last-token residual of layer 1 carries it on the chosen half only
        return float(layer == 1 and pos == "last" and comp == "resid" and i in sel)

    m = patching.crossover(synth(lucky_layer), "f", 4)
    assert m["layer"] == 1 and m["p"] > 0.05
    c = patching.patching_claims(synth(lucky_layer), gate("f"), 4)[0]
    assert "is not confirmed" in c.statement and c.confidence in LOW


def test_cross_patch_from_a_perturbed_copy_is_exact_at_the_last_layer(setup, tok):
    s, _, _ = setup
    items = own_task(s, n=8)
    b = patching.perturbed(s, sigma=0.5, seed=1)
    n = s.arch.n_layers
    df = patching.cross_patch(b, s, items, patching.cumulative("block", n) + [Unit.of(Site("resid", n - 1), Op.patch("clean"))])
    assert b.source.startswith(s.source) and "decoder weights + N(0, (0.5·std)^2), seed 1" in b.source
    assert b.fingerprint != s.fingerprint and b.tokenizer is s.tokenizer
    full = df[df["n_edits"] == n]  # every block's write from A: B's final residual is A's
    assert (full["last_layer"] == n - 1).all()
    np.testing.assert_allclose(full["logit_diff"], full["ld_clean"], atol=1e-4)
    res = df[(df["component"] == "resid")]
    np.testing.assert_allclose(res["logit_diff"], res["ld_clean"], atol=1e-4)
    with pytest.raises(ValueError, match="d_model=64.*d_model=32"):
        patching.cross_patch(tiny_subject("llama", tok, d=32), s, items, [])


# ---------------------------------------------------------------------------------- CMAP against a real fine-tune
def constant_task(tok, n: int = 16):
    """Prompts whose answer is ' Paris' against ' Rome', and training examples that complete each with ' Paris'."""
    a, d = tok(" Paris")["input_ids"][0], tok(" Rome")["input_ids"][0]
    heads, tails = ["", "Quick. ", "Tell me: ", "Hm. "], ["", " now", " then", " again"]
    its = [SimpleNamespace(**{**vars(it), "id": f"c{i}", "answer_id": a, "distractor_id": d,
                              "prompt": heads[i % 4] + it.prompt + tails[i // 4 % 4]})
           for i, it in enumerate(make_items(tok, 8) * 2)][:n]
    return its, [{"prompt": it.prompt, "completion": " Paris"} for it in its]


@pytest.fixture(scope="module")
def planted_tune(setup, tok):
    """A tiny llama and its fine-tune that differs in layer 2's weights only (a LoRA on that layer alone)."""
    s, *_ = setup
    items, ex = constant_task(tok)
    return s, patching.finetuned(s, "const", examples=ex, layers=[2], steps=20, lr=1e-2), items, ex


def gated(family: str) -> pd.DataFrame:
    return pd.DataFrame({"family": [family], "n_items": [16], "n_flipped": [16], "flip_rate": [1.0], "flip_lo": [0.8],
                         "flip_hi": [1.0], "testable": [True]})


def test_finetuned_is_a_cached_merged_subject_that_differs_from_the_base(planted_tune):
    s, ft, items, ex = planted_tune
    base, tuned = dict(s.model.named_parameters()), dict(ft.model.named_parameters())
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("model.layers.2.") for k in changed)  # merged: plain weights, one layer
    assert "layer 2" in ft.meta["trained_on"] and "20 steps" in ft.meta["trained_on"] and not ft.meta["cached"]
    again = patching.finetuned(s, "const", examples=ex, layers=[2], steps=20, lr=1e-2)
    assert again.meta["cached"] and again.fingerprint == ft.fingerprint  # the rerun trained nothing
    eff = patching.tuned_effect(s, ft, items)
    assert eff["ld_change_lo"] > 1 and eff["p"] < 0.05 and eff["kl"] > 0
    assert patching.finetune_data("ioi", exclude=["ioi/synthetic/short/0000"])[0]["completion"].startswith(" ")


def test_cmap_finds_the_one_layer_a_fine_tune_changed(planted_tune):
    """Layers before 2 are identical (recovery 0 both ways), layer 2's block write carries the whole change (1), and
    the claim names that layer, tested on held-out prompts in both directions."""
    s, ft, items, _ = planted_tune
    cross = patching.cmap(s, ft, items)
    cs = patching.cross_summary(cross).set_index(["direction", "kind", "component", "layer"])["recovery"]
    for d in patching.DIRECTIONS:
        assert cs[(d, "single", "block", 2)] == pytest.approx(1, abs=1e-4)
        assert cs[(d, "cumulative", "block", 2)] == pytest.approx(1, abs=1e-4)
        for layer in (0, 1):
            assert cs[(d, "single", "block", layer)] == pytest.approx(0, abs=1e-4)
            assert cs[(d, "cumulative", "block", layer)] == pytest.approx(0, abs=1e-4)
    m = patching.cross_localize(cross)
    assert (m["component"], m["layer"]) == ("block", 2) and m["p"] <= 0.05 and m["back_p"] <= 0.05
    c = patching.cross_claim(cross, "const", gated("const"))
    assert "localized in the block of layer 2" in c.statement and c.confidence == "medium"


def test_cmap_between_a_model_and_itself_or_a_copy_claims_nothing(planted_tune):
    s, _, items, _ = planted_tune
    twin = wrap("copy", copy.deepcopy(s.model), s.tokenizer, "copy", {})
    for other in (s, twin):
        cross = patching.cmap(s, other, items, ("block", "mlp"))
        assert not patching.cross_localize(cross)["testable"]
        assert patching.cross_summary(cross)["recovery"].isna().all()
        c = patching.cross_claim(cross, "const", gated("const"))
        assert "not testable here" in c.statement and c.confidence == "none"
    cross = patching.cmap(s, planted_tune[1], items, ("block",), with_cumulative=False)
    not_gated = gated("const").assign(n_flipped=2, flip_lo=0.02, testable=False)
    assert patching.cross_claim(cross, "const", not_gated).confidence == "none"  # a family the model does not solve


def test_cross_family_why_names_the_obstacles(setup, tok):
    s, items, _ = setup
    narrow = patching.cross_family_why(s, tiny_subject("qwen2", tok, d=32), items)
    assert "different residual widths" in narrow and "share no basis" in narrow
    assert "tokenize all 6 prompts identically" in patching.cross_family_why(s, "tiny-gemma3", items)
    assert "same model" in patching.cross_family_why(s, s, items)


# ---------------------------------------------------------------------------------- screen
def test_screen_recall_uses_the_corrupt_run_for_denoising_and_reports_chance():
    """Denoising estimates are changes from the corrupt run: A moves LD from -2 to 2 (+4), B to -1 (+1); measured from
    the clean run (the old reference) A looks like 0 and B like -3, and recall@1 was 0."""
    keys = {"family": "f", "component": "resid", "head": -1, "position": "last", "method": "denoise"}
    est = pd.DataFrame([{**keys, "layer": 0, "ld_change_est": 4.0}, {**keys, "layer": 1, "ld_change_est": 1.0}])
    exact = pd.DataFrame([{**keys, "layer": 0, "logit_diff": 2.0, "ld_clean": 2.0, "ld_corrupt": -2.0},
                          {**keys, "layer": 1, "logit_diff": -1.0, "ld_clean": 2.0, "ld_corrupt": -2.0}])
    exact["ld_drop"] = exact["ld_clean"] - exact["logit_diff"]
    r = screen.recall(est, exact, k=1).iloc[0]
    assert r["recall_at_k"] == 1 and r["chance"] == 0.5 and r["p"] == pytest.approx(0.5)
    assert screen.recall_p(3, 5, 100) == pytest.approx(hypergeom.sf(2, 100, 5, 5))
    assert screen.recall_p(5, 5, 5) == 1.0  # k = N: every screen has recall 1
    assert screen.recall_p(5, 5, 100) < 1e-6
