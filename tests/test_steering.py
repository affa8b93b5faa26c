"""Steering through the sweep engine: α = 0 is clean, controls, shuffled labels, selectivity, transfer, generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_items, tiny_subject

from atlas_core import steering
from atlas_core.sweep import Cache, sweep


@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    s = tiny_subject("llama", tok)
    items = make_items(tok, 8)
    dirs = steering.fit(s, [(it.corrupt, it.prompt) for it in items], "fact", n_random=10, n_shuffled=3, seed=0)
    return s, items, dirs, Cache(tmp_path_factory.mktemp("c") / "c.sqlite")


def test_alpha_zero_equals_clean_and_grading(setup):
    s, items, dirs, cache = setup
    us, meta = steering.units(dirs, [1], [0.0, 1.0, -1.0], kinds=("real", "random", "shuffled"))
    df = steering.effects(sweep(s, items, us, cache=cache, progress=False), meta, sign=1)
    zero = df[df["alpha"] == 0]
    np.testing.assert_allclose(zero["logit_diff"], zero["ld_clean"], atol=0)
    assert (zero["kl"] == 0).all()
    g = steering.grade(df).set_index("alpha")
    assert g.loc[1.0, "n_random"] == 10 and g.loc[1.0, "n_shuffled"] == 3
    assert 0 < g.loc[1.0, "p_random"] <= 1 and np.isfinite(g.loc[1.0, "z_random"])


def test_controls_have_equal_norm(setup):
    _, _, dirs, _ = setup
    for layer in range(dirs.real.shape[0]):
        n = dirs.norm[layer]
        norms = [dirs.vector("real", layer).norm()] + [dirs.vector(k, layer, i).norm() for k in ("random", "shuffled")
                                                       for i in range(getattr(dirs, k).shape[1])]
        torch.testing.assert_close(torch.stack(norms), n.expand(len(norms)))
    r = steering.random_directions(16, 10, seed=3)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(10))
    assert not torch.allclose(r[0], r[1]) and torch.equal(r, steering.random_directions(16, 10, seed=3))


def test_shuffled_direction_uses_permuted_labels():
    pos, neg = torch.randn(5, 3) + 4, torch.randn(5, 3)
    d, perm = steering.shuffled_diff(pos, neg, torch.Generator().manual_seed(0))
    x = torch.cat([pos, neg])
    torch.testing.assert_close(d, x[perm[:5]].mean(0) - x[perm[5:]].mean(0))
    assert sorted(perm.tolist()) == list(range(10))
    assert d.norm() < steering.mean_diff(pos, neg).norm()  # the real labels separate far better


def test_selectivity_math():
    t = (np.array([2.0, 2.0]), np.array([4.0, 4.0]))  # target: half the gap removed
    off = {"a": (np.array([0.1, 0.1]), np.array([1.0, 1.0])), "b": (np.array([-0.3, -0.3]), np.array([1.0, 1.0]))}
    est, lo, hi = steering.selectivity(t, off, n_boot=50)
    assert est == pytest.approx(0.5 / 0.2) and lo == pytest.approx(est) and hi == pytest.approx(est)
    assert steering.normalized(np.array([1.0]), np.array([0.0])) != steering.normalized(np.array([1.0]), np.array([0.0]))


def test_transfer_width_mismatch_names_both_widths(setup, tok):
    s, _, dirs, _ = setup
    other = tiny_subject("llama", tok, seed=1)
    assert steering.transfer(dirs, s, other).model == other.name
    with pytest.raises(ValueError, match=r"tiny-llama \(d_model=64\) to tiny-llama \(d_model=32\)"):
        steering.transfer(dirs, s, tiny_subject("llama", tok, d=32))


def test_generation_steering_changes_output_and_alpha_zero_does_not(setup):
    s, items, dirs, _ = setup
    prompts = [items[0].prompt]
    base = steering.generate(s, prompts, None, max_new_tokens=4)
    us, _ = steering.units(dirs, [1], [0.0, 8.0], position="all")
    assert steering.generate(s, prompts, us[0], max_new_tokens=4) == base
    assert steering.generate(s, prompts, us[1], max_new_tokens=4) != base
    assert len(steering.multi_layer(dirs, [0, 1], 2.0).edits) == 2


def test_concept_items_ignore_a_tokenizers_bos(tok):
    """Gemma's tokenizer prepends <bos>: the sentiment words must still count as single tokens."""
    from types import SimpleNamespace

    class BosTokenizer:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [999] * add_special_tokens + tok(text, add_special_tokens=False)["input_ids"]}

    items = steering.concept_items(SimpleNamespace(tokenizer=BosTokenizer(), name="bos-model"))
    assert items and {it.answer_id for it in items}.isdisjoint({999})
    with pytest.raises(ValueError, match="single token"):
        steering.concept_items(SimpleNamespace(tokenizer=lambda t, add_special_tokens=True: {"input_ids": [1, 2]},
                                               name="x"))
