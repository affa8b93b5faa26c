"""Cross-model patching: activations of model A written into model B of the same architecture.

B's engine `Batch` runs the prompts and A's cached clean pass stands in as its "clean" run, so `Op.patch("clean")`
units write A's values into B; recovery measures how far B moves to A's logit difference (`cross_patch`). CMAP
(Prakash et al. 2024) uses it between a model and a real fine-tune (`finetuned`: a LoRA trained by
`atlas_core.studies.adapters` on the family, merged): `cmap` patches every single write and the cumulative blocks
0..k in both directions, `cross_localize` chooses the write that carries the change on half the prompts and tests
it on the other half. `perturbed` (a noised copy) serves chapter 04's steering transfer."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ... import tasks
from ...engine.batch import Batch
from ...engine.interventions import Op, Site, Unit, exists
from ...evidence import metrics
from ...evidence.stats import bootstrap_ci, sign_flip_p
from ...model.subject import Subject
from ...tasks.baselines import last_logits as prompt_logits
from .. import adapters
from .localize import halves, rows_at
from .recovery import excess_p, gap_ok, recovery_ci, recovery_of
from .sites import cumulative

FT = {"steps": 24, "lr": 2e-3, "batch": 8, "r": 8}  # a small LoRA: seconds on a tiny model, under a minute on SmolLM2
DIRECTIONS = ("tuned→base", "base→tuned")  # whose values are written into whom


def perturbed(subject: Subject, sigma: float = 0.05, seed: int = 0, name: str | None = None) -> Subject:
    """A copy of `subject` whose decoder-layer weights carry seeded Gaussian noise of `sigma` × each tensor's std
    (embeddings, final norm and unembedding untouched, as with a LoRA adapter on attention/MLP)."""
    model = copy.deepcopy(subject.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.get_submodule(subject.arch.paths.layers).parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * p.float().std().to(p) * sigma)
    return subject.derive(model, name or f"{subject.name}+noise{sigma:g}s{seed}",
                          f"decoder weights + N(0, ({sigma:g}·std)^2), seed {seed}")


def cross_patch(dst: Subject, src: Subject, items: Sequence, units: Sequence[Unit],
                max_tokens: int = 8192) -> pd.DataFrame:
    """Write `src` activations into `dst` (same architecture) for each denoising unit; per-prompt rows with
    recovery = (LD_patched − LD_dst) / (LD_src − LD_dst) and kl = KL(src ‖ patched dst)."""
    if (src.arch.d_model, src.arch.n_layers) != (dst.arch.d_model, dst.arch.n_layers):
        raise ValueError(f"cross-model patching needs the same shape: {src.name} (d_model={src.arch.d_model}, "
                         f"{src.arch.n_layers} layers) vs {dst.name} (d_model={dst.arch.d_model}, "
                         f"{dst.arch.n_layers} layers)")
    if any(e.op.kind != "patch" or e.op.source != "clean" for u in units for e in u.edits):
        raise ValueError("cross-model units must be denoising patches (Op.patch('clean')): the source model is the "
                         "'clean' run")
    frames = []
    for fam, its in tasks.by_family(items).items():
        prompts = [it.prompt for it in its]
        b = Batch(dst, prompts, prompts, [it.answer_id for it in its], [it.distractor_id for it in its])
        a = Batch.of_items(src, its, corrupt=False)
        b.borrow("clean", a, [e.site for u in units for e in u.edits])
        ref = a.logits("clean")
        ld_src = metrics.next_token(ref, ref, b.answer_ids, b.distractor_ids)["logit_diff"]
        ld_dst = metrics.next_token(b.logits("corrupt"), ref, b.answer_ids, b.distractor_ids)["logit_diff"]
        for u, lg in zip(units, b.run(list(units), max_tokens=max_tokens)):
            m = metrics.next_token(lg, ref, b.answer_ids, b.distractor_ids)
            frames.append(pd.DataFrame({**u.describe(), "family": fam, "item_id": [it.id for it in its], "kl": m["kl"],
                                        "logit_diff": m["logit_diff"], "ld_clean": ld_src, "ld_corrupt": ld_dst}))
    df = pd.concat(frames, ignore_index=True)
    df["recovery"] = metrics.recovery(df["logit_diff"].to_numpy(), df["ld_clean"].to_numpy(), df["ld_corrupt"].to_numpy())
    return df


# ---------------------------------------------------------------------------------- a real fine-tune and CMAP
def finetune_data(family: str, exclude: Iterable[str] = (), bucket: str = "short") -> list[dict]:
    """`finetuned`'s default training data: the family's synthetic suite items whose ids are not in `exclude`
    (the prompts patching measures on), each a (prompt, answer) example: a next-token fine-tune on the family."""
    skip = {str(i) for i in exclude}
    return [{"prompt": it.prompt, "completion": it.answer}
            for it in tasks.load_items(family, "synthetic", bucket) if it.id not in skip]


def finetuned(subject: Subject, family: str, exclude: Iterable[str] = (), *, examples: Sequence[dict] | None = None,
              layers: Sequence[int] | None = None, steps: int = FT["steps"], lr: float = FT["lr"],
              batch: int = FT["batch"], r: int = FT["r"], seed: int = 0) -> Subject:
    """A real fine-tune of `subject` on a family: a LoRA on every linear module (of `layers`, default all) trained by
    `adapters.train` on `examples` (default `finetune_data(family, exclude)`), cached in the adapters' cache (a rerun
    trains nothing), merged by `adapters.adapted_subject` into an ordinary Subject. `meta["trained_on"]` says on what;
    `tuned_effect` measures how far it moved."""
    data = list(examples) if examples is not None else finetune_data(family, exclude)
    if not data:
        raise ValueError(f"no training examples for {family}: every suite item is excluded")
    if layers is None:
        t = adapters.target(None, family, subject.arch, subject.arch.n_layers, "all-linear", r=r)
    else:
        t = adapters.Target("layers", tuple(sorted(layers)), adapters.ALL_LINEAR, r, 2.0 * r)
    ad = adapters.train(subject, family, data, t, adapters.TrainConfig(steps=steps, lr=lr, batch=batch, seed=seed))
    tuned = adapters.adapted_subject(subject, ad)
    where = "every layer" if t.layers is None else f"layer{'s' * (len(t.layers) > 1)} {', '.join(map(str, t.layers))}"
    src = "given examples" if examples is not None else f"{family} suite items (synthetic, short) not patched, prompt → answer"
    tuned.name = f"{subject.name}+ft:{family}"
    tuned.meta |= {"trained_on": f"{len(data)} {src}; LoRA r={r} on {'+'.join(t.modules)} at {where}, {steps} steps, "
                                 f"lr {lr:g}, batch {batch}, seed {seed}", "train_loss": ad.final_loss,
                   "first_loss": ad.losses[0] if ad.losses else float("nan"), "cached": ad.cached}
    return tuned


@torch.inference_mode()
def tuned_effect(base: Subject, tuned: Subject, items: Sequence) -> dict:
    """How `tuned` differs from `base` on the items' prompts: mean logit difference of each, the per-prompt change
    (95% CI, two-sided exact sign-flip p) and mean KL(base ‖ tuned) of the next token."""
    prompts = [it.prompt for it in items]
    a, d = torch.tensor([it.answer_id for it in items]), torch.tensor([it.distractor_id for it in items])
    lb, lt = prompt_logits(base, prompts), prompt_logits(tuned, prompts)
    mb, mt = metrics.next_token(lb, lb, a, d), metrics.next_token(lt, lb, a, d)
    change = mt["logit_diff"] - mb["logit_diff"]
    est, lo, hi = bootstrap_ci(change)
    return {"n": len(items), "ld_base": float(mb["logit_diff"].mean()), "ld_tuned": float(mt["logit_diff"].mean()),
            "ld_change": est, "ld_change_lo": lo, "ld_change_hi": hi, "p": sign_flip_p(change, "two-sided"),
            "kl": float(mt["kl"].mean())}


def oriented(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of one direction with the logit differences negated when the source's mean is below the destination's:
    recovery keeps its value (1 = at the source) and `gap_ok` then asks that the models clearly differ."""
    if not len(df) or (df["ld_clean"] - df["ld_corrupt"]).mean() >= 0:
        return df
    return df.assign(logit_diff=-df["logit_diff"], ld_clean=-df["ld_clean"], ld_corrupt=-df["ld_corrupt"])


