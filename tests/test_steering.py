"""Steering through the sweep engine: α = 0 is clean, controls, shuffled labels, selectivity, transfer, generation;
held-out splits disjoint in templates and texts, best-of-k selected apart, claims derived from evidence."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_items, tiny_subject

from atlas_core.engine.batch import Batch
from atlas_core.engine.interventions import Op, Site, Unit
from atlas_core.engine.sweep import Cache, sweep
from atlas_core.evidence import metrics, stats
from atlas_core.studies import steering
from atlas_core.tasks import neutral


@pytest.fixture(scope="module")
def setup(tok, tmp_path_factory):
    s = tiny_subject("llama", tok)
    items = make_items(tok, 8)
    dirs = steering.fit(s, [(it.corrupt, it.prompt) for it in items], "fact", n_random=10, n_shuffled=3, seed=0)
    return s, items, dirs, Cache(tmp_path_factory.mktemp("c") / "c.sqlite")


def test_alpha_zero_equals_clean_and_grading(setup):
    s, items, dirs, cache = setup
    us = steering.units(dirs, [1], [0.0, 1.0, -1.0], kinds=("real", "random", "shuffled"))
    df = steering.sweep_units(s, items, us, 1, cache=cache)
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
    assert est == pytest.approx(0.5 - 0.2) and lo == pytest.approx(est) and hi == pytest.approx(est)
    assert steering.normalized(np.array([1.0]), np.array([0.0])) != steering.normalized(np.array([1.0]), np.array([0.0]))


def test_selectivity_does_not_explode_and_is_undefined_without_a_gap():
    """A near-zero off-target effect used to be floored at 1e-3 and inflate the ratio up to 1000x; a gap whose CI
    includes 0 made `normalized` arbitrary. Now: a bounded difference, and NaN ("undefined") where a gap is not
    measurably non-zero."""
    rng = np.random.default_rng(0)
    t = (np.full(8, 2.0) + rng.normal(0, 0.1, 8), np.full(8, 4.0) + rng.normal(0, 0.1, 8))
    tiny_off = {"a": (np.full(8, 1e-5), np.full(8, 1.0) + rng.normal(0, 0.1, 8))}
    est, lo, hi = steering.selectivity(t, tiny_off, n_boot=200)
    assert est == pytest.approx(steering.normalized(*t) - 1e-5, abs=1e-3) and est <= steering.normalized(*t) + 1e-9
    assert lo <= est <= hi and hi < 1.0  # never beyond the target effect's own scale
    no_gap = (np.ones(8), np.array([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5]))  # mean 0: CI includes 0
    assert np.isnan(steering.normalized(*no_gap))
    assert all(np.isnan(steering.selectivity(t, {"z": no_gap}, n_boot=20)))  # no defined off-target family
    assert all(np.isnan(steering.selectivity(no_gap, tiny_off, n_boot=20)))  # undefined target
    both = steering.selectivity(t, {**tiny_off, "z": no_gap}, n_boot=50)
    assert both[0] == pytest.approx(est)  # the undefined family is left out, not floored


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
    us = steering.units(dirs, [1], [0.0, 8.0], position="all")
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


# ---------------------------------------------------------------------------------- held-out, selection, claims
@pytest.fixture(scope="module")
def study_run(tok):
    """The chapter's pipeline on a random-init tiny model: study, summary, knockout, bucket items and claims."""
    s = tiny_subject("llama", tok)
    st = steering.study(s, ["ioi", "antonyms"], ["sentiment"], n=4, n_fit=8, layers=[0, 2], n_random=4, n_shuffled=3,
                        seed=42)
    sm = steering.summary(st, s.arch.n_layers)
    ko, _ = steering.knockout(s, st, alpha=0.4, seed=42, n_boot=50)
    buckets = {f"{f} {b}": (f, steering.bucket_items(s, st, f, b, 4, 43)) for f in ("ioi", "antonyms")
               for b in ("short", "medium")}
    claims = steering.steering_claims(sm, ko, model=s.name, profile="test")
    return s, st, sm, ko, buckets, claims


def _words(texts):
    return {w.lower() for t in texts for w in re.findall(r"\w+", t)}


def test_template_masks_fillers_only():
    ioi = ["When Mary and John went to the park, John gave a ball to", "When Kate and Tom went to the park, Kate gave a ball to"]
    assert steering.template(ioi[0]) == steering.template(ioi[1])
    assert steering.template(ioi[0]) != steering.template("Then, Mary and John had a long argument. Afterwards John said to")
    seq = "rocket harbor shoe blanket rocket harbor"  # nothing but fillers: its own template
    assert steering.template(seq) == seq
    filler = "The mayor gave a short speech and then cut the ribbon."  # a lexicon filler paragraph is dropped
    assert steering.template(f"{filler}\n\n{ioi[0]}") == steering.template(ioi[0])
    few = ["left: right\nup: down\nsafe:", "win: lose\nhot: cold\nbig: small\nfast:"]  # demos collapse
    assert steering.template(few[0]) == steering.template(few[1])


