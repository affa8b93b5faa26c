"""Patching through the sweep engine: exact recovery at the last layer, noising mirror, cross-model patching."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_items, tiny_subject

from atlas_core import patching
from atlas_core.interventions import Op, Site, Unit
from atlas_core.sweep import Cache, sweep


@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    s = tiny_subject("llama", tok)
    return s, make_items(tok, 6), Cache(tmp_path_factory.mktemp("c") / "c.sqlite")


def test_denoise_and_noise_resid_last_layer_all_positions_are_exact(setup):
    s, items, cache = setup
    last = s.arch.n_layers - 1
    us = [Unit.of(Site("resid", last), Op.patch("clean")), Unit.of(Site("resid", last), Op.patch("corrupt"))]
    df = sweep(s, items, us, cache=cache, progress=False)
    den, noi = df[df["method"] == "denoise"], df[df["method"] == "noise"]
    np.testing.assert_allclose(den["logit_diff"], den["ld_clean"], atol=1e-5)
    np.testing.assert_allclose(noi["logit_diff"], noi["ld_corrupt"], atol=1e-5)
    summ = patching.summarize(df).set_index("method")
    assert summ.loc["denoise", "recovery"] == pytest.approx(1, abs=1e-5)
    assert summ.loc["noise", "recovery"] == pytest.approx(0, abs=1e-5)
    assert summ.loc["noise", "score"] == pytest.approx(1, abs=1e-5)  # noising destroys the whole behaviour


def test_units_cover_components_positions_heads(setup):
    s, *_ = setup
    us = patching.units(s.arch, ("block", "attn"), ("last", "diff"), ("denoise", "noise"), head_layers=[0])
    assert len(us) == 2 * s.arch.n_layers * 2 * 2 + s.arch.n_heads
    assert {u.run for u in us} == {"clean", "corrupt"}


def test_recovery_ci_is_ratio_of_means():
    est, lo, hi = patching.recovery_ci([1.0, 3.0], [2.0, 4.0], [0.0, 0.0])
    assert est == pytest.approx(4 / 6) and lo <= est <= hi


def test_cross_model_patching(setup, tok):
    s, items, _ = setup
    b = patching.perturbed(s, sigma=0.5, seed=1)
    n = s.arch.n_layers
    df = patching.cross_patch(b, s, items, patching.cumulative("block", n) + [Unit.of(Site("resid", n - 1), Op.patch("clean"))])
    full = df[df["n_layers_patched"] == n]  # every block's write from A: B's final residual is A's
    np.testing.assert_allclose(full["logit_diff"], full["ld_clean"], atol=1e-4)
    res = df[(df["component"] == "resid")]
    np.testing.assert_allclose(res["recovery"], 1, atol=1e-4)
    with pytest.raises(ValueError, match="d_model=64.*d_model=32"):
        patching.cross_patch(tiny_subject("llama", tok, d=32), s, items, [])
    assert patching.monotonic([0, 0.5, 0.4, 1.0], tol=0.05) == (False, 1)