def cmap(base: Subject, tuned: Subject, items: Sequence, components: Sequence[str] = ("block", "attn", "mlp"),
         layers: Sequence[int] | None = None, directions: Sequence[str] = DIRECTIONS, with_cumulative: bool = True,
         max_tokens: int = 8192) -> pd.DataFrame:
    """Cross-model activation patching (CMAP, Prakash et al. 2024) between a model and its fine-tune, on the items'
    clean prompts: in each direction ("tuned→base": the fine-tune's value written into the base, does this write
    carry the change; "base→tuned": the base's written into the fine-tune, does it undo it) every single write
    (kind "single": each component at each layer, all positions) and, with `with_cumulative`, the blocks 0..k
    (kind "cumulative", layer = k, the unit's `last_layer`; with shared embeddings this equals patching the residual
    after layer k).

    Rows as `cross_patch` (ld_clean = the source's LD, ld_corrupt = the destination's) plus direction and kind;
    `recovery` is per prompt (no gap threshold), oriented so that 1 = the destination reaches the source whichever
    is higher."""
    n = base.arch.n_layers
    layers = list(range(n)) if layers is None else sorted(layers)
    single = [Unit.of(Site(c, layer), Op.patch("clean")) for c in components for layer in layers
              if c in ("resid", "block") or exists(base.arch, c, layer)]
    cum = [u for u in cumulative("block", n) if len(u.edits) - 1 in layers] if with_cumulative else []
    units = list(dict.fromkeys(single + cum))
    skeys, ckeys = {u.key for u in single}, {u.key for u in cum}
    pair = {"tuned→base": (tuned, base), "base→tuned": (base, tuned)}
    frames = []
    for direction in directions:
        src, dst = pair[direction]
        df = cross_patch(dst, src, items, units, max_tokens).assign(direction=direction)
        c = df[df["unit"].isin(ckeys)]
        frames += [df[df["unit"].isin(skeys)].assign(kind="single"), c.assign(kind="cumulative", layer=c["last_layer"])]
    out = pd.concat(frames, ignore_index=True)
    o = pd.concat([oriented(g) for _, g in out.groupby("direction", sort=False)]).loc[out.index]
    out["recovery"] = metrics.recovery(o["logit_diff"].to_numpy(), o["ld_clean"].to_numpy(), o["ld_corrupt"].to_numpy(),
                                       min_gap=-np.inf)
    return out


