"""The measurements behind chapter 08's rules (5), (8), (9) and (12): chapter 04's per-layer steering signs, chapter
05's lock-in claim, chapter 06's module / rank / optimizer sweep claims, and the rules reading them; planted tables,
no model and no forwards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atlas_core.evidence.claims import record
from atlas_core.studies import adapters, rules, sft, steering
from atlas_core.studies.steering import signs

MODEL, PROFILE = "synthetic-r", "smoke"


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    return tmp_path


# ---- chapter 04: where steering works and where its sign reverses

class _Split:
    def __init__(self, n: int):
        self.select = list(range(n))


class _Study:
    """The parts of `steering.Study` that `layer_signs` reads."""

    def __init__(self, means: dict[str, list[float]], n: int, testable: bool = True):
        self.dirs = {f: object() for f in means}
        self.sign = {f: 1 for f in means}
        self.splits = {f: _Split(n) for f in means}
        self.screen = pd.DataFrame([{"family": f, "layer": i, "alpha": a} for f, m in means.items()
                                    for i in range(len(m)) for a in (-0.4, 0.4)])
        self.screen_rows = pd.DataFrame()  # no kept rows: layer_signs sweeps (faked below)
        self.means, self.testable = means, testable

    def untestable(self, target: str) -> str | None:
        return None if self.testable else "the model does not solve it"


def _planted_signs(monkeypatch, means: dict[str, list[float]], n: int = 12, testable: bool = True) -> pd.DataFrame:
    st = _Study(means, n, testable)
    rng = np.random.default_rng(0)

    def fake_sweep(subject, items, us, sign=1, **kw):
        fam = next(f for f in st.means if st.splits[f].select is items)
        return pd.DataFrame([{"kind": "real", "layer": u, "item_id": i,
                              "effect": st.means[fam][u] + 0.1 * rng.standard_normal()} for u in us for i in items])

    monkeypatch.setattr(signs, "sweep_units", fake_sweep)
    monkeypatch.setattr(signs, "units", lambda d, layers, alphas: list(layers))
    return steering.layer_signs(None, st)


def test_layer_signs_tests_every_layer(monkeypatch):
    t = _planted_signs(monkeypatch, {"fa": [1.0, 0.0, -1.0, 1.0]})
    assert list(t["layer"]) == [0, 1, 2, 3] and set(t["alpha"]) == {0.4}  # the largest +α, every layer
    assert list(t["toward"]) == [True, False, False, True] and list(t["away"]) == [False, False, True, False]
    assert (t["holm_toward"] >= t["p_toward"]).all()
    (c,) = steering.layer_sign_claims(t, model=MODEL, profile=PROFILE)
    assert c.tag == "04.layer_signs.fa" and c.evidence["n_toward"] == 2 and c.evidence["n_away"] == 1
    assert c.evidence["layers_away"] == [2] and c.evidence["p_value"] <= 0.05 and "2/4 layers" in c.statement


def test_layer_signs_few_prompts_and_untestable(monkeypatch):
    t = _planted_signs(monkeypatch, {"fa": [1.0, -1.0, 1.0]}, n=3)  # 3 prompts: one-sided p >= 1/8
    (c,) = steering.layer_sign_claims(t, model=MODEL, profile=PROFILE)
    assert c.evidence["n_toward"] == 0 and "no p can go below" in c.statement
    t = _planted_signs(monkeypatch, {"fb": [1.0, -1.0]}, testable=False)
    (c,) = steering.layer_sign_claims(t, model=MODEL, profile=PROFILE)
    assert c.evidence["testable"] is False and c.confidence == "none"


# ---- chapter 05: when the adapter's layer map locks in

def _maps(first: list[float], final: list[float]) -> pd.DataFrame:
    n = len(final)
    return pd.concat([pd.DataFrame({"step": s, "layer": range(n), "effect": e, "norm": 1.0})
                      for s, e in ((0, [0.0] * n), (2, first), (8, final))], ignore_index=True)


def test_lock_in_claim():
    final = [0.1, 0.5, 0.2, 0.9, 0.3, 0.7, 0.4, 0.8]
    c = adapters.lock_in_claim(_maps([x + 0.01 for x in final], final))
    assert c.tag == "05.lock_in" and c.evidence["rho"] == pytest.approx(1.0) and c.evidence["p_value"] < 0.001
    assert c.evidence["lock_step"] == 2 and c.evidence["lock_frac"] == 0.25 and "already matches" in c.statement
    c = adapters.lock_in_claim(_maps(final[::-1], final))
    assert c.evidence["rho"] < 0 and "does not match" in c.statement
    c = adapters.lock_in_claim(_maps([0.0] * 8, final))
    assert c.evidence["testable"] is False


# ---- chapter 06: module, rank and optimizer sweeps

def _sweep(n_seeds: int, o_eff: float = 3.0, r8: float = 1.0, ada: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base model loss 2.0; efficiency planted via loss = 2 - gain with params per module set; rank 32 at `r8` x rank
    8's loss (base), rank 2 10% above it; Adafactor at `ada` x AdamW."""
    rng = np.random.default_rng(1)
    params = {"all-linear": 4e6, "o": 0.5e6, "attn": 2e6}
    gain = {"all-linear": 1.0, "o": o_eff * 0.5, "attn": 1.2}
    rows = []
    for s in range(n_seeds):
        j = lambda: 0.001 * rng.standard_normal()  # noqa: E731
        base = 2.0 - gain["all-linear"] + j()
        rows.append({"dim": "base", "value": "base", "seed": s, "eval_loss": base, "n_trainable": params["all-linear"],
                     "peak_mb": 10.0, "family": "facts@16"})
        for m in ("o", "attn"):
            rows.append({"dim": "modules", "value": m, "seed": s, "eval_loss": 2.0 - gain[m] + j(),
                         "n_trainable": params[m], "peak_mb": 10.0, "family": "facts@16"})
        for r, f in ((2, 1.10), (32, r8)):
            rows.append({"dim": "rank", "value": str(r), "seed": s, "eval_loss": base * f + j(), "n_trainable": 1e6,
                         "peak_mb": 10.0, "family": "facts@16"})
        for o, f in (("adafactor", ada), ("lion", 1.0)):
            rows.append({"dim": "optimizer", "value": o, "seed": s, "eval_loss": base * f + j(), "n_trainable": 4e6,
                         "peak_mb": 8.0, "family": "facts@16"})
    return pd.DataFrame(rows), pd.DataFrame({"family": ["facts@16"], "eval_loss": [2.0]})


