"""Chapter 06 (SFT): the data and its six formats (same facts everywhere, eval disjoint from every training set), the
sweep grid, the statistics behind the claims on planted tables, and one tiny end-to-end run (seconds)."""

from __future__ import annotations

import copy
from itertools import product

import numpy as np
import pandas as pd
import pytest
import torch

from atlas_core import profiles
from atlas_core.studies import sft
from atlas_core.studies.adapters import ALL_LINEAR

LEVELS = ("none", "low", "medium", "high")


# ---------------------------------------------------------------- data and formats

@pytest.fixture(scope="module")
def canon():
    return sft.canonical(60, 10, 30)


def test_canonical_is_deterministic_unique_and_split_by_person(canon):
    assert canon == sft.canonical(60, 10, 30)
    assert {k: len(v) for k, v in canon.items()} == {"train": 60, "val": 10, "eval": 30}
    people = {k: {tuple(e["fields"][f] for f in sft.FIELDS) for e in v} for k, v in canon.items()}
    assert sum(map(len, people.values())) == 100  # every person unique
    assert not people["eval"] & (people["train"] | people["val"]) and not people["val"] & people["train"]
    assert all(e["answer"] == e["fields"][e["ask"]] for v in canon.values() for e in v)


@pytest.mark.parametrize("with_template", [True, False])
def test_every_format_keeps_every_fact(canon, tok, with_template):
    t = copy.copy(tok)
    if not with_template:
        t.chat_template = None
    assert ("fallback" in sft.chat_label(t)) is not with_template
    for e, fmt in product(canon["train"] + canon["eval"], sft.FORMATS):
        r = sft.render(e, fmt, t)
        text = r["prompt"] + r["completion"]
        missing = [f for f in sft.fact_strings(e) if f not in text]
        assert not missing, f"{fmt} lost {missing}"
        assert e["answer"] in r["completion"] and r["reference"] == e["answer"]
        assert r["question"] == sft.question(e)  # the judge's view is the same in every format
    chat = sft.render(canon["train"][0], "chat", t)["prompt"]
    assert ("<|im_start|>" in chat) is with_template and ("<|user|>" in chat) is not with_template


def test_formats_differ_and_the_bad_control_runs_on(canon):
    e = canon["train"][0]
    prompts = {f: sft.render(e, f)["prompt"] for f in sft.FORMATS}
    assert len(set(prompts.values())) == len(sft.FORMATS)
    bad = sft.render(e, "bad")
    assert "###" in bad["completion"] and len(bad["completion"]) > 3 * len(e["answer"])
    with pytest.raises(ValueError, match="unknown format"):
        sft.render(e, "yaml")
    assert list(sft.examples_table(e)["format"]) == list(sft.FORMATS)


def test_eval_prompts_are_disjoint_from_every_training_set(canon, tok):
    train_prompts = {r["prompt"] for f in sft.FORMATS for s in ("train", "val") for r in sft.render_all(canon[s], f, tok)}
    eval_prompts = {r["prompt"] for f in sft.FORMATS for r in sft.render_all(canon["eval"], f, tok)}
    assert len(eval_prompts) == len(sft.FORMATS) * len(canon["eval"]) and not eval_prompts & train_prompts
    sets = sft.instruction_sets(40, 8, 20)
    assert set(sets) == set(sft.SETS)
    for name, s in sets.items():
        tr = {e["prompt"] for e in s["train"] + s["val"]}
        assert s["eval"] and not {e["prompt"] for e in s["eval"]} & tr, name
        assert not {e["prompt"] for e in s["val"]} & {e["prompt"] for e in s["train"]}, name
        assert all(e["reference"] == e["completion"].strip() for v in s.values() for e in v)
    facts = lambda split: {e["fact"] for e in sets["facts"][split]}  # noqa: E731
    assert not facts("eval") & (facts("train") | facts("val"))
    sizes = {len(set(e["completion"].count(",") for e in s["train"])) for s in sets.values()}
    assert max(sizes) > 1  # lists have varying numbers of items: a different shape