def test_every_study_holds_out_templates_texts_and_probe_words(study_run):
    """Fit / select / eval of every study chapter 04 runs (task-family steering, concept steering, knockout and
    off-target runs across targets, length buckets, transfer on the eval items) share no template and no text,
    and a concept's probe words never occur in its fit sentences."""
    _, st, _, _, buckets, _ = study_run
    assert steering.audit(st, buckets) == []
    for t, sp in st.splits.items():
        parts = {"fit": [x for p in sp.fit for x in p], "select": [x for it in sp.select for x in (it.prompt, it.corrupt)],
                 "eval": [x for it in sp.eval for x in (it.prompt, it.corrupt)]}
        assert all(parts.values()), t
        for a, b in (("fit", "select"), ("fit", "eval"), ("select", "eval")):
            assert not set(parts[a]) & set(parts[b]), (t, a, b)
            assert not {steering.template(x) for x in parts[a]} & {steering.template(x) for x in parts[b]}, (t, a, b)
        if st.sign[t] == -1:  # concept: the answer words it is graded by are absent from the fit sentences
            probe = {w.strip().lower() for it in sp.eval + sp.select for w in (it.answer, it.distractor)}
            assert probe and not probe & _words(parts["fit"]), t
            assert probe <= set(sp.probe_words) and not set(sp.probe_words) & _words(parts["fit"])
    fits = [x for sp in st.splits.values() for p in sp.fit for x in p]  # knockout / off-target: any fit vs any eval
    evals = [it.prompt for sp in st.splits.values() for it in sp.eval]
    assert not {steering.template(x) for x in fits} & {steering.template(x) for x in evals}
    for name, (f, its) in buckets.items():
        sp = st.splits[f]
        held = {steering.template(x) for p in sp.fit for x in p} | {steering.template(it.prompt) for it in sp.select}
        assert its and not {steering.template(it.prompt) for it in its} & held, name
    leaky = steering.Split("x", [("The food at that place was great.", "The food at that place was bad.")],
                           st.splits["sentiment"].select, st.splits["sentiment"].select, ("great", "bad"))
    assert len(leaky.leaks()) >= 3  # shared select/eval templates and texts, and probe words in the fit texts


def _study(screen: pd.DataFrame, graded: pd.DataFrame, testable: bool = True) -> steering.Study:
    sp = steering.Split("ioi", [("a", "b")], [], [])
    solved = pd.DataFrame([{"family": "ioi", "n_items": 16, "n_flipped": 16 if testable else 2, "flip_rate": 1.0,
                            "flip_lo": 0.8 if testable else 0.01, "flip_hi": 1.0, "testable": testable}])
    return steering.Study({}, {"ioi": 1}, {"ioi": sp}, screen, graded, steering.best_layers(screen), pd.DataFrame(), solved)


def test_best_of_many_is_chosen_on_select_and_graded_on_eval():
    """The sign and layer come from the selection screen, not from the held-out grades; the claim says how many
    candidates it was chosen from and carries n_candidates and selection='held-out'."""
    screen = pd.DataFrame({"family": "ioi", "layer": [0, 0, 1, 1], "alpha": [-0.4, 0.4, -0.4, 0.4],
                           "effect": [-0.1, 0.2, -0.3, 2.0]})  # selection prompts favour +α at layer 1
    ctl = {"control": "random #0", "n_controls": 13, "n_random": 10, "n_shuffled": 3, "kl": 0.1, "n": 8, "effect_lo": 0,
           "effect_hi": 0}
    graded = pd.DataFrame([  # held-out: -α at layer 1 looks far better (the old code picked the sign by this z)
        {"family": "ioi", "layer": 1, "alpha": 0.4, "effect": 0.5, "control_effect": 0.1, "p_control": 0.02, "z_random": 2.0, **ctl},
        {"family": "ioi", "layer": 1, "alpha": -0.4, "effect": -3.0, "control_effect": -0.1, "p_control": 0.004,
         "z_random": 9.0, **ctl}])
    sm = steering.summary(_study(screen, graded), n_layers=2)
    assert (sm["sign"].item(), sm["layer"].item(), sm["alpha"].item(), sm["n_candidates"].item()) == (1, 1, 0.4, 4)
    (c,) = steering.steering_claims(sm, model="m", profile="p")
    assert c.evidence["n_candidates"] == 4 and c.evidence["selection"] == "held-out"
    assert "out of 4 candidates" in c.statement and "best of 4, tested on held-out prompts" in " ".join(c.reasons)


