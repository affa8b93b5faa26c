"""The engine against raw PyTorch hooks, nnsight, planted structure, packing, resume and determinism."""

from __future__ import annotations

import pytest
import torch
from conftest import make_items, tiny_subject

from atlas_core.engine.batch import Batch, run_nnsight
from atlas_core.engine.interventions import Op, Site, Unit, head_sweep, layer_sweep
from atlas_core.engine.sweep import Cache, sweep
from atlas_core.engine.tracing import position_ids
from atlas_core.model import tiny
from atlas_core.model.subject import wrap


# -- an independent reference: the full HF forward with one raw PyTorch hook ----------------------
def raw_logits(s, prompts, module: str, fn, kind: str = "out"):
    """kind: 'out' replaces a module's output, 'pre' its first input, 'block' a layer's output-input delta."""
    mod = s.model.get_submodule(module)
    if kind == "pre":
        h = mod.register_forward_pre_hook(lambda m, a: (fn(a[0].clone()), *a[1:]))
    elif kind == "block":
        def hook(m, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            return x + fn(out - x)
        h = mod.register_forward_hook(hook, with_kwargs=True)
    else:
        def hook(m, a, out):
            if isinstance(out, tuple):
                return (fn(out[0].clone()), *out[1:])
            return fn(out.clone())
        h = mod.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            enc = s.encode(prompts)
            return s.model(**enc, position_ids=position_ids(enc["attention_mask"]), logits_to_keep=1,
                           use_cache=False).logits[:, -1].float()
    finally:
        h.remove()


def raw_capture(s, prompts, module: str, pre: bool = False):
    got = []
    mod = s.model.get_submodule(module)
    h = (mod.register_forward_pre_hook(lambda m, a: got.append(a[0])) if pre
         else mod.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o)))
    enc = s.encode(prompts)
    with torch.inference_mode():
        s.model(**enc, position_ids=position_ids(enc["attention_mask"]), use_cache=False)
    h.remove()
    return got[0]


def _firsts(mask: torch.Tensor) -> list[int]:
    return [int((row == 0).sum()) for row in mask]