def test_list_answers_are_right():
    for e in sft.instruction_sets(30, 0, 5, names=["lists"])["lists"]["train"]:
        words = e["prompt"].split(": ", 1)[1].split(".\n")[0].split(", ")
        op = e["prompt"].split(":")[0]
        want = {"Sort these words alphabetically": ", ".join(sorted(words)), "Count the words in this list": str(len(words)),
                "Write these words in reverse order": ", ".join(words[::-1])}.get(op)
        if want is not None:
            assert e["expected"] == want


# ---------------------------------------------------------------- the sweep grid

def test_sweep_configs_change_one_dimension_at_a_time():
    P = profiles.get("default")["sft"]
    cfgs = sft.sweep_configs(P)
    base = cfgs[0]
    assert base["dim"] == "base" and len({c["config"] for c in cfgs}) == len(cfgs)
    for c in cfgs[1:]:
        changed = [d for d in sft.DIMENSIONS if c[d] != base[d]]
        assert changed == [c["dim"]]
    assert len(cfgs) == 1 + sum(len([v for v in vs if v != P["base"][d]]) for d, vs in P["sweep"].items())
    runs = sft.sweep_runs(cfgs, [1, 2], (3, 4), {**P, "max_len": 50}, 4)
    assert len(runs) == 2 * len(cfgs) and {tc.seed for _, _, tc in runs} == {1, 2}
    assert all(tc.max_len == 50 and tc.batch == 4 for _, _, tc in runs)


def test_targets_and_hub_layers():
    assert sft.hub_layers(5, 30, 4) == (4, 5, 6, 7) and sft.hub_layers(0, 4, 2) == (0, 1) and sft.hub_layers(3, 4, 2) == (2, 3)
    hub = sft.target_of("hub", 8, (4, 5))
    assert hub.layers == (4, 5) and hub.modules == ALL_LINEAR and hub.alpha == 16.0
    assert sft.target_of("o", 2, (1,)).modules == ("o",) and sft.target_of("o", 2, (1,)).layers is None
    assert sft.target_of("all-linear", 4, ()).modules == ALL_LINEAR
    assert set(sft.target_of("mlp", 4, ()).modules) == {"gate", "up", "down"}


def test_profiles_have_sft_at_the_promised_scale():
    for name in profiles.PROFILES:
        P = sft.profile(name)
        assert set(P["sweep"]) <= set(sft.DIMENSIONS) and set(P["base"]) == set(sft.DIMENSIONS)
        assert set(P["sweep"]["modules"]) <= set(sft.MODULES) and len(P["sweep"]["dataset"]) >= 3
    full = sft.profile("full")
    assert full["n_canon"] >= 300 and full["n_canon_eval"] >= 150 and full["n_seeds"] >= 3
    assert len(sft.sweep_configs(full)) * full["n_seeds"] >= 39
    assert set(full["sweep"]["optimizer"]) | {full["base"]["optimizer"]} == {"adamw", "adafactor", "lion"}