def _summary(effect: float, p: float, control: float = 0.1, sign: int = 1, family: str = "ioi") -> dict:
    return {"family": family, "kind": "family", "layer": 3, "depth": 0.5, "sign": sign, "alpha": 0.4 * sign,
            "n_candidates": 10, "effect": effect, "effect_lo": effect - 0.2, "effect_hi": effect + 0.2,
            "control": "random #2", "control_effect": control, "n_controls": 13, "p_control": p, "n_random": 10,
            "n_shuffled": 3, "kl": 0.1, "n": 8, "testable": True, "untestable_why": "", "held_out": True}


def _knockout(lo: float, hi: float, target: str = "ioi") -> dict:
    return {"target": target, "layer": 3, "alpha": 0.4, "target_effect": 0.6, "off_target_effect": 0.1, "n_off": 2,
            "off_target_kl": 0.01, "target_kl": 0.2, "selectivity": (lo + hi) / 2, "selectivity_lo": lo,
            "selectivity_hi": hi, "n": 8, "n_candidates": 5, "testable": True, "untestable_why": "", "held_out": True}


def test_claims_follow_the_evidence():
    """The same pipeline fed opposite evidence: the statement flips and the confidence drops."""
    rank = {"none": 0, "low": 1, "medium": 2, "high": 3}
    good = steering.steering_claims(pd.DataFrame([_summary(1.5, 0.004), _summary(1.2, 0.01, family="antonyms")]),
                                    pd.DataFrame([_knockout(0.2, 0.5), _knockout(0.1, 0.4, "antonyms")]),
                                    model="m", profile="p")
    bad = steering.steering_claims(pd.DataFrame([_summary(0.05, 0.6), _summary(1.2, 0.01, family="antonyms")]),
                                   pd.DataFrame([_knockout(-0.3, 0.2), _knockout(0.1, 0.4, "antonyms")]),
                                   model="m", profile="p")
    assert "toward the corrupt answer" in good[0].statement and " beyond the strongest" in good[0].statement
    assert "no more than the strongest" in bad[0].statement
    assert rank[bad[0].confidence] < rank[good[0].confidence]
    assert ": selective" in good[2].statement and "not distinguishable from non-selective" in bad[2].statement
    assert rank[bad[2].confidence] < rank[good[2].confidence]
    reversed_ = steering.steering_claims(pd.DataFrame([_summary(-1.5, 1.0), _summary(1.2, 0.01, family="antonyms")]),
                                         model="m", profile="p")
    assert "away from the corrupt answer" in reversed_[0].statement
    assert rank[reversed_[0].confidence] < rank[good[0].confidence]
    assert good[0].evidence["families_agreeing"] == 2 and bad[0].evidence["families_agreeing"] == 1
    untestable = steering.steering_claims(pd.DataFrame([{**_summary(1.5, 0.004), "testable": False,
                                                         "untestable_why": "flipped items: ioi 2/16"}]),
                                          model="m", profile="p")
    assert untestable[0].confidence == "none" and "not testable here" in untestable[0].statement


def test_few_prompts_get_an_exact_sign_flip_p_that_cannot_pass():
    """With fewer than ~8 prompts the p-value is an exact sign-flip p: 4 prompts can never reach 0.05, however
    large the effect; 8 can. The empirical p against 3 shuffled draws (never below 0.25) grades nothing."""
    def rows(n):
        out = [{"family": "ioi", "item_id": f"i{i}", "layer": 0, "alpha": 0.4, "kind": "real", "idx": 0, "effect": 10.0 + i,
                "kl": 0.0} for i in range(n)]
        out += [{"family": "ioi", "item_id": f"i{i}", "layer": 0, "alpha": 0.4, "kind": k, "idx": j,
                 "effect": 0.1 * ((i + j) % 3 - 1), "kl": 0.0} for i in range(n) for k, m in (("random", 10), ("shuffled", 3))
                for j in range(m)]
        return pd.DataFrame(out)

    g4, g8 = steering.grade(rows(4)).iloc[0], steering.grade(rows(8)).iloc[0]
    assert g4["p_control"] == pytest.approx(1 / 16) and g8["p_control"] == pytest.approx(1 / 256)
    assert g4["p_shuffled"] >= 0.25 and g4["n_shuffled"] == 3
    (c4,), (c8,) = (steering.steering_claims(pd.DataFrame([{**_summary(10.0, g["p_control"]), "n": n}]), model="m",
                                             profile="p") for g, n in ((g4, 4), (g8, 8)))
    assert c4.evidence["p_value"] > 0.05 and c4.confidence == "none" and c8.confidence == "low"


def test_unsolved_families_are_not_testable(study_run):
    """A random-init model flips no family: its family steering and knockout claims say 'not testable here'."""
    _, st, sm, ko, _, claims = study_run
    assert not st.solved["testable"].any() and set(st.solved["family"]) == {"ioi", "antonyms"}
    fam = [c for c in claims if not c.statement.startswith("Steering sentiment")]
    assert len(fam) == 4 and all("not testable here" in c.statement and c.confidence == "none" for c in fam)
    assert not sm.loc[sm["kind"] == "family", "testable"].any() and not ko["testable"].any()