def expected_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Leave-one-out mean by plain loops (float64): row i gets the mean over the OTHER prompts, first real token apart."""
    f, out, x = _firsts(mask), x.clone(), x.double()
    for i in range(len(f)):
        others = [j for j in range(len(f)) if j != i]
        out[i, f[i]] = torch.stack([x[j, f[j]] for j in others]).mean(0)
        out[i, f[i] + 1:] = torch.cat([x[j, f[j] + 1:] for j in others]).mean(0)
    return out


def expected_resample(x: torch.Tensor, mask: torch.Tensor, donor) -> torch.Tensor:
    """First real token <- donor's first real token; others right-aligned; no counterpart <- donor's rest mean."""
    f, out, T = _firsts(mask), x.clone(), x.shape[1]
    for i, j in enumerate(donor):
        out[i, f[i]] = x[j, f[j]]
        for t in range(f[i] + 1, T):
            out[i, t] = x[j, t] if t > f[j] else x[j, f[j] + 1:].double().mean(0)
    return out


@pytest.mark.embedded
def test_every_operation_matches_raw_hooks_on_embedded_model(smol, tok):
    items = make_items(tok, 6)
    clean, corrupt = [i.prompt for i in items], [i.corrupt for i in items]
    b = Batch(smol, clean, corrupt, [i.answer_id for i in items], [i.distractor_id for i in items], [i.diff_pos for i in items])
    mask = b.mask.bool()
    L = "model.layers"
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    hd = slice(2 * 64, 3 * 64)

    def zero_head(x):
        x[..., hd] = 0
        return x

    assert len(set(mask.sum(1).tolist())) > 1  # mixed lengths: alignment under left padding is exercised
    mean4 = expected_mean(raw_capture(smol, clean, f"{L}.4.mlp"), b.mask)
    resample6 = expected_resample(raw_capture(smol, clean, f"{L}.6.self_attn"), b.mask, b.donors(0).tolist())
    clean_res8 = raw_capture(smol, clean, f"{L}.8")

    def set_last(x, src):
        x[:, -1] = src[:, -1]
        return x

    cases = [
        (Unit.of(Site("mlp", 5), Op.zero()), clean, f"{L}.5.mlp", lambda x: torch.where(mask[..., None], 0 * x, x), "out"),
        (Unit.of(Site("attn", 3), Op.zero()), clean, f"{L}.3.self_attn", lambda x: torch.where(mask[..., None], 0 * x, x), "out"),
        (Unit.of(Site("head", 7, head=2, position="all"), Op.zero()), clean, f"{L}.7.self_attn.o_proj", zero_head, "pre"),
        (Unit.of(Site("block", 10), Op.zero()), clean, f"{L}.10", lambda d: torch.where(mask[..., None], 0 * d, d), "block"),
        (Unit.of(Site("mlp", 4), Op.mean()), clean, f"{L}.4.mlp",
         lambda x: torch.where(mask[..., None], mean4, x), "out"),
        (Unit.of(Site("attn", 6), Op.resample()), clean, f"{L}.6.self_attn",
         lambda x: torch.where(mask[..., None], resample6, x), "out"),
        (Unit.of(Site("resid", 8, position="last"), Op.patch("clean")), corrupt, f"{L}.8", lambda x: set_last(x, clean_res8), "out"),
        (Unit.of(Site("resid", 12), Op.add(v, 3.0)), clean, f"{L}.12", lambda x: torch.where(mask[..., None], x + 3 * v, x), "out"),
        (Unit.of(Site("resid", 11), Op.project(v)), clean, f"{L}.11",
         lambda x: torch.where(mask[..., None], x - (x @ (v / v.norm()))[..., None] * (v / v.norm()), x), "out"),
        (Unit.of(Site("q", 4), Op.scale(0.5)), clean, f"{L}.4.self_attn.q_proj", lambda x: torch.where(mask[..., None], 0.5 * x, x), "out"),
    ]
    got = b.run([c[0] for c in cases])  # packed by start layer
    for (unit, prompts, module, fn, kind), g in zip(cases, got):
        ref = raw_logits(smol, prompts, module, fn, kind)
        assert (b.run([unit])[0] - ref).abs().max() < 1e-5, unit.key
        # packed with other units: same math, larger matmuls (fp32 summation order differs slightly)
        assert (g - ref).abs().max() < 1e-4, unit.key
    # random direction of equal norm: engine and a full nnsight trace agree; norms are preserved
    u = Unit.of(Site("mlp", 9), Op.random(3))
    assert (b.run([u])[0] - run_nnsight(b, u)).abs().max() < 2e-4
    x = b.value("clean", u.edits[0])
    r = b.replacement(u.edits[0], x)
    assert torch.allclose(r.norm(dim=-1)[mask], x.norm(dim=-1)[mask], rtol=1e-4)
    assert not torch.allclose(r[mask], x[mask])


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_engine_identity_and_nnsight_agree_on_every_family(family, tok):
    s = tiny_subject(family, tok)
    items = make_items(tok, 4)
    b = Batch(s, [i.prompt for i in items], [i.corrupt for i in items])
    with torch.inference_mode():
        singles = torch.cat([s.model(**s.encode([i.prompt]), use_cache=False).logits[:, -1] for i in items])
    assert (b.logits() - singles).abs().max() < 1e-4  # left padding changes nothing
    units = [Unit.of(Site("resid", 0), Op.scale(1.0))]  # exact identity edit from layer 0: the whole layer loop
    units += layer_sweep(["mixer", "mlp"], ["zero", "mean"], s.arch.n_layers, s.arch)
    units += head_sweep(s.arch, layers=[i for i, k in enumerate(s.arch.layer_kinds) if k == "attention"][:1])
    got = b.run(units)
    assert torch.equal(b.run(units[:1])[0], b.logits())  # same shapes: bit-identical to the model
    assert (got[0] - b.logits()).abs().max() < 1e-4
    for u, g in zip(units[1:], got[1:]):
        assert (g - run_nnsight(b, u)).abs().max() < 1e-4, (family, u.key)


def test_planted_structure_is_found_exactly(tok):
    model, _ = tiny.build("llama", vocab_size=len(tok), n_layers=6)
    tiny.plant(model, keep_blocks=[1, 4], keep_heads=[(2, 3)])
    s = wrap("planted", model, tok, "planted", {})
    items = make_items(tok, 4)
    units = layer_sweep(["block", "attn", "mlp"], ["zero"], 6, s.arch) + head_sweep(s.arch)
    df = sweep(s, items, units, cache=Cache(":memory:"), progress=False)
    eff = df.groupby(["component", "layer", "head"])["kl"].max()
    blocks = eff.loc["block"].droplevel("head")
    assert set(blocks[blocks > 0].index) == {1, 2, 4}  # layer 2 writes through its planted head only
    assert (blocks[[0, 3, 5]] == 0).all()
    heads = eff.loc["head"]
    assert set(heads[heads > 0].index) == {(1, h) for h in range(4)} | {(4, h) for h in range(4)} | {(2, 3)}
    assert (eff.loc["mlp"].droplevel("head")[[0, 2, 3, 5]] == 0).all()


def test_sweep_resumes_without_recomputing(tok, tmp_path, monkeypatch):
    s = tiny_subject("llama", tok)
    items = make_items(tok, 8)
    units = layer_sweep(["block", "mlp"], ["zero", "resample"], s.arch.n_layers, s.arch)
    full = sweep(s, items, units, cache=Cache(tmp_path / "a.sqlite"), batch_size=4, progress=False)
    calls = {"n": 0}
    orig = Batch.run

    def dying(self, group, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, group, **kw)

    monkeypatch.setattr(Batch, "run", dying)
    cache = Cache(tmp_path / "b.sqlite")
    with pytest.raises(KeyboardInterrupt):
        sweep(s, items, units, cache=cache, batch_size=4, progress=False)
    monkeypatch.setattr(Batch, "run", orig)
    done = len(cache) - 1  # minus the batch baseline record
    assert 0 < done < 2 * len(units)
    again = sweep(s, items, units, cache=cache, batch_size=4, progress=False)
    assert again.attrs["cached"] == done and again.attrs["computed"] == 2 * len(units) - done
    cols = ["kl", "logit_diff", "p_answer", "top5_overlap"]
    assert again[cols].equals(full[cols])


def test_clean_corrupt_length_mismatch_and_nan_errors(tok):
    s = tiny_subject("llama", tok)
    with pytest.raises(ValueError, match="differ in token length"):
        Batch(s, ["The capital of France is"], ["The capital of the United Kingdom is"])
    b = Batch(s, ["The capital of France is"])
    with pytest.raises(FloatingPointError, match="NaN"):
        b.run([Unit.of(Site("mlp", 1), Op.scale(float("nan")))])


def test_projection_removes_the_direction_and_nothing_else(tok):
    s = tiny_subject("llama", tok)
    items = make_items(tok, 4)
    b = Batch(s, [i.prompt for i in items])
    v = torch.randn(s.arch.d_model, generator=torch.Generator().manual_seed(1))
    e = Unit.of(Site("resid", 1), Op.project(3 * v)).edits[0]
    x = b.value("clean", e)
    r = b.replacement(e, x)
    real = b.mask.bool()
    assert (r[real] @ (v / v.norm())).abs().max() < 1e-5  # nothing left along v
    resid = (x - r)[real]
    cos = resid @ v / (resid.norm(dim=-1) * v.norm())
    assert (cos.abs() > 0.999).all()  # what was removed lies along v only
    assert Op.project(v).key == Op.project(2 * v).key  # a direction, not a vector
    with pytest.raises(ValueError, match="non-zero"):
        Op.project(torch.zeros(4))


def test_site_and_op_validation():
    with pytest.raises(ValueError, match="unknown component"):
        Site("mlpp", 1)
    with pytest.raises(ValueError, match="head"):
        Site("head", 1)
    with pytest.raises(ValueError, match="unknown operation"):
        Op("explode")


def test_attribution_screen_is_exact_to_first_order(tok):
    from atlas_core.engine.screen import attribution, recall

    s = tiny_subject("llama", tok)
    items = make_items(tok, 4)
    units = [Unit.of(Site(c, layer), Op.scale(1.001)) for c in ("block", "attn", "mlp") for layer in range(4)]
    units += [Unit.of(Site("head", 2, head=h), Op.scale(1.001)) for h in range(4)]
    est = attribution(s, items, units).groupby("unit")["ld_change_est"].mean()
    ex = sweep(s, items, units, cache=Cache(":memory:"), progress=False)
    exact = (ex["logit_diff"] - ex["ld_clean"]).groupby(ex["unit"]).mean()[est.index]
    assert ((est - exact).abs() <= 0.02 * exact.abs() + 2e-6).all()  # tiny scaling: linear regime
    r = recall(attribution(s, items, units), ex, k=3)
    assert set(r.columns) >= {"recall_at_k", "pearson"} and r["recall_at_k"].between(0, 1).all()


# -- mean / resample semantics, degenerate batches, positions, head-ablation semantics -------------
def _prompts(tok, n: int = 6) -> list[str]:
    return [i.prompt for i in make_items(tok, n)]


def _batch(s, tok, n: int = 6, **kw) -> Batch:
    items = make_items(tok, n)
    return Batch(s, [i.prompt for i in items], [i.corrupt for i in items], [i.answer_id for i in items],
                 [i.distractor_id for i in items], [i.diff_pos for i in items], **kw)


def test_resample_aligns_donors_on_real_tokens(tok):
    s = tiny_subject("llama", tok)
    b = _batch(s, tok)
    mask = b.mask.bool()
    assert len(set(mask.sum(1).tolist())) > 1  # prompts of different lengths in one batch
    e = Unit.of(Site("mlp", 1), Op.resample(0)).edits[0]
    x = b.value("clean", e)
    r = b.replacement(e, x)
    # the donor of row i is the row whose last token row i received
    donor = [next(j for j in range(b.B) if torch.equal(r[i, -1], x[j, -1])) for i in range(b.B)]
    assert all(i != j for i, j in enumerate(donor)) and sorted(donor) == list(range(b.B))
    n = mask.sum(1).tolist()
    assert {n[i] < n[j] for i, j in enumerate(donor)} == {True, False}  # longer and shorter donors both occur
    want = expected_resample(x, b.mask, donor)
    assert torch.allclose(r[mask], want[mask], atol=1e-6)
    assert torch.equal(r[~mask], x[~mask])  # recipient padding untouched
    # through the forward: the engine equals one raw hook writing the same values
    ref = raw_logits(s, _prompts(tok), "model.layers.1.mlp", lambda y: torch.where(mask[..., None], want, y))
    assert (b.run([Unit.of(e.site, e.op)])[0] - ref).abs().max() < 1e-5


def test_resample_donors_follow_the_op_seed(tok):
    s = tiny_subject("llama", tok)
    b, b2 = _batch(s, tok), _batch(s, tok)
    site = Site("attn", 2)
    x = b.value("clean", Unit.of(site, Op.zero()).edits[0])

    def repl(batch, seed):
        return batch.replacement(Unit.of(site, Op.resample(seed)).edits[0], x)

    assert not torch.equal(repl(b, 0), repl(b, 1))  # different op seeds: different donors
    assert torch.equal(repl(b, 1), repl(b, 1)) and torch.equal(repl(b, 1), repl(b2, 1))  # same seed: same donors
    a, c = b.run([Unit.of(site, Op.resample(0)), Unit.of(site, Op.resample(1))])
    assert not torch.equal(a, c)


def test_mean_is_leave_one_out_over_the_other_prompts(tok):
    s = tiny_subject("llama", tok)
    b = _batch(s, tok, 5)
    mask = b.mask.bool()
    e = Unit.of(Site("mlp", 2), Op.mean()).edits[0]
    x = b.value("clean", e)
    r = b.replacement(e, x)
    want = expected_mean(x, b.mask)
    assert torch.allclose(r[mask], want[mask], atol=1e-6)
    assert torch.equal(r[~mask], x[~mask])
    ref = raw_logits(s, _prompts(tok, 5), "model.layers.2.mlp", lambda y: torch.where(mask[..., None], want, y))
    assert (b.run([Unit.of(e.site, e.op)])[0] - ref).abs().max() < 1e-5


def test_mean_and_resample_refuse_single_promptbatches(tok):
    s = tiny_subject("llama", tok)
    b = Batch(s, ["The capital of France is"])
    for op in (Op.mean(), Op.resample(0)):
        with pytest.raises(ValueError, match="sample >= 2 prompts per family"):
            b.run([Unit.of(Site("mlp", 1), op)])
    b.run([Unit.of(Site("mlp", 1), Op.zero())])  # other operations still work on one prompt


def test_sweep_batches_split_families_evenly():
    from types import SimpleNamespace

    from atlas_core.engine.sweep import batches

    def sizes(n, bs, fam="f"):
        return [len(c) for c in batches([SimpleNamespace(family=fam, id=i) for i in range(n)], bs)]

    assert sizes(18, 16) == [9, 9] and sizes(17, 16) == [9, 8] and sizes(33, 16) == [11, 11, 11]
    assert sizes(16, 16) == [16] and sizes(8, 4) == [4, 4] and sizes(1, 16) == [1]
    assert sizes(3, 2) == [3] and sizes(5, 1) == [3, 2]  # never a 1-prompt batch from a larger family
    items = [SimpleNamespace(family=f, id=i) for i in range(5) for f in ("b", "a")]
    got = batches(items, 4)
    assert [[it.family for it in c] for c in got] == [["a"] * 3, ["a"] * 2, ["b"] * 3, ["b"] * 2]
    assert [it.id for c in got for it in c] == [0, 1, 2, 3, 4] * 2  # order kept, nothing lost


def test_int_position_past_a_prompt_raises(tok):
    s = tiny_subject("llama", tok)
    b = _batch(s, tok, 4)
    n = int(b.mask.sum(1).min())
    assert b.positions(n - 1).sum() == b.B and b.positions(-n).sum() == b.B
    for pos in (n, n + 3, -n - 1):
        with pytest.raises(ValueError, match=f"position {pos} .*shortest prompt.*{n} tokens"):
            b.positions(pos)
    with pytest.raises(ValueError, match="shortest prompt"):
        b.run([Unit.of(Site("mlp", 1, position=n), Op.zero())])
    first, last = b.positions("first"), b.positions("last")
    assert torch.equal(b.positions(0), first) and torch.equal(b.positions(-1), last) and last[:, -1].all()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_head_ablation_is_additive_on_llama_but_not_on_gemma3(family, tok):
    """A head site zeroes the head's slice of the o_proj input. On llama the attention write IS o_proj(x), so
    this subtracts exactly the head's own term. On gemma3 the write is post_attention_layernorm(o_proj(x)):
    removing a head renormalizes the others, so the ablated write is not the full write minus the head's share."""
    s = tiny_subject(family, tok)
    b = _batch(s, tok, 3)
    mask = b.mask.bool()
    layer, head = 1, 2
    lay = s.model.get_submodule(s.arch.layer_path(layer))
    o_proj = lay.get_submodule(s.arch.paths.out_proj)
    write = lay.get_submodule(s.arch.relative_path("attn", layer))
    prefix = f"{s.arch.paths.layers}.{layer}"
    x = raw_capture(s, _prompts(tok, 3), f"{prefix}.{s.arch.paths.out_proj}", pre=True)
    full = raw_capture(s, _prompts(tok, 3), f"{prefix}.{s.arch.relative_path('attn', layer)}")
    got: list = []
    h = write.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
    try:
        b.run([Unit.of(Site("head", layer, head=head), Op.zero())])
    finally:
        h.remove()
    ablated = got[0]
    sl = s.arch.head_slice(head)
    with torch.inference_mode():
        z = o_proj(x)
        z_h = x[..., sl] @ o_proj.weight[:, sl].T  # the head's own term of the out-projection
        z_wo = o_proj(torch.where(torch.arange(x.shape[-1]) // s.arch.head_dim == head, 0, x))
        if family == "llama":
            assert torch.allclose(full[mask], z[mask], atol=1e-5)  # attn write == o_proj(x)
            assert torch.allclose(ablated[mask], (full - z_h)[mask], atol=1e-5)  # removes exactly its term
            return
        # gemma3 sandwich norm: the write is RMSNorm(o_proj(x)) * (1 + w)
        scale = torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + write.eps) * (1 + write.weight)
        share = z_h * scale  # the head's part of the full write (the heads' shares sum to it)
        assert torch.allclose(full[mask], (z * scale)[mask], atol=1e-5)
        assert torch.allclose(ablated[mask], write(z_wo)[mask], atol=1e-5)  # what it is: the others renormalized
        gap = (ablated - (full - share))[mask].abs().max()
        assert gap > 0.01 * full[mask].abs().max()  # not the removal of one additive contribution


def test_screen_claims_follow_recall_against_chance():
    import pandas as pd

    from atlas_core.engine.screen import screen_claims

    class Solved:  # an atlas that solves one family / none
        def __init__(self, fams):
            self.testable_families = fams
            self.solved = pd.DataFrame({"family": ["ioi"], "n_items": [8], "n_flipped": [8 if fams else 1]})

    rec = pd.DataFrame({"component": ["block", "mlp"], "method": ["zero", "zero"], "k": [5, 5], "n_units": [60, 60],
                        "recall_at_k": [1.0, 0.2], "chance": [5 / 60, 5 / 60], "p": [1e-7, 0.35]})
    good, bad = screen_claims(rec, Solved(["ioi"]))
    assert "finds more of" in good.statement and good.confidence == "low"  # control only: a screen is not a verdict
    assert "does not find more" in bad.statement and bad.confidence == "none"
    assert all(c.confidence == "none" and "not testable" in c.statement for c in screen_claims(rec, Solved([])))


@pytest.mark.parametrize("position", ["all", "last"])
def test_generation_edits_match_a_raw_hook_on_model_generate(position, tok):
    """engine.generate (one nnsight trace, the step applied at every forward) == HF generate with a raw hook."""
    from atlas_core.engine.batch import generate

    s = tiny_subject("llama", tok)
    prompts = [i.prompt for i in make_items(tok, 3)]
    v = torch.randn(s.arch.d_model, generator=torch.Generator().manual_seed(2))
    unit = Unit.of(Site("resid", 1, position=position), Op.add(v, 4.0))

    def hook(_m, _a, out):
        add = 4.0 * v
        return out + add if position == "all" else torch.cat([out[:, :-1], out[:, -1:] + add], 1)

    enc = s.encode(prompts)
    pad = tok.pad_token_id

    def hf(with_hook: bool) -> list[str]:
        h = s.model.get_submodule(s.arch.layer_path(1)).register_forward_hook(hook) if with_hook else None
        try:
            with torch.inference_mode():
                out = s.model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=pad)
        finally:
            if h:
                h.remove()
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    assert generate(s, prompts, None, max_new_tokens=5) == hf(False)
    steered = generate(s, prompts, unit, max_new_tokens=5)
    assert steered == hf(True) and steered != hf(False)
    with pytest.raises(ValueError, match="source run"):
        generate(s, prompts, Unit.of(Site("mlp", 0), Op.mean()))