def test_peak_memory_sees_an_allocation():
    with sft.peak_memory() as m:
        x = torch.ones(64, 2**20 // 4 * 4)  # 64 MiB... give or take the allocator
        x += 1
        del x
    assert m["peak_mb"] > 30


# ---------------------------------------------------------------- statistics on planted tables

def _formats(loss_of, val_of, eval_of, seeds=(1, 2, 3), n=20, base=5.0):
    rows = []
    for f in sft.FORMATS:
        rows.append({"format": f, "strategy": "none", "seed": 0, "eval_loss": 3.0, "rubric_val": base,
                     "rubric_eval": base, "rubric_scores": [base] * n})
        for s in seeds:
            rows.append({"format": f, "strategy": "sft", "seed": s, "eval_loss": loss_of(f) + 0.01 * s,
                         "rubric_val": val_of(f), "rubric_eval": eval_of(f),
                         "rubric_scores": list(eval_of(f) + 0.1 * np.sin(np.arange(n) + s))})
    return pd.DataFrame(rows)


def test_loss_quality_finds_a_planted_anticorrelation():
    order = {f: i for i, f in enumerate(sft.FORMATS)}
    fm = _formats(lambda f: 1 + order[f], lambda f: 9 - order[f], lambda f: 9 - order[f])
    lq = sft.loss_quality(fm)
    assert lq["spearman"] == pytest.approx(-1.0) and lq["p_value"] == pytest.approx(2 / 720) and lq["n"] == 6
    assert all(v == pytest.approx(-1.0) for v in lq["per_seed"].values())
    flat = sft.loss_quality(_formats(lambda f: 1 + order[f], lambda f: 5.0, lambda f: 5.0 + (order[f] % 2)))
    assert flat["p_value"] > 0.05


def test_best_is_chosen_on_validation_and_tested_on_held_out():
    # 'terse' is best on validation, 'flat' best on eval: the choice must follow validation
    val = {f: 5.0 for f in sft.FORMATS} | {"terse": 8.0}
    ev = {f: 5.0 for f in sft.FORMATS} | {"flat": 9.0, "terse": 7.0}
    bb = sft.best_vs_base(_formats(lambda f: 1.0, val.get, ev.get))
    assert bb["best"] == "terse" and bb["n_candidates"] == 6 and bb["diff"] == pytest.approx(2.0, abs=0.1)
    assert bb["ci"][0] > 0 and bb["p_value"] < 0.05 and all(v > 0 for v in bb["per_seed"].values())
    worse = sft.best_vs_base(_formats(lambda f: 1.0, val.get, {f: 3.0 for f in sft.FORMATS}.get))
    assert worse["diff"] < 0 and worse["ci"][1] < 0


def _sweep(ranges: dict[str, float], seeds=(1, 2, 3)):
    rows = []
    for s in seeds:
        rows.append({"dim": "base", "config": "base", "value": "base", "seed": s, "eval_loss": 2.0, "val_loss": 2.0})
        for d, r in ranges.items():
            rows.append({"dim": d, "config": f"{d}=x", "value": "x", "seed": s, "eval_loss": 2.0 + r + 0.01 * s,
                         "val_loss": 2.0 + r})
    return pd.DataFrame(rows)


def test_dimension_effects_and_the_dominant_dimension():
    sw = _sweep({"dataset": 3.0, "rank": 0.5, "lr": 1.0})
    eff = sft.dimension_effects(sw)
    assert list(eff["dim"]) == ["dataset", "lr", "rank"] and eff["n_seeds"].eq(3).all()
    assert eff.loc[0, "range"] == pytest.approx(3.02, abs=1e-9)
    dom = sft.dominant_dimension(sw)
    assert dom["dim"] == "dataset" and dom["runner_up"] == "lr" and dom["seeds_wider"] == 3
    assert dom["p_value"] == pytest.approx(1 / 8) and dom["min_p"] == pytest.approx(1 / 8)


def test_claims_follow_the_measured_direction_and_grade_nulls_low():
    order = {f: i for i, f in enumerate(sft.FORMATS)}
    fm = _formats(lambda f: 1 + order[f], lambda f: 5.0 + (order[f] % 2), lambda f: 5.0 + (order[f] % 2) * 0.01)
    hub = pd.DataFrame([{"adapter_seed": s, "metric": "kl", "testable": False, "base_hub": 1, "adapted_hub": 1,
                         "same_hub": True, "rho": 1.0, "p_value": 0.08, "min_p": 0.08, "n_layers": 4} for s in (1, 2)])
    claims = sft.sft_claims(sft.loss_quality(fm), sft.best_vs_base(fm), sft.dominant_dimension(_sweep({"a": 1.0, "b": 1.0})), hub)
    assert len(claims) == 4
    lq, bb, dom, hb = claims
    assert "no clear association" in lq.statement and lq.confidence in ("none", "low")
    assert hb.confidence == "none" and "not testable" in "; ".join(hb.reasons)
    assert "does not move" in dom.statement or dom.confidence in ("none", "low")
    assert all(c.confidence in LEVELS for c in claims)
    planted = _formats(lambda f: 1 + order[f], lambda f: 9 - order[f], lambda f: 9 - order[f], seeds=(1, 2, 3))
    strong = sft.sft_claims(sft.loss_quality(planted), sft.best_vs_base(planted), sft.dominant_dimension(_sweep({"a": 3.0, "b": 1.0})),
                            hub.assign(testable=True))
    assert "lower loss goes with better judged answers" in strong[0].statement and strong[0].confidence == "medium"
    assert strong[1].confidence in ("medium", "high") and "scores higher" in strong[1].statement


# ---------------------------------------------------------------- end to end on a tiny model

def test_a_tiny_run_end_to_end_is_cached_and_complete(tok):
    from conftest import tiny_subject

    subject = tiny_subject("llama", tok)
    P = sft.profile("smoke") | {"n_val": 2, "n_eval": 3, "n_drift": 2, "n_canon": 6, "n_canon_eval": 3,
                                "base": {**sft.profile("smoke")["base"], "volume": 6, "steps": 2},
                                "sweep": {"dataset": ["lists"], "modules": ["hub"]}}
    data, tasks, P = sft.prepare(subject, P)
    runs = sft.plan(P, [1], 2, subject.arch.n_layers)
    J = sft.judges(use_api=False)
    picked = runs["sweep"] + runs["sweep_base"][:1] + runs["formats"][:1] + [r for r in runs["formats"] if r[0]["format"] == "bad"][1:]
    df = sft.run(subject, picked, data, tasks, J)
    assert len(df) == len(picked) and df["eval_loss"].notna().all() and df["drift"].ge(0).all()
    assert (df.loc[df.strategy == "none", "n_trainable"] == 0).all() and (df.loc[df.strategy != "none", "n_trainable"] > 0).all()
    assert df["rubric_eval"].between(1, 10).all() and all(len(s) == 3 for s in df["rubric_scores"])
    trained = df[df.strategy != "none"]
    assert trained["s_per_step"].gt(0).all() and trained["peak_mb"].notna().all()
    assert df.loc[df.config == "modules=hub", "layers"].iloc[0] == "2-3"  # hub 2, k 2: ties to the later layer
    again = sft.run(subject, picked, data, tasks, J)
    assert again.loc[again.strategy != "none", "cached"].all()
    pd.testing.assert_series_equal(again["eval_loss"], df["eval_loss"])
    assert list(again["peak_mb"].fillna(-1)) == list(df["peak_mb"].fillna(-1))  # read back, not re-measured


def test_hub_survival_maps_the_adapted_model_like_the_base(tok):
    from conftest import tiny_subject

    subject = tiny_subject("llama", tok)
    P = sft.profile("smoke") | {"n_val": 2, "n_eval": 2, "n_drift": 2, "n_canon": 4, "n_canon_eval": 2, "atlas_prompts": 4,
                                "n_gate": 8, "base": {**sft.profile("smoke")["base"], "volume": 4, "steps": 2},
                                "sweep": {"modules": ["hub"]}}
    data, _, P = sft.prepare(subject, P)
    atlas = sft.base_atlas(subject, P, [42])
    hub = sft.hub_of(atlas, P)
    assert hub["layer"] != 0 and hub["excluded"] == [0]
    runs = sft.plan(P, [1, 2], hub["layer"], subject.arch.n_layers)
    ads = sft.hub_adapters(subject, runs["sweep"], data, "modules=hub", 1)
    assert len(ads) == 1 and ads[0].target.layers == sft.hub_layers(hub["layer"], subject.arch.n_layers, P["hub_k"])
    surv, moved = sft.hub_survival(subject, atlas, ads, P, [42])
    assert len(surv) == 1 and surv["base_hub"].iloc[0] == hub["layer"] and surv["n_layers"].iloc[0] == subject.arch.n_layers - 1
    assert surv["adapted_hub"].iloc[0] != 0 and isinstance(surv["same_hub"].iloc[0], bool | np.bool_)
    assert {"layer", "a", "b", "delta", "adapter_seed"} <= set(moved.columns)