def test_random_init_model_earns_no_claim_above_low(study_run):
    _, _, sm, _, _, claims = study_run
    assert len(claims) == 5 and {c.confidence for c in claims} <= {"none", "low"}
    assert (sm["n_candidates"] == 4).all() and (sm["held_out"]).all()


def test_controls_are_screened_and_each_graded_at_its_own_best_cell(study_run, tok):
    """The first n_screen_controls (2) random and shuffled-label controls are screened on the selection prompts over
    the real direction's layers at the control strength of each sign; each picks its own (layer, sign) by the real
    direction's rule, runs on the held-out prompts there, and `p_control` compares the real direction at its chosen
    cell with the strongest of them at theirs (signed effects, same |α|)."""
    s, st, sm, _, _, _ = study_run
    cs = st.control_screen
    for t in st.dirs:
        c = cs[cs["family"] == t]
        assert set(zip(c["kind"], c["idx"], strict=True)) == {("random", 0), ("random", 1), ("shuffled", 0), ("shuffled", 1)}
        assert set(c["layer"]) == {0, 2} and set(c["alpha"]) == {-0.4, 0.4} and len(c) == 16
    signed = cs.assign(sign=np.sign(cs["alpha"]).astype(int), signed=cs["effect"] * np.sign(cs["alpha"]))
    own = signed.loc[signed.groupby(["family", "kind", "idx"])["signed"].idxmax()]  # the rule, for one strength per sign
    cols = ["family", "kind", "idx", "layer", "sign"]
    pd.testing.assert_frame_equal(own[cols].sort_values(cols).reset_index(drop=True),
                                  st.control_best[cols].sort_values(cols).reset_index(drop=True), check_dtype=False)
    assert (st.control_best["n_candidates"] == 4).all()
    pp = st.per_prompt
    for r in sm.itertuples():
        cb = st.control_best[st.control_best["family"] == r.family]
        real = pp[(pp["family"] == r.family) & (pp["kind"] == "real") & (pp["layer"] == r.layer) & (pp["alpha"] == r.alpha)]
        ctl = {}
        for c in cb.itertuples():  # each screened control, on the held-out prompts, at its own cell
            x = pp[(pp["family"] == r.family) & (pp["kind"] == c.kind) & (pp["idx"] == c.idx) & (pp["layer"] == c.layer)
                   & (pp["alpha"] == c.sign * abs(r.alpha))]
            assert len(x) == len(real) == r.n
            ctl[f"{c.kind} #{c.idx} (layer {c.layer}, {'+' if c.sign > 0 else '−'}α)"] = c.sign * x.set_index("item_id")["effect"]
        k = max(ctl, key=lambda n: ctl[n].mean())
        d = (r.sign * real.set_index("item_id")["effect"] - ctl[k]).to_numpy()
        assert (r.control, r.n_controls) == (k, 4)
        assert r.p_control == pytest.approx(stats.sign_flip_p(d, "greater"))
        assert r.control_effect == pytest.approx(r.sign * ctl[k].mean())
        assert (r.n_random, r.n_shuffled) == (4, 3)  # every control at the real direction's cell: descriptive only
    cells = st.control_best.merge(sm[["family", "layer", "sign"]], on="family", suffixes=("", "_real"))
    assert ((cells["layer"] != cells["layer_real"]) | (cells["sign"] != cells["sign_real"])).any()  # not the real's cell
    with pytest.raises(ValueError, match="same strengths of both signs"):
        steering.study(s, ["ioi"], [], control_alphas=(-0.4, 0.2))


def test_the_real_direction_chooses_its_cell_where_its_controls_do(study_run):
    """Extra screened strengths are descriptive: the real direction's (layer, sign) is chosen at the control
    strengths only, by the same rule as its controls, so neither has more cells to pick from."""
    s = study_run[0]
    st = steering.study(s, ["ioi"], [], n=4, n_fit=8, layers=[0, 2], n_random=2, n_shuffled=2, n_screen_controls=1,
                        seed=42, screen_alphas=(-0.8, -0.4, 0.4, 0.8))
    assert set(st.screen["alpha"]) == {-0.8, -0.4, 0.4, 0.8}
    at_control = st.screen[st.screen["alpha"].abs() == 0.4]
    cols = ["family", "sign", "layer"]
    pd.testing.assert_frame_equal(st.best[cols].reset_index(drop=True),
                                  steering.best_layers(at_control)[cols].reset_index(drop=True))
    assert (st.best["n_candidates"] == 4).all()
    with pytest.raises(ValueError, match="must include control_alphas"):
        steering.study(s, ["ioi"], [], screen_alphas=(-0.8, 0.8))


