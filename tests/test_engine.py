"""The engine against raw PyTorch hooks, nnsight, planted structure, packing, resume and determinism."""

from __future__ import annotations

import pytest
import torch
from conftest import make_items, tiny_subject

from atlas_core import tiny
from atlas_core.engine import Batch, position_ids, run_nnsight
from atlas_core.interventions import Op, Site, Unit, head_sweep, layer_sweep
from atlas_core.subject import _finish
from atlas_core.sweep import Cache, sweep


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


@pytest.mark.embedded
def test_every_operation_matches_raw_hooks_on_embedded_model(smol, tok):
    items = make_items(tok, 6)
    clean, corrupt = [i.prompt for i in items], [i.corrupt for i in items]
    b = Batch(smol, clean, corrupt, [i.answer_id for i in items], [i.distractor_id for i in items], [i.diff_pos for i in items])
    mask = b.mask.bool()
    first = (b.mask == 0).sum(-1)
    firsts = torch.zeros_like(mask)
    firsts[torch.arange(len(items)), first] = True
    L = "model.layers"
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    hd = slice(2 * 64, 3 * 64)

    def zero_head(x):
        x[..., hd] = 0
        return x

    mlp4 = raw_capture(smol, clean, f"{L}.4.mlp")
    mean_first, mean_rest = mlp4[firsts].mean(0), mlp4[mask & ~firsts].mean(0)
    attn6 = raw_capture(smol, clean, f"{L}.6.self_attn")
    donor, donor_real = attn6[b.perm], mask[b.perm]
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
         lambda x: torch.where(firsts[..., None], mean_first, torch.where(mask[..., None], mean_rest, x)), "out"),
        (Unit.of(Site("attn", 6), Op.resample()), clean, f"{L}.6.self_attn",
         lambda x: torch.where((mask & donor_real)[..., None], donor, x), "out"),
        (Unit.of(Site("resid", 8, position="last"), Op.patch("clean")), corrupt, f"{L}.8", lambda x: set_last(x, clean_res8), "out"),
        (Unit.of(Site("resid", 12), Op.add(v, 3.0)), clean, f"{L}.12", lambda x: torch.where(mask[..., None], x + 3 * v, x), "out"),
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
    s = _finish("planted", model, tok, "planted", {})
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


def test_site_and_op_validation():
    with pytest.raises(ValueError, match="unknown component"):
        Site("mlpp", 1)
    with pytest.raises(ValueError, match="head"):
        Site("head", 1)
    with pytest.raises(ValueError, match="unknown operation"):
        Op("explode")


def test_attribution_screen_is_exact_to_first_order(tok):
    from atlas_core.screen import attribution, recall

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
