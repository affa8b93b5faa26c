"""The shared pieces every study uses: unit labels, one bootstrap, one recovery formula, one family grouping,
a public way to wrap and derive subjects."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_items, tiny_subject

from atlas_core.engine.batch import Batch
from atlas_core.engine.interventions import Edit, Op, Site, Unit
from atlas_core.engine.sweep import Cache, sweep
from atlas_core.evidence import metrics, stats
from atlas_core.tasks import by_family


def test_labels_become_columns_and_leave_the_cache_key_alone(tok, tmp_path):
    s = tiny_subject("llama", tok)
    items = make_items(tok, 4)
    u = Unit.of(Site("mlp", 1), Op.zero())
    cache = Cache(tmp_path / "c.sqlite")
    plain = sweep(s, items, [u], cache=cache, progress=False)
    labelled = sweep(s, items, [u.label(role="candidate"), u.label(role="control")], cache=cache, progress=False)
    assert labelled.attrs["computed"] == 0  # same key, read from the cache
    assert sorted(labelled["role"].unique()) == ["candidate", "control"] and len(labelled) == 2 * len(plain)
    for _, g in labelled.groupby("role"):
        np.testing.assert_array_equal(g["kl"].to_numpy(), plain["kl"].to_numpy())
    assert u.label(role="x") == u and hash(u.label(role="x")) == hash(u)


def test_describe_spans_every_edit():
    u = Unit((Edit(Site("resid", 1), Op.patch("clean")), Edit(Site("resid", 4), Op.patch("clean"))))
    d = u.describe()
    assert (d["layer"], d["last_layer"], d["n_edits"]) == (1, 4, 2)


def test_batch_of_items_equals_the_long_form(tok):
    s = tiny_subject("llama", tok)
    items = make_items(tok, 4)
    a = Batch.of_items(s, items)
    b = Batch(s, [i.prompt for i in items], [i.corrupt for i in items], [i.answer_id for i in items],
              [i.distractor_id for i in items], [i.diff_pos for i in items])
    for run in ("clean", "corrupt"):
        assert (a.logits(run) - b.logits(run)).abs().max() == 0


def test_resample_ci_is_one_bootstrap_for_paired_and_stratified_samples():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1, 1, 30), rng.normal(0, 1, 30)
    est, lo, hi = stats.resample_ci(lambda a, b: a[0].mean() - b[0].mean(), (x,), (y,), seed=1)
    assert lo < est < hi and est == pytest.approx(x.mean() - y.mean())
    # paired rows stay together: a statistic of the paired difference of identical arrays never varies
    assert stats.resample_ci(lambda s: (s[0] - s[1]).mean(), (x, x))[1:] == (0.0, 0.0)
    # coverage of the percentile ratio-of-means CI on a known ratio (2.0), measured, not assumed
    hits = 0
    for i in range(200):
        c, z = rng.normal(4, 1, 24), rng.normal(0, 1, 24)
        ld = 0.5 * (c + z) + rng.normal(0, 0.5, 24)  # true recovery 0.5 of the gap
        _, lo, hi = stats.resample_ci(lambda s: metrics.mean_recovery(*s), (ld, c, z), n_boot=300, seed=i)
        hits += lo <= 0.5 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_mean_recovery_refuses_an_empty_gap():
    assert metrics.mean_recovery([1.0], [2.0], [0.0]) == 0.5
    assert np.isnan(metrics.mean_recovery([1.0], [0.0], [2.0]))
    assert metrics.mean_recovery([1.0], [0.0], [2.0], positive_gap=False) == 0.5


def test_by_family_sorts_families_and_keeps_order():
    its = [SimpleNamespace(family=f, id=i) for i, f in enumerate("bab")]
    assert {k: [x.id for x in v] for k, v in by_family(its).items()} == {"a": [1], "b": [0, 2]}


def test_derive_keeps_the_tokenizer_and_gets_its_own_fingerprint(tok):
    import copy

    s = tiny_subject("llama", tok)
    m = copy.deepcopy(s.model)
    next(m.parameters()).data.add_(1.0)
    d = s.derive(m, "tiny-llama+1", "first weight + 1")
    assert d.tokenizer is s.tokenizer and d.fingerprint != s.fingerprint and "first weight + 1" in d.source


def test_vectorized_resampling_draws_the_same_resamples():
    rng = np.random.default_rng(3)
    for n in (2, 7, 16):
        c, z = rng.normal(3, 1, n), rng.normal(0, 1, n)
        ld = 0.4 * c + rng.normal(0, 1, n)
        loop = stats.resample_ci(lambda s: metrics.mean_recovery(*s), (ld, c, z), seed=2)
        assert stats.resample_ci(lambda s: metrics.mean_recovery(*s), (ld, c, z), seed=2, vectorized=True) == loop
