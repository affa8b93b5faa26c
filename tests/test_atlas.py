"""Atlas aggregation, determinism, diff, persistence, the layer map, the shared items/units builders and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_subject

from atlas_core import tasks
from atlas_core.cli import main
from atlas_core.engine.sweep import Cache, sweep
from atlas_core.evidence import nulls
from atlas_core.model import tiny
from atlas_core.model.subject import wrap
from atlas_core.studies.atlas import (
    Atlas,
    agreement_claim,
    atlas_items,
    atlas_units,
    diff,
    hub_claim,
    item_pool,
    map_atlas,
    split_of,
)


def null_atlas(rows: pd.DataFrame, n_layers: int) -> Atlas:
    """An atlas of simulated rows (`nulls.null_rows`), means only."""
    return Atlas.from_rows(rows, "null", "null", n_layers, 1, n_boot=0)


SMALL = dict(families=["ioi", "antonyms"], methods=("zero", "mean"), seeds=(1, 2), prompts_per_family=3,
             heads=True, positions=("last",), progress=False)


def test_same_seed_gives_identical_atlas_json(tok, tmp_path):
    s = tiny_subject("llama", tok)
    a = map_atlas(s, out=tmp_path / "a", cache=Cache(tmp_path / "a.sqlite"), **SMALL)
    b = map_atlas(s, out=tmp_path / "b", cache=Cache(tmp_path / "b.sqlite"), **SMALL)
    assert a.run_stats["computed"] > 0 and b.run_stats["cached"] == 0
    assert (tmp_path / "a" / "atlas.json").read_bytes() == (tmp_path / "b" / "atlas.json").read_bytes()
    loaded = Atlas.load(tmp_path / "a")
    assert loaded.hub() == a.hub()
    d = diff(a, loaded)
    assert (d["delta"].abs() < 1e-6).all()
    doc = json.loads((tmp_path / "a" / "atlas.json").read_text())
    assert doc["schema"] == "mi-atlas/atlas@2" and {"effects", "hub", "method_agreement", "solved"} <= set(doc)


def test_planted_layers_are_the_only_nonzero_layers(tok, tmp_path):
    model, _ = tiny.build("llama", vocab_size=len(tok), n_layers=5)
    tiny.plant(model, keep_blocks=[1, 3])
    s = wrap("planted", model, tok, "planted", {})
    a = map_atlas(s, cache=Cache(tmp_path / "c.sqlite"), **{**SMALL, "heads": False})
    for method in ("zero", "mean"):
        sc = a.layer_scores(component="block", method=method, metric="kl")
        assert set(sc[sc > 0].index) == {1, 3}, method
    # a random model flips no family: the hub is a KL disruption hub, flagged as not testable
    assert a.hub()["layer"] in (1, 3) and a.hub()["family_agreement"] == 1.0 and a.hub()["testable"] is False


def test_diff_depth_normalizes_different_depths(tok, tmp_path):
    s4 = tiny_subject("llama", tok)
    s6 = wrap("tiny6", tiny.build("llama", vocab_size=len(tok), n_layers=6)[0], tok, "t", {})
    kw = {**SMALL, "heads": False, "positions": ()}
    a = map_atlas(s4, cache=Cache(tmp_path / "d.sqlite"), **kw)
    b = map_atlas(s6, cache=Cache(tmp_path / "d.sqlite"), **kw)
    d = diff(a, b)
    assert "depth_bin" in d.columns and d["depth_bin"].max() == 3


def test_cli_help_and_one_line_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["map", "--help"])
    assert e.value.code == 0 and "--prompts-per-family" in capsys.readouterr().out
    for args, needle in [(["--families", "nope"], "unknown families"), (["--components", "spleen"], "unknown components"),
                         (["--methods", "explode"], "unknown method")]:
        assert main(["map", "--model", "tiny-llama", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err


def test_cli_map_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "results"))
    args = ["map", "--model", "tiny-llama", "--families", "ioi", "--components", "block", "--methods", "zero",
            "--seeds", "42", "--prompts-per-family", "2", "--no-heads", "--positions", "", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "cached=0" in first and "hub: not testable" in first and (tmp_path / "out" / "atlas.json").exists()
    assert main(args) == 0
    assert "units computed=0" in capsys.readouterr().out


def test_random_init_models_earn_no_atlas_claim_above_low(tok, tmp_path):
    """Random-init models of several families, depths and seeds solve no family: every hub and
    method-agreement claim says 'not testable here' and grades none."""
    for fam, layers, seed in (("llama", 4, 0), ("gemma3", 3, 1), ("qwen2", 5, 2)):
        s = wrap(f"r-{fam}", tiny.build(fam, vocab_size=len(tok), n_layers=layers, seed=seed)[0], tok, "t", {})
        a = map_atlas(s, families=["ioi", "antonyms", "copying"], components=("block", "mlp"), methods=("zero", "mean"),
                      seeds=(1, 2), prompts_per_family=4, heads=False, positions=(), progress=False,
                      cache=Cache(tmp_path / "r.sqlite"))
        assert a.testable_families == []
        for c in ("block", "mlp"):
            for claim in (hub_claim(a, c), hub_claim(a, c, (0,)), agreement_claim(a, c)):
                assert claim.confidence == "none" and "not testable here" in claim.statement, claim.statement


def test_hub_is_chosen_on_one_split_and_tested_on_the_other():
    planted = null_atlas(nulls.null_rows(0, hub=3, effect=0.2), 8)
    ev = planted.hub_evidence("block")
    assert ev["hub"] == 3 and ev["selection"] == "held-out" and ev["n_candidates"] == 8 and ev["p_value"] < 0.01
    c = hub_claim(planted, "block")
    assert c.statement.startswith("block layer 3 is the zero-ablation hub") and c.confidence == "high"
    # opposite evidence: no planted layer -> the statement says it does not beat the median, confidence drops
    flat = hub_claim(null_atlas(nulls.null_rows(5), 8), "block")
    assert "does not beat the median layer" in flat.statement and flat.confidence in ("none", "low")
    # the splits are disjoint in prompts and fixed by the item id
    assert {split_of(f"x{i}") for i in range(40)} == {"select", "test"} and split_of("x1") == split_of("x1")
    # methods agreement: worded from the evidence both ways
    assert "do not demonstrably" in agreement_claim(null_atlas(nulls.null_rows(1), 8), "block").statement
    shared = agreement_claim(null_atlas(nulls.null_rows(1, shared_profile=True), 8), "block")
    assert "rank block layers alike" in shared.statement and "not" not in shared.statement


def test_family_flip_gate():
    rows = pd.DataFrame({"family": ["a"] * 40 + ["b"] * 40, "item_id": range(80),
                         "ld_clean": [1.0] * 80, "ld_corrupt": [-1.0] * 40 + [-1.0] * 20 + [1.0] * 20})
    t = tasks.solved(pd.concat([rows, rows]))  # an item seen twice (two units) counts once
    assert t["n_items"].tolist() == [40, 40] and t["testable"].tolist() == [True, False]


def test_gated_atlas_takes_its_testable_families_from_the_gate():
    a = null_atlas(nulls.null_rows(0, hub=3, effect=0.2), 8)
    assert a.testable_families == ["fam0", "fam1", "fam2", "fam3"]
    ev = a.hub_evidence("block")
    assert ev["n_methods"] == 2 and set(ev["method_hubs"]) == {"mean", "resample"}  # the chosen method is not counted
    none = a.gated(pd.DataFrame({"family": ["fam0"], "n_items": [48], "n_flipped": [3], "testable": [False]}))
    assert none.testable_families == [] and none.hub_evidence("block")["testable"] is False
    assert a.testable_families  # the original is unchanged


def test_layer_map_is_the_headline_layer_view():
    planted = null_atlas(nulls.null_rows(0, n_layers=6, hub=3, effect=0.2), 6)
    m = planted.layer_map()
    assert m.attrs["metric"] == "ld_frac" and list(m.columns) == ["family", "layer", "value", "lo", "hi"]
    assert sorted(m["family"].unique()) == planted.testable_families and len(m) == 4 * 6
    # per family and layer the mean over seeds and splits; averaged over families it is `layer_scores`
    e = planted.effects
    one = e[(e["family"] == "fam1") & (e["layer"] == 2) & (e["method"] == "zero")]["ld_frac"].mean()
    assert m.set_index(["family", "layer"]).loc[("fam1", 2), "value"] == pytest.approx(one)
    assert np.allclose(m.groupby("layer")["value"].mean(), planted.layer_scores())
    assert m.groupby("layer")["value"].mean().idxmax() == 3
    # every component and method at once, as columns
    every = planted.layer_map(None, None, "kl")
    assert every.attrs["metric"] == "kl" and set(every["method"]) == {"zero", "mean", "resample"}
    assert list(every.columns[:4]) == ["component", "method", "family", "layer"]
    # a model that solves nothing: the headline is KL on every family, and the behaviour map is empty
    untestable = planted.gated(pd.DataFrame({"family": ["fam0"], "n_items": [48], "n_flipped": [3], "testable": [False]}))
    km = untestable.layer_map("block", "mean")
    assert km.attrs["metric"] == "kl" and sorted(km["family"].unique()) == ["fam0", "fam1", "fam2", "fam3"]
    assert km["lo"].isna().all()  # means-only atlas: no intervals
    assert untestable.layer_map(metric="ld_frac").empty


def test_map_atlas_sweeps_exactly_the_shared_items_and_units(tok, tmp_path):
    s = tiny_subject("llama", tok)
    cache = Cache(tmp_path / "s.sqlite")
    kw = {**SMALL, "components": ("block", "mlp"), "seeds": (3,), "neutral_prompts": 0}
    a = map_atlas(s, out=tmp_path / "o", cache=cache, **kw)
    rows = pd.read_parquet(tmp_path / "o" / "rows.parquet")
    pool, _ = item_pool(s, kw["families"])
    items = atlas_items(pool, kw["families"], kw["prompts_per_family"], 3)
    units = atlas_units(s.arch, kw["components"], kw["methods"], kw["heads"], kw["positions"], seed=3)
    assert [it.family for it in items] == ["ioi"] * 3 + ["antonyms"] * 3
    assert set(rows["item_id"]) == {it.id for it in items} and set(rows["unit"]) == {u.key for u in units}
    n = s.arch.n_layers
    assert len(units) == len({u.key for u in units}) == n * 2 * 2 + n * s.arch.n_heads + n
    # the same builders rebuild the atlas's sweep from its meta: every number comes from the cache
    again = sweep(s, atlas_items(pool, a.meta["families"], a.meta["prompts_per_family"], 3),
                  atlas_units(s.arch, a.meta["components"], a.meta["methods"], heads=a.meta["heads"], seed=3),
                  seed=3, cache=cache, progress=False)
    assert again.attrs["computed"] == 0 and again.attrs["cached"] > 0
    d = [u.describe() for u in units]
    assert atlas_units(s.arch, ["block"], ["zero"]) == [
        u for u, x in zip(units, d) if (x["component"], x["position"], x["method"]) == ("block", "all", "zero")]


def test_replication_seeds_sweep_what_claims_are_made_about(tok):
    """replicate='testable': the first seed maps every family, later seeds only the gate's testable ones; the
    families no claim is about get only the disruption map (whole components, first method); heads only on the
    first head_seeds seeds, positions only on the first; neutral text only with the first method; the gate decides the testable families."""
    from atlas_core.studies.atlas import map_atlas

    s = tiny_subject("llama", tok)
    fams = ["ioi", "antonyms", "copying"]
    gate = pd.DataFrame({"family": fams, "n_items": 8, "n_flipped": [8, 0, 0], "flip_rate": [1.0, 0, 0],
                         "flip_lo": [0.7, 0, 0], "flip_hi": [1.0, 0.3, 0.3], "testable": [True, False, False]})
    a = map_atlas(s, fams, ["block", "mlp"], ["zero", "mean"], seeds=[1, 2], prompts_per_family=2, heads=True,
                  positions=("first",), neutral_prompts=2, direct=False, gate=gate, replicate="testable",
                  head_seeds=1, progress=False, disruption_prompts=1)
    e = a.effects
    one = e[(e["seed"] == 1) & (e["component"] == "block") & (e["layer"] == 0) & (e["method"] == "zero")
            & (e["position"] == "all")].groupby("family")["n"].sum()  # prompts per family over both splits
    assert one.to_dict() == {"antonyms": 1, "copying": 1, "ioi": 2}  # the disruption map: disruption_prompts
    assert set(e[e["seed"] == 1]["family"]) == set(fams) and set(e[e["seed"] == 2]["family"]) == {"ioi"}
    assert set(e[e["component"] == "head"]["seed"]) == {1} and set(e[e["component"] == "head"]["family"]) == {"ioi"}
    rest = e[e["family"] != "ioi"]
    assert set(rest["method"]) == {"zero"} and set(rest["position"]) == {"all"} and set(rest["component"]) == {"block", "mlp"}
    ioi = e[e["family"] == "ioi"]
    assert set(ioi["method"]) == {"zero", "mean"} and set(ioi[ioi["seed"] == 2]["position"]) == {"all"}
    assert set(ioi[ioi["seed"] == 1]["position"]) == {"all", "first"}  # positions: the first seed's description
    assert e.loc[e["method"] == "mean", "kl_neutral"].isna().all() and e.loc[
        (e["method"] == "zero") & (e["position"] == "all") & (e["component"] != "head"), "kl_neutral"].notna().all()
    assert a.testable_families == ["ioi"] and a.meta["replicate"] == "testable" and a.meta["head_seeds"] == 1
    none = gate.assign(testable=False)  # no family testable: every family gets every unit on the first seed only
    b = map_atlas(s, fams, ["block"], ["zero", "mean"], seeds=[1, 2], prompts_per_family=2, heads=False, positions=(),
                  neutral_prompts=0, direct=False, gate=none, replicate="testable", progress=False)
    assert set(b.effects["seed"]) == {1} and set(b.effects.groupby("family")["method"].nunique()) == {2}
    with pytest.raises(ValueError, match="needs a gate"):
        map_atlas(s, fams, ["block"], ["zero"], seeds=[1], prompts_per_family=2, replicate="testable")


def test_cell_intervals_equal_one_bootstrap_per_cell():
    """The atlas's vectorized cell CIs equal `stats.bootstrap_ci` run on each cell's values (flipped-only ld_frac,
    NaN where a cell has no flipped item), and its point estimates the plain means."""
    from atlas_core.evidence.stats import bootstrap_ci
    from atlas_core.studies.atlas.effects import KEYS, aggregate

    rng = np.random.default_rng(0)
    n = 400
    rows = pd.DataFrame({"component": "block", "layer": rng.integers(0, 4, n), "head": -1, "position": "all",
                         "method": rng.choice(["zero", "mean"], n), "family": rng.choice(["ioi", "antonyms"], n),
                         "seed": 1, "item_id": [f"x/{i % 37}" for i in range(n)], "kl": rng.lognormal(size=n),
                         "ld_drop": rng.normal(size=n), "ld_clean": rng.normal(1, 1, n), "ld_corrupt": rng.normal(-1, 1, n),
                         "p_answer": rng.random(n), "top5_overlap": rng.random(n)})
    eff, _ = aggregate(rows, n_boot=300)
    from atlas_core.studies.atlas.effects import split_of
    from atlas_core.tasks import flipped
    rows = rows.assign(split=[split_of(i) for i in rows["item_id"]], flipped=flipped(rows["ld_clean"], rows["ld_corrupt"]))
    for (key, g), e in zip(rows.groupby(KEYS, sort=True), eff.itertuples(), strict=True):
        assert tuple(getattr(e, k) for k in KEYS) == key
        f = g[g["flipped"]]
        want = {"kl": bootstrap_ci(g["kl"], 300), "ld_drop": bootstrap_ci(g["ld_drop"], 300),
                "ld_frac": bootstrap_ci(f["ld_drop"] / f["ld_clean"].mean(), 300) if len(f) else (np.nan,) * 3}
        for m, (est, lo, hi) in want.items():
            np.testing.assert_allclose([getattr(e, m), getattr(e, f"{m}_lo"), getattr(e, f"{m}_hi")], [est, lo, hi],
                                       atol=2e-7)
        assert e.n == len(g) and e.n_solved == len(f)


def test_patching_methods_map_with_direct_effects(tok):
    """denoise / noise units (patches from the other run) get direct effects too: their batch keeps its corrupt run."""
    from atlas_core.studies.atlas import map_atlas

    s = tiny_subject("llama", tok)
    a = map_atlas(s, ["ioi"], ["block"], ["zero", "denoise", "noise"], seeds=[1], prompts_per_family=2, heads=False,
                  positions=(), neutral_prompts=0, progress=False)
    assert set(a.effects["method"]) == {"zero", "denoise", "noise"}
    assert a.effects.loc[a.effects["method"] == "noise", "direct_drop"].notna().all()