def test_no_module_but_tracing_registers_a_hook_or_opens_a_trace():
    """One intervention layer: hooks and traces live in atlas_core/engine/tracing.py only."""
    import re
    from pathlib import Path

    import atlas_core

    pat = re.compile(r"register_forward(_pre)?_hook|register_full_backward|\.trace\(|nn\.generate\(")
    root = Path(atlas_core.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "tracing.py" and pat.search(p.read_text())]
    assert offenders == [], offenders


def test_remote_round_trip_equals_local_for_a_sweep_and_steering(tok, tmp_path, monkeypatch):
    """nnsight's remote="local" serializes each trace and runs it the way NDIF would: a chapter-02 style sweep
    and a steering unit (packed forward and generation) give the local numbers."""
    from nnsight.intervention.backends import local as nn_local

    from atlas_core.engine.batch import generate

    calls = []
    orig = nn_local.LocalSimulationBackend.__call__
    monkeypatch.setattr(nn_local.LocalSimulationBackend, "__call__", lambda self, t: calls.append(1) or orig(self, t))
    s = tiny_subject("llama", tok)
    r = tiny_subject("llama", tok)
    r.remote = "local"
    items = make_items(tok, 4)
    units = layer_sweep(["block", "attn", "mlp"], ["zero", "mean", "resample"], 2, s.arch)
    units += head_sweep(s.arch, layers=[1])[:2] + [Unit.of(Site("resid", 1, position="last"), Op.patch("clean"))]
    loc = sweep(s, items, units, cache=Cache(tmp_path / "a.sqlite"), progress=False)
    rem = sweep(r, items, units, cache=Cache(tmp_path / "b.sqlite"), progress=False)
    assert calls, "the remote path was not taken"
    assert (loc["logit_diff"] - rem["logit_diff"]).abs().max() < 1e-4 and (loc["kl"] - rem["kl"]).abs().max() < 1e-4
    v = torch.randn(s.arch.d_model, generator=torch.Generator().manual_seed(3))
    steer = Unit.of(Site("resid", 1, position="all"), Op.add(v, 4.0))
    args = ([i.prompt for i in items],)
    assert (Batch(s, *args).run([steer])[0] - Batch(r, *args).run([steer])[0]).abs().max() < 1e-4
    n = len(calls)
    assert generate(r, args[0], steer, max_new_tokens=3) == generate(s, args[0], steer, max_new_tokens=3)
    assert len(calls) > n


def test_remote_load_says_what_is_missing(monkeypatch):
    from atlas_core import load

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(ValueError, match="NDIF_API_KEY"):
        load("meta-llama/Llama-3.1-8B", remote=True)
    with pytest.raises(ValueError, match="remote must be"):
        load("tiny-llama", remote="yes")
