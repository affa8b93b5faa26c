"""Atlas aggregation, determinism, diff, persistence and the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_subject

from atlas_core import tiny
from atlas_core.atlas import Atlas, diff, map_atlas
from atlas_core.cli import main
from atlas_core.subject import _finish
from atlas_core.sweep import Cache

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
    assert doc["schema"] == "mi-atlas/atlas@1" and {"effects", "hub", "method_agreement"} <= set(doc)


def test_planted_layers_are_the_only_nonzero_layers(tok, tmp_path):
    model, _ = tiny.build("llama", vocab_size=len(tok), n_layers=5)
    tiny.plant(model, keep_blocks=[1, 3])
    s = _finish("planted", model, tok, "planted", {})
    a = map_atlas(s, cache=Cache(tmp_path / "c.sqlite"), **{**SMALL, "heads": False})
    for method in ("zero", "mean"):
        sc = a.layer_scores(component="block", method=method)
        assert set(sc[sc > 0].index) == {1, 3}, method
    assert a.hub()["layer"] in (1, 3) and a.hub()["family_agreement"] == 1.0


def test_diff_depth_normalizes_different_depths(tok, tmp_path):
    s4 = tiny_subject("llama", tok)
    s6 = _finish("tiny6", tiny.build("llama", vocab_size=len(tok), n_layers=6)[0], tok, "t", {})
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
    assert "cached=0" in first and "std=n/a (one seed)" in first and (tmp_path / "out" / "atlas.json").exists()
    assert main(args) == 0
    assert "units computed=0" in capsys.readouterr().out
