"""The one mapping from a steering profile to chapter 04's study (`study_from_profile`), which chapter 08 rebuilds
from the sweep cache, and the screen's per-prompt rows the layer-sign table reads instead of re-sweeping."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import tiny_subject

from atlas_core import profiles
from atlas_core.engine.sweep import Cache
from atlas_core.studies import robustness as rb
from atlas_core.studies import steering

SEED = 42


@pytest.fixture(scope="module")
def profile_run(tok, tmp_path_factory):
    """Chapter 04's study on tiny-llama with the smoke profile, through a fresh sweep cache."""
    s = tiny_subject("llama", tok)
    S = profiles.get("smoke")["steering"]
    cache = Cache(tmp_path_factory.mktemp("steer") / "c.sqlite")
    st = steering.study_from_profile(s, S["families"], S["concepts"], S, SEED, cache=cache)
    return s, S, cache, st


def test_study_from_profile_is_the_explicit_call(profile_run):
    s, S, cache, st = profile_run
    n0 = len(cache)
    layers = list(range(0, s.arch.n_layers, S["layer_stride"]))
    explicit = steering.study(s, S["families"], S["concepts"], S["n"], S["n_fit"], layers, n_random=S["n_random"],
                              n_shuffled=S["n_shuffled"], n_screen_controls=S.get("n_screen_controls", 2), seed=SEED,
                              screen_alphas=S.get("screen_alphas", (-0.4, 0.4)), cache=cache)
    assert len(cache) == n0  # the same units: nothing new to compute
    assert sorted(st.screen["layer"].unique()) == layers and set(st.dirs) == {*S["families"], *S["concepts"]}
    pd.testing.assert_frame_equal(st.best, explicit.best, check_exact=True)
    pd.testing.assert_frame_equal(st.screen, explicit.screen, check_exact=True)
    pd.testing.assert_frame_equal(st.control_best, explicit.control_best, check_exact=True)
    pd.testing.assert_frame_equal(st.screen_rows, explicit.screen_rows, check_exact=True)
    other = steering.study_from_profile(s, S["families"][:1], [], S, SEED, layers=[0], cache=cache)
    assert set(other.screen["layer"]) == {0} and set(other.dirs) == {S["families"][0]}


def test_chapter_08_rebuilds_chapter_04s_study_from_the_cache(profile_run):
    """What chapter 04 sweeps for the study, the length buckets and the knockout covers all of chapter 08's steering
    inputs on those buckets, whatever order the gate puts the families in."""
    s, S, cache, st = profile_run
    steering.length_buckets(s, st, S["buckets"], S["n"], 0.4, seed=SEED, item_seed=SEED + 1, cache=cache)
    steering.knockout(s, st, seed=SEED, cache=cache)
    n0 = len(cache)
    fams = list(reversed(S["families"]))
    st8, by_bucket, ko = rb.steering_study(s, fams, S, S["buckets"], SEED, st.solved, cache=cache)
    assert len(cache) == n0  # 0 new units
    assert set(st8.dirs) == set(fams) and len(by_bucket) and len(ko)
    mine = st.best[st.best["family"].isin(fams)].sort_values(["family", "sign"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(st8.best.sort_values(["family", "sign"]).reset_index(drop=True), mine,
                                  check_exact=True)


def test_layer_signs_read_the_screen_rows_exactly_as_a_re_sweep_gives_them(profile_run):
    s, S, cache, st = profile_run
    assert len(st.screen_rows) and set(st.screen_rows["kind"]) == {"real"}
    assert len(st.screen_rows) == sum(len(st.splits[t].select) for t in st.dirs) * len(st.screen) // len(st.dirs)
    kept = steering.layer_signs(s, st, SEED, cache=cache)
    n0 = len(cache)
    swept = steering.layer_signs(s, dataclasses.replace(st, screen_rows=pd.DataFrame()), SEED, cache=cache)
    assert len(cache) == n0  # the re-sweep is the screen's own units
    assert len(kept) == len(st.screen[st.screen["alpha"] == st.screen["alpha"].max()])
    pd.testing.assert_frame_equal(kept, swept, check_exact=True)