def cross_summary(cross: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """One row per direction × kind × component × layer: recovery toward the source (ratio of means, bootstrap CI;
    NaN when the two models do not clearly differ, `gap_ok`), mean KL(source ‖ patched destination), prompts."""
    rows = []
    for direction, d in cross.groupby("direction", sort=False):
        d = oriented(d)
        for (kind, comp, layer), g in d.groupby(["kind", "component", "layer"]):
            est, lo, hi = recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"], n_boot=n_boot)
            rows.append({"direction": direction, "kind": kind, "component": comp, "layer": int(layer), "recovery": est,
                         "recovery_lo": lo, "recovery_hi": hi, "kl": g["kl"].mean(), "n": g["item_id"].nunique()})
    return pd.DataFrame(rows, columns=["direction", "kind", "component", "layer", "recovery", "recovery_lo",
                                       "recovery_hi", "kl", "n"])


def cross_localize(cross: pd.DataFrame, seed: int = 0) -> dict:
    """Which single write carries the fine-tune's change: the site whose "tuned→base" patch recovers most on the
    selection half of the prompts, tested on the other half (exact sign-flip test of recovery > 0), with the
    "base→tuned" patch of the same site (does writing the base's value into the fine-tune undo it) as the second
    method. `change` = mean LD_tuned − LD_base; `testable` is False when it is not clearly non-zero (`gap_ok`)."""
    raw = cross[(cross["direction"] == DIRECTIONS[0]) & (cross["kind"] == "single")]
    fwd, back = oriented(raw), oriented(cross[(cross["direction"] == DIRECTIONS[1]) & (cross["kind"] == "single")])
    lds = raw.groupby("item_id")[["ld_clean", "ld_corrupt"]].first()
    change = lds["ld_clean"] - lds["ld_corrupt"]  # LD_tuned − LD_base per prompt
    out = {"change": float(change.mean()) if len(change) else np.nan, "n_prompts": len(change),
           "testable": gap_ok(-change if change.mean() < 0 else change)}
    if not out["testable"]:
        return out
    sel, test = halves(fwd["item_id"], seed)
    sites = {k: recovery_of(rows_at(g, sel))[0] for k, g in fwd.groupby(["component", "layer"])}
    sites = {k: v for k, v in sites.items() if np.isfinite(v)}
    out |= {"n_candidates": len(sites), "n_select": len(sel), "n_test": len(test)}
    if not sites:
        return out | {"component": None, "p": np.nan}
    comp, layer = max(sites, key=sites.get)
    den, rev = rows_at(fwd, test, component=comp, layer=layer), rows_at(back, test, component=comp, layer=layer)
    est, lo, hi = recovery_of(den)
    return out | {"component": comp, "layer": int(layer), "head": -1, "select_recovery": sites[(comp, layer)],
                  "recovery": est, "recovery_lo": lo, "recovery_hi": hi, "p": excess_p(den, 0.0),
                  "back_recovery": recovery_of(rev)[0] if len(rev) else np.nan,
                  "back_p": excess_p(rev, 0.0) if len(rev) else np.nan}