# ---------------------------------------------------------------------------------- necessity, nulls, cost, prompting
def test_knockout_projects_the_direction_out_at_every_layer_and_position(setup, study_run):
    """Knockout is directional ablation (Arditi et al. 2024), not a negative push: the direction fit at the chosen
    layer is projected out of the residual stream after every layer, at every position, and `knockout` runs it."""
    s, items, dirs, _ = setup
    n = s.arch.n_layers
    u = steering.knockout_unit(dirs, 1, n)
    assert [e.site.layer for e in u.edits] == list(range(n))
    assert {(e.site.component, e.site.position, e.op.kind) for e in u.edits} == {("resid", "all", "project")}
    v = dirs.real[1] / dirs.real[1].norm()
    b = Batch(s, [it.prompt for it in items])
    x = torch.randn(b.B, b.T, dirs.d)
    for e in u.edits:
        torch.testing.assert_close(e.op.vector, v)
        y = b.replacement(e, x)
        assert (y @ v)[b.mask.bool()].abs().max() < 1e-5  # no component left at any real token
    s2, st, *_ = study_run
    ko, rows = steering.knockout(s2, st, seed=42, n_boot=20)
    assert (ko["mode"] == "project").all() and (ko["alpha"] == 0).all()
    best = st.best[st.best["sign"] == 1].set_index("family")["layer"]
    keys = {steering.knockout_unit(st.dirs[f], int(best[f]), s2.arch.n_layers).key for f in ko["target"]}
    assert set(rows["unit"]) == keys
    push, _ = steering.knockout(s2, st, alpha=0.4, seed=42, n_boot=20, mode="push")
    assert (push["mode"] == "push").all() and (push["alpha"] == 0.4).all()


def test_random_directions_follow_the_activation_covariance():
    """On a planted anisotropic activation set, random directions carry its covariance's spectrum shape (most of
    their mass on the high-variance axes), where isotropic ones spread 1/d on every axis."""
    d = 16
    scales = torch.tensor([8.0, 4.0, 2.0] + [0.5] * (d - 3))
    x = torch.randn(400, d, generator=torch.Generator().manual_seed(1)) * scales + 3.0  # the mean is not variance
    r = steering.random_directions(d, 3000, seed=0, acts=x)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(3000))
    m = (r ** 2).mean(0)
    assert m[0] > 0.5 and m[0] > m[1] > m[2] > m[3:].max()
    assert (steering.random_directions(d, 3000, seed=0) ** 2).mean(0)[0] < 0.1  # isotropic: about 1/16


def test_fit_random_directions_lie_in_the_fit_activations_span(setup, tok):
    s, items, _, _ = setup
    pairs = [(it.corrupt, it.prompt) for it in items]
    dirs = steering.fit(s, pairs, "fact", n_random=4, n_shuffled=2, seed=0)
    acts = torch.cat([steering.last_resid(s, [p for p, _ in pairs]), steering.last_resid(s, [q for _, q in pairs])], 1)
    for layer in (0, s.arch.n_layers - 1):
        xc = acts[layer] - acts[layer].mean(0)
        q, _ = torch.linalg.qr(xc.T.double())
        r = dirs.random[layer].double()
        assert (r - (r @ q) @ q.T).norm(dim=-1).max() < 1e-4  # inside span of the centred activations: not isotropic


