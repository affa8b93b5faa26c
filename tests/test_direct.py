"""Direct vs total effects (compensation), specificity on neutral text, the sink flag, flipped-only vs all-item maps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_subject

from atlas_core.engine.batch import Batch
from atlas_core.engine.interventions import Op, Site, Unit, layer_sweep
from atlas_core.engine.sweep import Cache, sweep
from atlas_core.evidence import nulls
from atlas_core.model import tiny
from atlas_core.model.subject import wrap
from atlas_core.studies import direct
from atlas_core.studies.atlas import Atlas, hub_claim, map_atlas, neutral_items
from atlas_core.tasks import neutral

A_, C_, B_, K_ = 3.0, 1.0, 1.0, 4.0  # embedding size, A's write, the control's write, readout gain


def _dirs(d: int = 8):
    """Three orthonormal zero-mean directions p, q, q2 (LayerNorm neither shifts nor mixes them)."""
    e = torch.eye(d)
    return [(e[i] - e[i + 1]) / math.sqrt(2) for i in (0, 2, 4)]


def repair_model(tok):
    """A 3-layer GPT-2 (relu MLPs, attention silenced) built to compensate, by hand:

    every token embeds to a*p - (c/2)*q - (b/2)*q2; MLP 0 (A) writes +c*q; MLP 1 (B) computes
    relu(c/2 - x.q) * q, i.e. nothing on the clean run and +c*q when A is ablated (exact repair: the residual
    keeps its norm, so LayerNorm reads the same scale); attention 2 (control C) writes +b*q2 and nothing reads
    it but the unembedding. The answer's unembedding row is k*(q + q2)."""
    import transformers as tf

    p, q, q2 = _dirs()
    cfg = tf.GPT2Config(vocab_size=len(tok), n_embd=8, n_layer=3, n_head=2, n_inner=4, n_positions=128,
                        activation_function="relu", tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, w in model.named_parameters():
            if ".ln_" not in name and "ln_f" not in name:
                w.zero_()
        x0 = A_ * p - C_ / 2 * q - B_ / 2 * q2
        model.transformer.wte.weight[:] = x0
        h = model.transformer.h
        h[0].mlp.c_fc.bias[0] = 1.0  # A: a constant unit ...
        h[0].mlp.c_proj.weight[0] = C_ * q  # ... writing c*q
        sigma = math.sqrt(float((x0 + C_ * q).pow(2).mean()) + h[1].ln_2.eps)  # LayerNorm scale at B, both runs
        h[1].mlp.c_fc.weight[:, 0] = -sigma * q  # B: relu(-x.q + c/2) ...
        h[1].mlp.c_fc.bias[0] = C_ / 2
        h[1].mlp.c_proj.weight[0] = q  # ... written back along q
        h[2].attn.c_proj.bias[:] = B_ * q2  # C: unread by any component
    return wrap("repair", model, tok, "hand-built", {}), (p, q, q2)


def fixed_items(tok, n: int = 6):
    ans, dis = tok(" Paris")["input_ids"][0], tok(" Rome")["input_ids"][0]
    texts = ["The cat sat on", "A small red box", "Where is the", "One two three four", "It was late and",
             "They walked home"]
    return [SimpleNamespace(id=f"r{i}", family="repair", prompt=t, corrupt=t, answer_id=ans, distractor_id=dis,
                            diff_pos=0, bucket="short", variant="synthetic") for i, t in enumerate(texts[:n])]


def _set_readout(s, tok, q, q2):
    with torch.no_grad():
        s.model.lm_head.weight[tok(" Paris")["input_ids"][0]] = K_ * (q + q2)


def test_a_repaired_component_is_flagged_compensated_and_an_unrepaired_one_is_not(tok, tmp_path):
    s, (p, q, q2) = repair_model(tok)
    _set_readout(s, tok, q, q2)
    items = fixed_items(tok)
    units = layer_sweep(("block", "attn", "mlp"), ("zero", "mean"), 3, s.arch)
    rows = sweep(s, items, units, cache=Cache(tmp_path / "c.sqlite"), progress=False)
    drows = direct.direct_rows(s, items, units)
    rows = direct.attach(rows, drows)
    get = lambda c, L, col, m="zero": rows[(rows.component == c) & (rows.layer == L) & (rows.method == m)][col]  # noqa: E731
    sig_f = math.sqrt((A_**2 + C_**2 / 4 + B_**2 / 4) / 8 + s.model.transformer.ln_f.eps)
    ld_clean = K_ * (C_ / 2 + B_ / 2) / sig_f
    assert np.allclose(rows["ld_clean"], ld_clean, atol=1e-4)
    # A: ablating it changes nothing (B repairs it exactly), yet its direct path carries c*k/sigma_f
    assert np.allclose(get("mlp", 0, "ld_drop"), 0, atol=1e-4)
    assert np.allclose(get("mlp", 0, "direct"), C_ * K_ / sig_f, atol=1e-4)
    # control C: no downstream reader and the final norm's scale does not change -> direct == total, exactly
    assert np.allclose(get("attn", 2, "direct"), get("attn", 2, "ld_drop"), atol=1e-4)
    assert np.allclose(get("attn", 2, "direct"), B_ * K_ / sig_f, atol=1e-4)
    # B writes nothing on the clean run: no effect either way
    assert np.allclose(get("mlp", 1, "direct"), 0, atol=1e-5) and np.allclose(get("mlp", 1, "ld_drop"), 0, atol=1e-4)

    a = Atlas.from_rows(rows, "repair", "x", 3, 2, n_boot=0)
    assert a.testable_families == []  # corrupt == clean: nothing flips; the views fall back to all-item fractions
    for comp in ("mlp", "block"):
        t = a.direct_vs_total(comp, "zero").set_index("layer")
        assert t["metric"].iloc[0] == "ld_frac_all"
        assert bool(t.loc[0, "compensated"]) and not t.loc[[1, 2], "compensated"].any(), (comp, t)
        assert t.loc[0, "direct"] == pytest.approx(C_ / ((C_ + B_) / 2), abs=1e-3)
    t = a.direct_vs_total("attn", "zero").set_index("layer")
    assert not t["compensated"].any() and t.loc[2, "total"] == pytest.approx(t.loc[2, "direct"], abs=1e-3)
    lt = a.layer_table("mlp", "zero").set_index("layer")
    assert "not unimportant" in lt.loc[0, "reading"] and "compensated" not in lt.loc[1, "reading"]


def test_frozen_final_norm_and_readout_match_the_model_in_every_family(tok):
    items = fixed_items(tok, 4)
    for fam in tiny.FAMILIES:
        s = tiny_subject(fam, tok)
        if fam == "gemma3":
            s.model.config.final_logit_softcapping = 3.0  # the direct LD must be read through the cap
        b = Batch(s, [it.prompt for it in items], None, [it.answer_id for it in items],
                  [it.distractor_id for it in items], [0] * len(items))
        r = direct.Readout(b)
        norm = s.model.get_submodule(s.arch.paths.final_norm)
        bias = norm.bias.float() if isinstance(norm, torch.nn.LayerNorm) else 0.0
        with torch.inference_mode():
            ref = norm(r.h[:, None])[:, 0].float()
        # frozen at h, the norm's response to h itself is the norm of h (a hand computation of the scale and gain)
        assert torch.allclose(direct.frozen_norm(s, r.h, r.h) + bias, ref, atol=1e-5), fam
        lg = b.logits("clean")
        rows = torch.arange(b.B)
        assert torch.allclose(r.ld_clean, lg[rows, b.answer_ids] - lg[rows, b.distractor_ids], atol=1e-4), fam
        if fam == "gemma3":
            s.model.config.final_logit_softcapping = None


def test_head_direct_effects_add_up_to_the_attention_write_and_are_undefined_on_gemma3(tok):
    items = fixed_items(tok, 4)
    s = tiny_subject("llama", tok)
    heads = [Unit.of(Site("head", 1, head=h), Op.zero()) for h in range(s.arch.n_heads)]
    attn = Unit.of(Site("attn", 1), Op.zero())
    d = direct.direct_rows(s, items, [*heads, attn])
    per_item = d[d["unit"] != attn.key].groupby("item_id")["direct"].sum()
    whole = d[d["unit"] == attn.key].set_index("item_id")["direct"]
    assert np.allclose(per_item.sort_index(), whole.sort_index(), atol=1e-4) and whole.abs().max() > 0
    g = tiny_subject("gemma3", tok)
    dg = direct.direct_rows(g, items, [Unit.of(Site("head", 0, head=0), Op.zero()), Unit.of(Site("attn", 0), Op.zero())])
    hrow = dg[dg["unit"].str.startswith("head")]
    assert hrow["direct"].isna().all() and "no additive direct path" in hrow["undefined_why"].iloc[0]
    assert dg.loc[dg["unit"].str.startswith("attn"), "direct"].notna().all()


def test_neutral_sentences_load_and_match_task_lengths(tok, monkeypatch, tmp_path):
    texts = neutral.sentences()
    assert len(texts) >= 150 and len(set(texts)) == len(texts)
    assert neutral.sentences(5, seed=3) == neutral.sentences(5, seed=3) != neutral.sentences(5, seed=4)
    lengths = [7, 9, 12, 20, 33, 48]
    its = neutral_items(tok, lengths, 6, seed=1)
    assert [len(tok(it.prompt)["input_ids"]) for it in its] == lengths
    assert all(it.prompt == it.corrupt and it.answer_id == it.distractor_id for it in its)
    monkeypatch.setattr(neutral, "data_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="neutral sentences missing"):
        neutral.sentences()


def test_map_atlas_reports_specificity_and_direct_effects(tok, tmp_path):
    s = tiny_subject("llama", tok)
    a = map_atlas(s, families=["ioi", "antonyms"], components=("block", "mlp"), methods=("zero",), seeds=(1,),
                  prompts_per_family=3, heads=False, positions=("first",), progress=False,
                  cache=Cache(tmp_path / "m.sqlite"), out=tmp_path / "out")
    e = a.effects
    lay = e[e["position"] == "all"]
    assert lay["specificity"].notna().all() and lay["direct_drop"].notna().all()
    nd = pd.read_parquet(tmp_path / "out" / "neutral.parquet")
    assert set(nd["family"]) == {"neutral"} and nd["item_id"].nunique() == 3
    one = lay[(lay["component"] == "block") & (lay["layer"] == 1)]
    ref = nd[(nd["component"] == "block") & (nd["layer"] == 1)]["kl"].mean()
    assert np.allclose(one["specificity"], one["kl"] - ref, atol=1e-6)
    # a position-only unit was not swept on neutral text: no specificity, never a made-up one
    assert e.loc[e["position"] == "first", "specificity"].isna().all()
    t = a.layer_table("block", "zero")
    assert {"total", "direct", "compensated", "specificity", "first_token_share", "sink", "reading"} <= set(t.columns)
    pd.testing.assert_frame_equal(Atlas.load(tmp_path / "out").layer_table("block"), t, check_dtype=False)


def null_atlas(rows: pd.DataFrame, n_layers: int) -> Atlas:
    """An atlas of simulated rows (`nulls.null_rows`), means only."""
    return Atlas.from_rows(rows, "null", "null", n_layers, 1, n_boot=0)


def _rows_with_positions(first_share: dict[int, float]) -> pd.DataFrame:
    """Null rows (4 testable families) plus first-token block units reproducing `first_share` of each layer."""
    r = nulls.null_rows(0, n_layers=6, methods=("zero",), hub=2, effect=0.4)
    first = r.copy()
    first["position"] = "first"
    first["ld_drop"] = first["ld_drop"] * first["layer"].map(lambda L: first_share.get(L, 0.0))
    return pd.concat([r, first], ignore_index=True)


def test_sink_flag_marks_layers_whose_first_token_carries_half_the_effect():
    a = null_atlas(_rows_with_positions({2: 0.8, 4: 0.3}), 6)
    t = a.layer_table("block", "zero").set_index("layer")
    assert t.loc[2, "first_token_share"] == pytest.approx(0.8, abs=1e-6)
    assert t["sink"].tolist() == [False, False, True, False, False, False]
    ev = a.hub_evidence("block")
    assert ev["hub"] == 2 and ev["sink"] is True and ev["compensated_layers"] == []


def test_flipped_only_and_all_item_maps_are_compared_by_rank():
    from scipy.stats import spearmanr

    r = nulls.null_rows(0, n_layers=6, methods=("zero",), hub=2, effect=0.4)
    flipped_only = null_atlas(r, 6)
    same = flipped_only.item_map_agreement("block", "zero").set_index("family")
    assert np.allclose(same["spearman"], 1.0)  # every item flips: the two maps are the same map
    # three unflipped items per family with a reversed layer profile: they move the all-item map only
    ids = r.groupby("family")["item_id"].unique().map(lambda x: list(x[:3])).sum()
    extra = r[r["item_id"].isin(ids)].assign(ld_corrupt=1.0)
    extra = extra.assign(item_id=extra["item_id"] + "-u", ld_drop=extra["ld_clean"] * (5 - extra["layer"]) * 10.0)
    a = null_atlas(pd.concat([r, extra], ignore_index=True), 6)
    assert a.testable_families == flipped_only.testable_families == ["fam0", "fam1", "fam2", "fam3"]
    m = a.item_maps("block", "zero")
    assert set(m["family"]) == {"fam0", "fam1", "fam2", "fam3", "overall"}
    ov = m[m.family == "overall"]
    assert np.allclose(ov["flipped"], flipped_only.layer_scores().to_numpy())
    assert ov["all"].is_monotonic_decreasing  # the reversed unflipped items dominate the all-item map
    agree = a.item_map_agreement("block", "zero").set_index("family")
    assert agree.loc["overall", "spearman"] == pytest.approx(spearmanr(ov["flipped"], ov["all"]).statistic)
    assert agree.loc["overall", "spearman"] < 1.0


def test_hub_claim_never_reads_a_compensated_layer_as_unimportant():
    r = nulls.null_rows(0, n_layers=6, methods=("zero",), hub=2, effect=0.4)
    # layer 4: its direct path carries 0.6 of the clean LD, its total effect stays small (repaired downstream)
    r = r.assign(direct=np.where(r["layer"] == 4, 0.6 * r["ld_clean"], r["ld_drop"]))
    a = null_atlas(r, 6)
    assert a.compensated_layers("block", "zero") == [4]
    assert a.hub_evidence("block")["compensated_layers"] == [4]
    c = hub_claim(a, "block")
    assert c.statement.startswith("block layer 2 is the zero-ablation hub")
    assert "layer 4 has a direct effect at least twice its total effect" in c.statement
    assert "not unimportant" in c.statement
    lt = a.layer_table("block", "zero").set_index("layer")
    assert lt.loc[4, "reading"].startswith("compensated") and lt.loc[2, "reading"] == "large loss"