BASE = {"modules": "all-linear", "rank": 8, "optimizer": "adamw"}


def test_sweep_rule_claims_planted():
    sw, sb = _sweep(5)
    by = {c.tag: c for c in sft.sweep_rule_claims(sw, sb, BASE, model=MODEL, profile=PROFILE)}
    assert set(by) == {"06.modules", "06.rank", "06.optimizer"}
    assert by["06.modules"].evidence["top"] == "o" and by["06.modules"].evidence["p_value"] == pytest.approx(1 / 32)
    assert by["06.rank"].evidence["p_value"] == pytest.approx(1 / 32)  # rank 8 = rank 32, rank 2 10% worse
    assert by["06.optimizer"].evidence["p_value"] == pytest.approx(1 / 32)
    sw, sb = _sweep(6, o_eff=0.5, r8=0.9, ada=1.2)  # o least efficient, rank 8 10% worse than 32, Adafactor 20% worse
    by = {c.tag: c for c in sft.sweep_rule_claims(sw, sb, BASE, model=MODEL, profile=PROFILE)}
    assert by["06.modules"].evidence["top"] == "attn" and "is not" in by["06.modules"].statement
    for tag in by:
        assert by[tag].evidence["p_value"] == 1.0 and by[tag].evidence["p_reverse"] <= 2 / 64  # Holm over <= 2


def test_sweep_rule_claims_absent_rank():
    sw, sb = _sweep(2)
    by = {c.tag: c for c in sft.sweep_rule_claims(sw, sb, BASE | {"rank": 4}, model=MODEL, profile=PROFILE)}
    assert by["06.rank"].evidence["testable"] is False and "[2, 4, 32]" in by["06.rank"].statement
    assert "2 seeds cannot give p below 0.25" in by["06.optimizer"].statement


# ---- the rules reading them

def test_rules_read_the_new_claims(results, monkeypatch):
    sw, sb = _sweep(5)
    record(sft.sweep_rule_claims(sw, sb, BASE, model=MODEL, profile=PROFILE))
    final = [0.1, 0.5, 0.2, 0.9, 0.3, 0.7, 0.4, 0.8]
    record([adapters.lock_in_claim(_maps(final, final), model=MODEL, profile=PROFILE)])
    t = _planted_signs(monkeypatch, {"fa": [1.0, 0.0, -1.0], "fb": [1.0, -1.0, 0.0]})
    record(steering.layer_sign_claims(t, model=MODEL, profile=PROFILE))
    f = rules.findings(MODEL, PROFILE)
    assert f[5].verdict == "holds" and f[5].sources == ("06",)
    assert f[8].verdict == "holds" and "50%" in f[8].why
    assert f[9].verdict == "holds" and f[9].evidence["families_agreeing"] == 2
    assert f[12].verdict == "holds", f[12].why
    tab, _ = rules.table(MODEL, PROFILE)
    row = tab.set_index("rule")
    assert row.loc[9, "confidence"] == "low" and "capped at low" in row.loc[9, "why"]  # the source claims grade low


def test_rules_fail_and_inconclusive(results, monkeypatch):
    sw, sb = _sweep(6, o_eff=0.5, ada=1.2)
    record(sft.sweep_rule_claims(sw, sb, BASE, model=MODEL, profile=PROFILE))
    final = [0.1, 0.5, 0.2, 0.9, 0.3, 0.7, 0.4, 0.8]
    record([adapters.lock_in_claim(_maps(final[::-1], final), model=MODEL, profile=PROFILE)])
    t = _planted_signs(monkeypatch, {"fa": [1.0, 1.0, 1.0]})
    record(steering.layer_sign_claims(t, model=MODEL, profile=PROFILE))
    f = rules.findings(MODEL, PROFILE)
    assert f[5].verdict == "fails" and f[12].verdict == "fails" and "optimizer" in f[12].why
    assert f[8].verdict == "fails"
    assert f[9].verdict == "fails" and "every screened layer" in f[9].why
    sw, sb = _sweep(2)
    record(sft.sweep_rule_claims(sw, sb, BASE, model=MODEL, profile=PROFILE))
    f = rules.findings(MODEL, PROFILE)
    assert f[5].verdict == "not testable here" and "cannot give an exact p below 0.25" in f[5].why
