"""The rules under test (chapter 08) and chapter 00's strip, on a synthetic atlas and registry with planted answers:
no model, no forwards."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from atlas_core.evidence import registry
from atlas_core.evidence.claims import Claim, grade, latest, record
from atlas_core.studies import rules
from atlas_core.studies.adapters.claims import late_share
from atlas_core.studies.atlas import Atlas
from atlas_core.studies.rules import catalog, readers

MODEL, PROFILE = "synthetic-m", "smoke"
FAMS = ["fa", "fb", "fc", "fd", "fe", "ff"]
L = 6
LEVELS = readers.LEVELS


def _effects(mlp_top: int, rng: np.random.Generator) -> pd.DataFrame:
    """Planted: MLP zero-ablation largest at `mlp_top`; block mean-ablation ~0 everywhere; block zero largest at L0,
    where the first token alone carries ~90% of it (a sink) with no task-specific KL; elsewhere the last token
    carries the effect; specificity ~0."""
    recs = []
    block = np.array([0.9, 0.5, 0.3, 0.2, 0.15, 0.1])
    for fam in FAMS:
        for seed in (1, 2, 3):
            for split in ("select", "test"):
                for layer in range(L):
                    cell = {"layer": layer, "head": -1, "family": fam, "seed": seed, "split": split}
                    for comp, method, pos, v, spec in (
                            ("mlp", "zero", "all", (0.8 if layer == mlp_top else 0.1) + rng.normal(0, 0.02), 0.0),
                            ("block", "zero", "all", block[layer] + rng.normal(0, 0.02), rng.normal(0, 0.5)),
                            ("block", "mean", "all", rng.normal(0, 0.005), 0.0),
                            ("block", "zero", "first", (0.8 if layer == 0 else 0.02) + rng.normal(0, 0.02), 0.0),
                            ("block", "zero", "last", block[layer] + 0.05 + rng.normal(0, 0.02), 0.0)):
                        recs.append(cell | {"component": comp, "method": method, "position": pos, "ld_frac": v,
                                            "kl": abs(v), "specificity": spec})
    return pd.DataFrame(recs)


def _atlas(mlp_top: int = 0, seed: int = 0) -> Atlas:
    solved = pd.DataFrame({"family": FAMS, "n_items": 16, "n_flipped": 16, "flip_rate": 1.0, "flip_lo": 0.8,
                           "flip_hi": 1.0, "testable": True})
    return Atlas(MODEL, "fp", L, 2, _effects(mlp_top, np.random.default_rng(seed)), {"families": FAMS},
                 solved=solved)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    return tmp_path


def _save(results, atlas: Atlas) -> None:
    atlas.save(results / f"atlas-{MODEL}-{PROFILE}")


def _claim(chapter: str, tag: str, evidence: dict, statement: str = "s") -> Claim:
    return Claim(statement, "m", "cf", "ctl", evidence, chapter, MODEL, PROFILE, tag)


def test_planted_atlas_rules(results):
    _save(results, _atlas(mlp_top=0))
    f = rules.findings(MODEL, PROFILE)
    assert f[1].verdict == "holds" and f[1].evidence["p_value"] <= 0.05
    assert f[3].verdict == "holds", f[3].measured  # block mean-ablation planted at ~0
    assert f[2].verdict == "fails"  # mean ablation's top-3 is noise, zero's is [0, 1, 2]
    assert f[4].verdict == "holds"  # the last token's effect is planted 0.05 above the first's at L0, larger elsewhere
    assert f[11].verdict == "fails"  # every family's hub is L0, so 4 families give the same hub
    assert f[16].verdict == "holds", f[16].why  # first token carries ~90% at the hub, no task-specific KL
    assert f[13].verdict == "not testable here" and "chapter 06 has not run" in f[13].why


def test_planted_other_mlp_layer_fails(results):
    atlas = _atlas(mlp_top=3)
    e = atlas.effects
    at = (e["position"] == "first") & (e["layer"] == 2)
    atlas.effects = e.assign(ld_frac=e["ld_frac"].where(~at, 0.9))  # the first token dominates at L2 only
    _save(results, atlas)
    f = rules.findings(MODEL, PROFILE)
    assert f[1].verdict == "fails" and "L3" in f[1].measured
    assert f[4].verdict == "fails" and "[2]" in f[4].why


def test_narrow_suite_moves_the_hub(results):
    atlas = _atlas()
    e = atlas.effects
    blk = (e["component"] == "block") & (e["method"] == "zero") & (e["position"] == "all")
    four, rest = e["family"].isin(FAMS[:4]), ~e["family"].isin(FAMS[:4])
    v = e["ld_frac"].copy()
    v[blk & four & (e["layer"] == 2)] = 0.9  # the first 4 families (suite order): hub L2
    v[blk & four & (e["layer"] == 0)] = 0.3
    v[blk & rest & (e["layer"] == 0)] = 10.0  # the other two pull the all-family hub to L0
    atlas.effects = e.assign(ld_frac=v, kl=v.abs())  # rule 11 reads the KL disruption hub of every family
    _save(results, atlas)
    f = rules.findings(MODEL, PROFILE)[11]
    assert f.verdict == "holds" and "L0 from all 6" in f.measured and "L2 from the first 4" in f.measured, f.why
    assert "over all 15 4-family subsets" in f.measured


def test_no_atlas_is_not_testable(results):
    t, claims = rules.table(MODEL, PROFILE)
    assert len(t) == 16 and list(t["rule"]) == list(range(1, 17))
    assert set(t["verdict"]) == {"not testable here"} and set(t["confidence"]) == {"none"}
    assert "chapter 02 has not run" in t.loc[0, "why"]
    assert [c.tag for c in claims] == [f"08.rule{i}" for i in range(1, 17)]


def test_grade_never_above_source(results):
    _save(results, _atlas(mlp_top=0))
    # the MLP hub claim chapter 02 recorded graded none: rule 1's strong atlas test must not grade above it
    record([_claim("02", "02.hub.mlp", {}), _claim("02", "02.hub.block", {"p_value": 0.01, "hub": 0})])
    record([_claim("07", "07.single_layer", {"ci_excludes_control": True, "best_top5": 0.2, "best_lo": 0.15,
                                             "best_hi": 0.25, "worst_top5": 0.05, "best_layer": "L3"}),
            _claim("07", "07.precision.nf4", {"ci_excludes_control": True, "ratio": 1.5, "lo": 1.2, "hi": 1.8})])
    t, claims = rules.table(MODEL, PROFILE)
    row = t.set_index("rule")
    assert row.loc[1, "verdict"] == "holds" and row.loc[1, "confidence"] == "none"
    assert "capped at none" in row.loc[1, "why"]
    assert row.loc[14, "verdict"] == "holds" and row.loc[10, "verdict"] == "holds"
    src = {c.tag: c.confidence for c in latest(MODEL, PROFILE)}
    for r, tag in ((14, "07.single_layer"), (10, "07.precision.nf4"), (16, "02.hub.block")):
        assert LEVELS.index(row.loc[r, "confidence"]) <= LEVELS.index(src[tag])


def test_cap_drops_criteria_until_ceiling():
    ev = {"p_value": 0.001, "n_seeds": 3, "seeds_replicated": 3, "n_families": 4, "families_agreeing": 4}
    assert grade(ev)[0] == "high"
    for ceiling in LEVELS:
        capped, _ = readers.cap(ev, ceiling)
        assert LEVELS.index(grade(capped)[0]) <= LEVELS.index(ceiling)
    assert readers.cap(ev, None) == (ev, False)


def test_old_registry_lines_without_tag_still_read(results):
    line = {"kind": "claim", "chapter": "04", "statement": "old", "metric": "m", "counterfactual": "c", "control": "k",
            "evidence": {"p_value": 0.01}, "model": MODEL, "profile": PROFILE, "run_id": 1, "time": "t"}
    registry.registry_path().write_text(json.dumps(line) + "\n")
    got = latest(MODEL, PROFILE)
    assert len(got) == 1 and got[0].tag == "" and got[0].confidence == "low"
    f = rules.findings(MODEL, PROFILE)
    assert f[15].verdict == "not testable here" and "predates claim tags" in f[15].why


def test_steering_and_loss_quality_rules(results):
    ev = {"p_value": 0.01, "beats_prompting": True, "p_prompt": 0.02, "p_prompt_better": 0.9, "nll_cost": 0.1,
          "fluency_budget": 0.5, "families_agreeing": 2, "n_families": 3}
    record([_claim("04", "04.steer.a", ev), _claim("04", "04.steer.b", ev | {"beats_prompting": False, "p_prompt": 0.4}),
            _claim("04", "04.steer.c", {"testable": False, "untestable_why": "x"})])
    record([_claim("06", "06.loss_quality", {"p_value": 0.3, "spearman": 0.4, "n_seeds": 2, "seeds_replicated": 1})])
    f = rules.findings(MODEL, PROFILE)
    assert f[15].verdict == "holds" and "1/2 families" in f[15].measured
    assert f[13].verdict == "not testable here" and "inconclusive" in f[13].why


def test_strip_counts_and_link(results):
    assert "chapter 08 has not run" in rules.strip(MODEL, PROFILE)
    _save(results, _atlas(mlp_top=0))
    t, claims = rules.table(MODEL, PROFILE)
    record(claims)
    html = rules.strip(MODEL, PROFILE)
    n = t["verdict"].value_counts()
    assert (f"{n.get('holds', 0)} hold, {n.get('fails', 0)} fail, {n.get('not testable here', 0)} not testable here"
            in html)
    assert html.count(f'href="{catalog.ANCHOR}"') == 17 and catalog.ANCHOR == "08_robustness.html#rules-under-test"
    # the rules read chapters 02-07 only: chapter 08's own claims do not feed back into its table
    t2, _ = rules.table(MODEL, PROFILE)
    assert t2.equals(t)


def test_late_share_exact_p():
    final = pd.DataFrame({"layer": range(10), "effect": [0.01] * 9 + [1.0], "norm": range(10)})
    r = late_share(final)
    assert r["late_layers"] == 1 and r["late_share"] > 0.9 and r["late_p"] == pytest.approx(0.1)
    flat = late_share(final.assign(effect=[1.0] * 9 + [0.01]))
    assert flat["late_share"] < 0.1 and flat["late_p"] == 1.0