def test_nll_cost_is_zero_at_alpha_zero_and_grows_with_alpha(tok):
    """On a tiny model trained for a few steps to predict some sentences (a random-init model predicts nothing, so
    a push can even lower its NLL), the NLL per token is unchanged at α = 0 and rises with |α|; batching and left
    padding do not change it."""
    s = tiny_subject("llama", tok, seed=3)
    texts = neutral.sentences(4, seed=0)
    enc = s.encode(texts)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(s.model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        s.model(**enc, labels=labels).loss.backward()
        opt.step()
    s.model.eval()
    v = torch.randn(s.arch.d_model, generator=torch.Generator().manual_seed(0))
    us = [Unit.of(Site("resid", 1, position="all"), Op.add(v / v.norm(), a)) for a in (0.0, 4.0, 16.0, 64.0)]
    x = steering.nll(s, texts, [None, *us], batch_size=4)
    assert x.shape == (5, 4) and np.isfinite(x).all() and x[0].mean() < 1.0  # the model predicts these sentences
    cost = (x[1:] - x[0]).mean(1)
    assert cost[0] == pytest.approx(0, abs=1e-5) and 0 < cost[1] < cost[2] < cost[3]
    np.testing.assert_allclose(steering.nll(s, texts, [None], batch_size=3)[0], x[0], atol=1e-4)


def test_fluency_prompting_and_scored_generations_run_on_the_study(study_run):
    """Sentiment is testable on any model (no gate): its fluency cost, prompting baselines and scored generations run
    at its graded cell (`cost_and_prompting`, as the chapter runs them); families the model does not solve get none."""
    s, st, sm, _, _, _ = study_run
    texts = neutral.sentences(12, seed=0)
    bl = steering.cost_and_prompting(s, st, sm, texts, n_nll=8, n_gen=3, alphas=[0.2, 0.4], max_new_tokens=3)
    fl, pr, gens, vs = bl.fluency, bl.prompting, bl.generations, bl.versus
    assert list(fl["family"]) == ["sentiment"] * 2 and (fl["n_sentences"] == 8).all()
    assert (fl["alpha"].abs().tolist() == [0.2, 0.4]) and (np.sign(fl["alpha"]) == sm.set_index("family").loc["sentiment", "sign"]).all()
    assert set(pr["prompt"]) == {"instruction", "one-shot"} and len(pr) == 2 * len(st.items["sentiment"])
    assert set(gens["condition"]) == {"none", "steering", "instruction", "one-shot"} and len(gens) == 12
    assert set(gens.loc[gens["condition"] == "none", "prompt"]) == set(steering.openings(texts[8:11]))
    assert list(vs["family"]) == ["sentiment"] and vs["gen_n"].item() == 3 and "nll_cost" in vs
    ioi = st.items["ioi"][:2]
    p = steering.prompted(s, st, "ioi", 1, ioi, st.splits["ioi"].select)  # +α on a family: toward the corrupt answer
    assert all(f'"{it.distractor.strip()}"' in x for it, x in zip(ioi, p["instruction"], strict=True))
    d = st.splits["ioi"].select[0]
    assert p["one-shot"][0].startswith(d.prompt + d.distractor) and p["one-shot"][0].endswith(ioi[0].prompt)
    assert steering.polarity("a wonderful, lovely day") == 2 and steering.polarity("truly dreadful") == -1


def _versus(steer: float, prompt: float, cost: float, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    sm = pd.DataFrame([_summary(steer, 0.004)])
    st = steering.Study({}, {"ioi": 1}, {}, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(
        {"family": "ioi", "item_id": [f"i{i}" for i in range(n)], "kind": "real", "layer": 3, "alpha": 0.4,
         "effect": steer + 0.1 * np.arange(n)}))
    pr = pd.DataFrame([{"family": "ioi", "item_id": f"i{i}", "prompt": k, "effect": e + 0.05 * i}
                       for i in range(n) for k, e in (("instruction", prompt), ("one-shot", prompt / 2))])
    fl = pd.DataFrame([{"family": "ioi", "layer": 3, "alpha": 0.4, "nll_base": 3.0, "nll": 3.0 + cost, "nll_cost": cost,
                        "nll_cost_lo": cost - 0.01, "nll_cost_hi": cost + 0.01, "n_sentences": 100}])
    return sm, steering.versus_prompting(st, sm, pr, fl)


def test_claims_say_whether_steering_beats_prompting_at_its_fluency_cost():
    """A better prompting baseline is stated and no claim says steering beats prompting; beating prompting counts only
    within the fluency budget; the evidence carries the comparison and the cost at the claimed strength."""
    sm, worse = _versus(1.0, 3.0, 0.02)
    (c,) = steering.steering_claims(sm, model="m", profile="p", baselines=worse)
    assert "prompting beats steering" in c.statement and "steering beats prompting" not in c.statement
    assert c.evidence["beats_prompting"] is False and c.evidence["prompt"] == "instruction"
    assert c.evidence["nll_cost"] == pytest.approx(0.02) and "+0.020 nats/token" in c.statement
    sm, better = _versus(3.0, 1.0, 0.02)
    (c,) = steering.steering_claims(sm, model="m", profile="p", baselines=better)
    assert "steering beats prompting" in c.statement and "within the 0.1 nats/token" in c.statement
    assert c.evidence["beats_prompting"] is True
    sm, costly = _versus(3.0, 1.0, 0.5)
    (c,) = steering.steering_claims(sm, model="m", profile="p", baselines=costly)
    assert "but not within the 0.1" in c.statement and c.evidence["beats_prompting"] is False
    (c,) = steering.steering_claims(sm, model="m", profile="p")
    assert "no prompting baseline or fluency cost measured" in c.statement


def test_too_few_shuffled_draws_cannot_grade_above_what_they_support():
    """With 3 shuffled-label draws the smallest empirical p is 0.25: the control criterion cannot pass, however small
    the sign-flip p against the screened controls; 20 draws can (1/21 < 0.05)."""
    rank = {"none": 0, "low": 1, "medium": 2, "high": 3}

    def claims(ns: int, ps: float):
        rows = [{**_summary(1.5, 0.004, family=f), "n_shuffled": ns, "p_shuffled": ps} for f in ("ioi", "antonyms")]
        return steering.steering_claims(pd.DataFrame(rows), model="m", profile="p")

    few, many = claims(3, 0.25), claims(20, 1 / 21)
    assert rank[few[0].confidence] <= rank["low"] and few[0].evidence["p_value"] == pytest.approx(0.25)
    assert "3 draws cannot reach p ≤ 0.05" in few[0].statement and "no more than" not in few[0].statement
    assert many[0].confidence == "medium" and many[0].evidence["p_value"] == pytest.approx(1 / 21)


# ---------------------------------------------------------------------------------- the one sweep, the shared formulas
def test_sweep_units_emits_labels_as_columns_and_labels_do_not_key_the_cache(setup):
    """`steer_unit` labels become the sweep's columns (layer and α as the study means them, also for multi-layer and
    knockout units, whose first edit says otherwise); relabelling a unit reads its numbers from the cache."""
    s, items, dirs, cache = setup
    us = steering.units(dirs, [0, 1], [0.5], kinds=("real", "random"), count=2)
    assert [tuple(dict(u.labels)[k] for k in ("kind", "idx", "layer")) for u in us] == [
        ("real", 0, 0), ("real", 0, 1), ("random", 0, 0), ("random", 0, 1), ("random", 1, 0), ("random", 1, 1)]
    df = steering.sweep_units(s, items, us + us[:2], -1, cache=cache)  # a repeated unit runs and emits once
    assert len(df) == 6 * len(items) and (df["effect"] == -df["ld_drop"]).all() and (df["sign"] == -1).all()
    got = df.groupby(["kind", "idx", "layer", "alpha", "target"]).size()
    assert got.index.tolist() == [("random", 0, 0, 0.5, "fact"), ("random", 0, 1, 0.5, "fact"), ("random", 1, 0, 0.5, "fact"),
                                  ("random", 1, 1, 0.5, "fact"), ("real", 0, 0, 0.5, "fact"), ("real", 0, 1, 0.5, "fact")]
    again = steering.sweep_units(s, items, [u.label(kind="other") for u in us], -1, cache=cache)
    assert again.attrs["computed"] == 0 and (again["kind"] == "other").all()
    np.testing.assert_array_equal(again["ld_drop"].to_numpy(), df["ld_drop"].to_numpy())
    ko = steering.sweep_units(s, items, [steering.knockout_unit(dirs, 1, s.arch.n_layers)], cache=cache)
    assert set(zip(ko["layer"], ko["alpha"], ko["kind"])) == {(1, 0.0, "real")}  # the fit layer, not the first edit's
    ml = steering.multi_layer(dirs, [0, 1], 2.0).label(width=2)
    assert dict(ml.labels) == {"target": "fact", "width": 2} and steering.distinct([ml, ml.label(width=3)])[0] is ml


def test_effects_joins_unlabelled_rows_to_their_meta():
    """`effects` (rows built elsewhere, e.g. the simulated nulls) takes layer and α from the meta table."""
    rows = pd.DataFrame({"unit": ["u1", "u1", "u2"], "family": "f", "item_id": ["a", "b", "a"], "layer": 0, "alpha": 0.0,
                         "ld_drop": [1.0, 2.0, -3.0]})
    meta = pd.DataFrame({"unit": ["u1", "u2", "u2"], "target": "f", "kind": ["real", "random", "random"], "idx": 0,
                         "layer": [3, 4, 4], "alpha": [0.4, -0.4, -0.4]})
    e = steering.effects(rows, meta, -1)
    assert e["layer"].tolist() == [3, 3, 4] and e["alpha"].tolist() == [0.4, 0.4, -0.4]
    assert e["effect"].tolist() == [-1.0, -2.0, 3.0] and (e["sign"] == -1).all()


def test_gap_removed_is_the_ratio_of_means_through_mean_recovery():
    rng = np.random.default_rng(3)
    drop, gap = rng.normal(1, 1, 9), rng.normal(2, 0.5, 9)
    assert steering.gap_removed(drop, gap) == float(np.mean(drop)) / float(np.mean(gap))  # exactly, not approximately
    clean, corrupt = rng.normal(0, 1, 9), rng.normal(0, 1, 9)
    steered = clean - drop
    assert steering.gap_removed(drop, clean - corrupt) == pytest.approx(
        1 - metrics.mean_recovery(steered, clean, corrupt, positive_gap=False))
    assert np.isnan(steering.gap_removed(np.ones(3), np.zeros(3)))
    assert steering.gap_removed(np.ones(3), -np.ones(3)) == -1.0  # a negative gap is a gap (positive_gap=False)


def test_selectivity_ci_is_the_shared_bootstrap_over_families():
    """The CI resamples prompts within each family, jointly for a family's (ld_drop, gap) pairs: the same numbers as
    a hand-written stratified bootstrap with the same generator."""
    rng = np.random.default_rng(0)
    t = (rng.normal(2, 1, 7), rng.normal(4, 0.3, 7))
    off = {"a": (rng.normal(0.3, 1, 5), rng.normal(1, 0.1, 5)), "b": (rng.normal(-0.2, 1, 6), rng.normal(2, 0.2, 6))}

    def diff(x, *o):
        return steering.gap_removed(*x) - np.mean([abs(steering.gap_removed(*y)) for y in o])

    gen = np.random.default_rng(5)
    boots = []
    for _ in range(300):
        rs = [(a[i], g[i]) for a, g in (t, *off.values()) for i in [gen.integers(0, len(a), len(a))]]
        boots.append(diff(*rs))
    est, lo, hi = steering.selectivity(t, off, n_boot=300, seed=5)
    assert est == pytest.approx(diff(t, *off.values()))
    np.testing.assert_allclose([lo, hi], np.quantile(boots, [0.025, 0.975]), rtol=1e-12)
    assert lo < est < hi


# ---------------------------------------------------------------------------------- the chapter's experiments
def test_chapter_experiments_on_the_study(study_run, tok):
    """What chapter 04 calls after the study, each one library call: best layers, the controls at the graded cells,
    the knockout matrix, multi-layer steering, length buckets, transfer."""
    s, st, sm, _, buckets, _ = study_run
    for f in st.dirs:
        assert st.best_layer(f) == st.best[(st.best["family"] == f) & (st.best["sign"] == 1)]["layer"].item()
    ctl = steering.graded_controls(st)
    assert set(ctl["kind"]) == {"random", "shuffled"} and len(ctl.merge(st.graded, on=["family", "layer", "alpha"])) == len(ctl)
    assert ctl.groupby(["family", "layer", "alpha"]).size().max() == 4 + 3  # every draw at the real direction's cell
    ko, rows = steering.knockout(s, st, seed=42, n_boot=20)
    m = steering.gap_matrix(rows)
    assert list(m.columns) == ["target", "family", "gap_removed"] and len(m) == 2 * 2
    one = rows[(rows["target"] == "ioi") & (rows["family"] == "antonyms")]
    got = m[(m["target"] == "ioi") & (m["family"] == "antonyms")]["gap_removed"].item()
    want = steering.normalized(one["ld_drop"].to_numpy(), (one["ld_clean"] - one["ld_corrupt"]).to_numpy())
    assert got == want or (np.isnan(got) and np.isnan(want))

    ml = steering.multi_layer_effects(s, st, 0.4, widths=(1, 3, 5)).reset_index()
    assert set(ml["target"]) == set(st.dirs) and (ml.groupby("target")["width"].nunique() == 3).all()
    assert (ml.groupby("target")["width"].min() == 1).all()
    assert all(r.center == st.best_layer(r.target) for r in ml.itertuples())
    one = ml[(ml["target"] == "ioi") & (ml["width"] == 1)]
    rows1 = sweep(s, st.items["ioi"], [steering.steer_unit(st.dirs["ioi"], "real", 0, st.best_layer("ioi"), 0.4)],
                  progress=False)  # a one-layer spread is plain steering at the best layer
    assert one["effect"].item() == pytest.approx(rows1["ld_drop"].mean(), abs=1e-6)

    by, sets = steering.length_buckets(s, st, ["short", "medium"], 4, 0.4, seed=42, item_seed=43)
    assert set(sets) == set(buckets) and steering.audit(st, sets) == []
    assert [(r.family, r.bucket) for r in by.itertuples()] == [("ioi", "short"), ("ioi", "medium"),
                                                                ("antonyms", "short"), ("antonyms", "medium")]
    assert by["n"].tolist() == [len(sets[f"{r.family} {r.bucket}"][1]) for r in by.itertuples()]
    assert (by["effect_lo"] <= by["effect"]).all() and (by["effect"] <= by["effect_hi"]).all()

    other = tiny_subject("llama", tok, seed=1)
    tr = steering.transfer_effects(st, "ioi", s, other, alphas=(0.2, 0.4), seed=42)
    assert tr["model"].tolist() == [s.name, s.name, other.name, other.name] and (tr["n_random"] == 4).all()
    assert (tr["layer"] == st.best_layer("ioi")).all() and tr["alpha"].tolist() == [0.2, 0.4, 0.2, 0.4]
    assert steering.transfer_note(st.dirs["ioi"], s, other) == "same width: transfer possible"
    assert "d_model=32" in steering.transfer_note(st.dirs["ioi"], s, tiny_subject("llama", tok, d=32))


def test_openings_keep_half_of_each_sentence_but_at_least_three_words():
    assert steering.openings(["one two three four five six seven eight", "a b c d"]) == ["one two three four", "a b c"]
