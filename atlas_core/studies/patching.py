"""Activation patching with the atlas vocabulary: denoising, noising, span and cross-model patching, and its claims.

Denoising runs the corrupt prompt with one site's clean value written in (`Op.patch("clean")`); noising
runs the clean prompt with the corrupt value (`Op.patch("corrupt")`). Both go through `sweep`. The score
is the normalized recovery of the mean logit difference, a ratio of means over *flipped* prompts (clean
LD > 0 > corrupt LD, `tasks.flipped`) of families the model solves (`tasks.solved`):

    recovery = (mean LD_patched − mean LD_corrupt) / (mean LD_clean − mean LD_corrupt)

1 = the patch restores (denoising) or keeps (noising) the clean behaviour, 0 = the corrupt behaviour.
For noising we report `score = 1 − recovery`: the fraction of the behaviour the corrupt value destroys.
A cell whose mean clean − corrupt gap is not clearly positive (below `MIN_GAP` logits, or within two
standard errors of 0) has no recovery (NaN): a near-zero denominator would inflate any change.

Positions: `last` and `span`, every token where the clean and corrupt ids differ (`sweep_span` expands a
unit's `diff` edits, the first differing token only, to one edit per differing token; items are grouped by
their span). Two sites are sufficient by construction and never graded: the final layer's residual at the
last position (it *is* the logits' input) and the layer-0 input at the span (`input_patch`: it turns the
corrupt prompt into the clean one, a check that the span is complete).

Claims (`patching_claims`): a site or layer chosen out of many is chosen on one half of a family's prompts
and tested on the other half (exact sign-flip test, `excess_p`); evidence carries `n_candidates` and
`selection`, and a family the model does not solve is "not testable here".

Cross-model patching writes activations of model A into model B of the same architecture: B's engine
`Batch` runs the prompts, A's cached clean pass stands in as its "clean" run, so `Op.patch("clean")`
units write A's values into B, and recovery measures how far B moves to A's logit difference (`cross_patch`).
CMAP (Prakash et al. 2024) uses it between a model and a real fine-tune (`finetuned`: a LoRA trained by
`atlas_core.studies.lora` on the family, merged): `cmap` patches every single write and the cumulative blocks 0..k
in both directions, `cross_localize` / `cross_claim` choose the write that carries the change on half the
prompts and test it on the other half; two models that do not clearly differ (a model and itself) are
"not testable". `cross_family_why` says why two separately trained families cannot simply be patched.
`perturbed` (a noised copy) stays for chapter 04's steering transfer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .. import tasks
from ..engine.batch import Batch, last_logits
from ..engine.interventions import Edit, Op, Site, Unit, exists
from ..engine.sweep import sweep
from ..evidence import metrics
from ..evidence.claims import Claim
from ..evidence.stats import sign_flip_p
from ..model import sources
from ..model.subject import Subject

MIN_GAP = 0.5  # logits: below this mean clean − corrupt gap a recovery ratio is refused (odds change < 1.65x)
SITE = ["component", "layer", "head", "position"]
METRIC = "normalized recovery of the mean logit difference over flipped prompts (ratio of means)"


def units(arch, components: Sequence[str] = ("resid", "block", "attn", "mlp"), positions: Sequence = ("last", "diff"),
          methods: Sequence[str] = ("denoise", "noise"), layers: Sequence[int] | None = None,
          head_layers: Sequence[int] = (), head_positions: Sequence = ("last",),
          head_methods: Sequence[str] = ("denoise",)) -> list[Unit]:
    """Patching units over components × layers × positions × methods, plus heads at `head_layers`."""
    layers = range(arch.n_layers) if layers is None else layers
    ops = {"denoise": Op.patch("clean"), "noise": Op.patch("corrupt")}
    out = [Unit.of(Site(c, layer, position=p), ops[m]) for c in components for layer in layers
           if c in ("resid", "block") or exists(arch, c, layer)
           for p in positions for m in methods]
    out += [Unit.of(Site("head", layer, head=h, position=p), ops[m]) for layer in head_layers
            if arch.layer_kinds[layer] == "attention" for h in range(arch.n_heads) for p in head_positions for m in head_methods]
    return out


# ---------------------------------------------------------------------------------- prompts
def span_of(tokenizer, item) -> tuple[int, ...]:
    """Token positions (from the first token) where an item's clean and corrupt prompts differ."""
    a, b = tokenizer(item.prompt)["input_ids"], tokenizer(item.corrupt)["input_ids"]
    return tuple(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


@dataclass
class Selection:
    """The flip gate and the prompts patching may use."""

    solved: pd.DataFrame  # tasks.solved over the gate sample: one row per family
    scored: pd.DataFrame  # one row per gate item: family, item_id, ld_clean, ld_corrupt, flipped, n_diff, last_in_span
    sampled: list  # the gate sample (every family)
    items: list  # up to n flipped items per testable family: what the maps and claims use

    @property
    def testable(self) -> list[str]:
        return sorted(self.solved.loc[self.solved["testable"], "family"])


def select(subject: Subject, families: Sequence[str], n_gate: int, n: int, seed: int) -> Selection:
    """Score `n_gate` sampled prompts per family, gate each family (`tasks.solved`), keep up to `n` flipped prompts
    of each family that passes."""
    from ..tasks.baselines import scored as score_items

    sampled, scored = score_items(subject, families, n_gate, seed)
    spans = [span_of(subject.tokenizer, it) for it in sampled]
    scored = scored.assign(n_diff=[len(s) for s in spans],
                           last_in_span=[it.n_tokens - 1 in s for it, s in zip(sampled, spans)])
    solved = tasks.solved(scored)
    ok = set(scored.loc[scored["flipped"], "item_id"])
    items = [it for f in sorted(solved.loc[solved["testable"], "family"])
             for it in tasks.sample([i for i in sampled if i.family == f and i.id in ok], n, seed)]
    return Selection(solved, scored, sampled, items)


def differing_tokens(scored: pd.DataFrame) -> pd.DataFrame:
    """Per family: how many prompts differ from their corrupt prompt in 1, 2, ... tokens."""
    t = pd.crosstab(scored["family"], scored["n_diff"]).rename(columns=lambda k: f"{k} token{'s' * (k > 1)}")
    return t.assign(mean=scored.groupby("family")["n_diff"].mean().round(2),
                    last_token_differs=scored.groupby("family")["last_in_span"].sum())


# ---------------------------------------------------------------------------------- span patching
def _expand(unit: Unit, span: Sequence[int]) -> Unit:
    """`unit` with each 'diff' edit replaced by one int-position edit per differing token."""
    edits: list[Edit] = []
    for e in unit.edits:
        edits += [Edit(replace(e.site, position=p), e.op) for p in span] if e.site.position == "diff" else [e]
    return Unit(tuple(edits))


def sweep_span(subject: Subject, items: Sequence, units: Sequence[Unit], **kw) -> pd.DataFrame:
    """`sweep`, except that a 'diff' edit covers every token where clean and corrupt differ (position 'span').

    Items are grouped by their span; each group runs the units expanded to it (cached by `sweep` as usual).
    Rows gain `n_diff` (differing tokens) and `last_in_span` (the last token differs: every last-position
    residual patch is then sufficient by construction)."""
    groups: dict[tuple[int, ...], list] = {}
    for it in items:
        groups.setdefault(span_of(subject.tokenizer, it), []).append(it)
    frames, counts = [], {"computed": 0, "cached": 0}
    for sp, its in groups.items():
        exp = {u: _expand(u, sp) for u in units}
        df = sweep(subject, its, list(exp.values()), **kw)
        for k in counts:
            counts[k] += df.attrs.get(k, 0)
        desc = pd.DataFrame([{**u.describe(), "unit": u.key.replace("@diff", "@span"), "n_edits": len(x.edits),
                              "position": "span" if x != u else str(u.edits[0].site.position), "_key": x.key}
                             for u, x in exp.items()]).set_index("_key")
        key = df["unit"].copy()
        for c in desc.columns:
            df[c] = key.map(desc[c])
        last = {it.id: len(subject.tokenizer(it.prompt)["input_ids"]) - 1 in sp for it in its}
        frames.append(df.assign(n_diff=len(sp), last_in_span=df["item_id"].map(last)))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[
        "seed", "family", "item_id", *SITE, "method", "unit", "logit_diff", "ld_clean", "ld_corrupt", "kl", "n_diff", "last_in_span"])
    out.attrs.update(counts)
    return out.astype({"layer": int, "head": int})


@torch.inference_mode()
def input_patch(subject: Subject, items: Sequence) -> pd.DataFrame:
    """The clean layer-0 residual input (token embeddings) written into the corrupt run at the first differing
    token ('diff') and at every differing token ('span'). The span patch turns the corrupt prompt into the
    clean one, so it must give the clean logit difference exactly: a check of the span, never a finding."""
    rows = []
    by_fam: dict[str, list] = {}
    for it in items:
        by_fam.setdefault(it.family, []).append(it)
    for fam, its in sorted(by_fam.items()):
        b = Batch(subject, [it.prompt for it in its], [it.corrupt for it in its], [it.answer_id for it in its],
                  [it.distractor_id for it in its], [it.diff_pos for it in its])
        clean, corrupt = b.runs["clean"]["ids"], b.runs["corrupt"]["ids"]
        base = {r: metrics.next_token(b.logits(r), b.logits("clean"), b.answer_ids, b.distractor_ids)["logit_diff"]
                for r in ("clean", "corrupt")}
        for pos, sel in (("diff", b.positions("diff")), ("span", (clean != corrupt) & b.mask.bool())):
            ids = torch.where(sel, clean, corrupt)
            lg = last_logits(subject, ids, b.mask)
            m = metrics.next_token(lg, b.logits("clean"), b.answer_ids, b.distractor_ids)
            rows.append(pd.DataFrame({"family": fam, "item_id": [it.id for it in its], "position": pos,
                                      "n_diff": sel.sum(1).cpu().numpy(), "logit_diff": m["logit_diff"], "kl": m["kl"],
                                      "ld_clean": base["clean"], "ld_corrupt": base["corrupt"]}))
    return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------------------------- scores
def gap_ok(gap, min_gap: float = MIN_GAP) -> bool:
    """Is the mean clean − corrupt gap clearly positive: >= min_gap logits and > 2 standard errors?"""
    g = np.asarray(gap, float)
    g = g[np.isfinite(g)]
    if g.size == 0:
        return False
    se = g.std(ddof=1) / np.sqrt(g.size) if g.size > 1 else 0.0
    return bool(g.mean() >= min_gap and g.mean() > 2 * se)


def recovery_ci(ld, ld_clean, ld_corrupt, n_boot: int = 1000, seed: int = 0,
                min_gap: float = MIN_GAP) -> tuple[float, float, float]:
    """Normalized recovery of the means with a percentile bootstrap CI over prompts; NaN when the mean gap is
    not clearly positive (`gap_ok`)."""
    ld, c, x = (np.asarray(a, float) for a in (ld, ld_clean, ld_corrupt))
    if not gap_ok(c - x, min_gap):
        return (float("nan"),) * 3

    def rec(i):
        den = c[i].mean(-1) - x[i].mean(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, (ld[i].mean(-1) - x[i].mean(-1)) / den, np.nan)

    est = float(rec(np.arange(ld.size)))
    if ld.size < 2:
        return est, est, est
    boots = rec(np.random.default_rng(seed).integers(0, ld.size, (n_boot, ld.size)))
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return est, float(lo), float(hi)


def excess_p(g: pd.DataFrame, theta: float = 0.0, min_gap: float = MIN_GAP) -> float:
    """One-sided exact sign-flip p that a site's score exceeds `theta`, over its prompts (rows of one method).

    score > theta  <=>  mean(num_i − theta · gap_i) > 0, with num = LD − LD_corrupt (denoising) or LD_clean − LD
    (noising) and gap = LD_clean − LD_corrupt: the ratio of means tested through per-prompt terms. NaN without
    rows or a clearly positive gap."""
    if not len(g):
        return float("nan")
    t = g.groupby("item_id")[["logit_diff", "ld_clean", "ld_corrupt"]].mean()
    gap = t["ld_clean"] - t["ld_corrupt"]
    if not gap_ok(gap, min_gap):
        return float("nan")
    noise = bool((g["method"] == "noise").all())
    num = t["ld_clean"] - t["logit_diff"] if noise else t["logit_diff"] - t["ld_corrupt"]
    return sign_flip_p((num - theta * gap).to_numpy(), "greater")


def flipped_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of prompts the model flips (clean LD > 0 > corrupt LD)."""
    return df[tasks.flipped(df["ld_clean"], df["ld_corrupt"])] if len(df) else df


def summarize(df: pd.DataFrame, by: Sequence[str] = ("family", "component", "layer", "head", "position", "method"),
              n_boot: int = 1000, flipped_only: bool = True) -> pd.DataFrame:
    """One row per group: recovery with CI, score (recovery for denoising, 1 − recovery for noising), mean KL;
    over flipped prompts only unless `flipped_only` is False."""
    df = flipped_rows(df) if flipped_only else df
    rows = []
    for key, g in df.groupby(list(by)):
        est, lo, hi = recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"], n_boot=n_boot)
        r = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        noise = r.get("method") == "noise"
        r |= {"recovery": est, "recovery_lo": lo, "recovery_hi": hi, "kl": g["kl"].mean(), "n": len(g),
              "score": 1 - est if noise else est, "score_lo": 1 - hi if noise else lo, "score_hi": 1 - lo if noise else hi}
        rows.append(r)
    return pd.DataFrame(rows, columns=[*by, "recovery", "recovery_lo", "recovery_hi", "kl", "n", "score", "score_lo", "score_hi"])


# ---------------------------------------------------------------------------------- claims
def halves(ids: Sequence[str], seed: int = 0) -> tuple[set, set]:
    """A seeded split of prompt ids into a selection half and a held-out test half."""
    order = [str(i) for i in tasks.sample(sorted({str(i) for i in ids}), len(set(ids)), seed)]
    return set(order[: len(order) // 2]), set(order[len(order) // 2:])


def _at(g: pd.DataFrame, ids: set, **site) -> pd.DataFrame:
    m = g["item_id"].astype(str).isin(ids)
    for k, v in site.items():
        m &= g[k] == v
    return g[m]


def _rec(g: pd.DataFrame) -> tuple[float, float, float]:
    return recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"]) if len(g) else (float("nan"),) * 3


def crossover(rows: pd.DataFrame, family: str, n_layers: int, seed: int = 0, theta: float = 0.5) -> dict:
    """Where the decision reaches the last position: the earliest layer before the final one whose last-token
    residual restores more than theta on the selection half (lower 95% bootstrap bound), tested on the held-out half
    (exact sign-flip test of recovery > theta, denoising and noising).

    The final layer is left out (its last-token residual is the logits' input), and so are prompts whose last
    token differs (every last-token residual patch then restores them by construction)."""
    fam = flipped_rows(rows[rows["family"] == family])
    sel, test = halves(fam["item_id"], seed)
    trivial = fam["last_in_span"].astype(bool) if "last_in_span" in fam else pd.Series(False, index=fam.index)
    r = fam[(fam["component"] == "resid") & ~trivial]
    cand = sorted(int(x) for x in r["layer"].unique() if x < n_layers - 1)
    ci = {L: _rec(_at(r, sel, layer=L, position="last", method="denoise")) for L in cand}
    r_sel = {L: v[0] for L, v in ci.items()}
    layer = next((L for L in cand if ci[L][1] > theta), None)
    out = {"family": family, "n_candidates": len(cand), "n_select": len(sel), "n_test": len(test), "layer": layer}
    if layer is None:
        best = max(cand, key=lambda L: -np.inf if np.isnan(r_sel[L]) else r_sel[L], default=None)
        return out | {"best_layer": best, "select_recovery": r_sel.get(best, np.nan), "p": np.nan}
    den = _at(r, test, layer=layer, position="last", method="denoise")
    noi = _at(r, test, layer=layer, position="last", method="noise")
    est, lo, hi = _rec(den)
    return out | {"select_recovery": r_sel[layer], "recovery": est, "recovery_lo": lo, "recovery_hi": hi,
                  "p": excess_p(den, theta), "noise_score": 1 - _rec(noi)[0], "noise_p": excess_p(noi, theta),
                  "span_recovery": _rec(_at(r, test, layer=layer, position="span", method="denoise"))[0]}


def top_write(rows: pd.DataFrame, family: str, seed: int = 0) -> dict:
    """The strongest single write at the last token (block, attention, MLP or head; not the residual), chosen by
    denoising recovery on the selection half and tested (recovery > 0, noising) on the held-out half."""
    fam = flipped_rows(rows[rows["family"] == family])
    sel, test = halves(fam["item_id"], seed)
    w = fam[(fam["position"] == "last") & (fam["component"] != "resid")]
    sites = {k: _rec(_at(g, sel))[0] for k, g in w[w["method"] == "denoise"].groupby(SITE)}
    sites = {k: v for k, v in sites.items() if np.isfinite(v)}
    out = {"family": family, "n_candidates": len(sites), "n_select": len(sel), "n_test": len(test)}
    if not sites:
        return out | {"component": None, "p": np.nan}
    comp, layer, head, _ = max(sites, key=sites.get)
    site = {"component": comp, "layer": layer, "head": head, "position": "last"}
    den, noi = _at(w, test, **site, method="denoise"), _at(w, test, **site, method="noise")
    est, lo, hi = _rec(den)
    return out | {**site, "select_recovery": sites[(comp, layer, head, "last")], "recovery": est, "recovery_lo": lo,
                  "recovery_hi": hi, "p": excess_p(den, 0.0), "noise_score": 1 - _rec(noi)[0] if len(noi) else np.nan,
                  "noise_p": excess_p(noi, 0.0) if len(noi) else np.nan}


def site_name(r) -> str:
    return f"head {r['head']} of layer {r['layer']}" if r["component"] == "head" else f"the {r['component']} of layer {r['layer']}"


def _untestable(solved: pd.DataFrame, family: str) -> dict:
    r = solved.set_index("family").loc[family]
    return {"testable": False, "untestable_why": f"{family} fails the flip gate: {r['n_flipped']}/{r['n_items']} prompts "
            f"flipped (clean LD > 0 > corrupt LD), 95% lower bound {r['flip_lo']:.2f} < {tasks.FLIP_GATE}"}


def patching_claims(rows: pd.DataFrame, solved: pd.DataFrame, n_layers: int, cross: pd.DataFrame | None = None,
                    cross_family: str | None = None, *, seed: int = 0, theta: float = 0.5, **meta) -> list[Claim]:
    """Chapter 03's claims, statements and evidence from the measurements: per gated family, where the decision
    reaches the last position (`crossover`) and the strongest last-token write (`top_write`); then the
    cross-model localization of a fine-tune's change (`cross_claim`). `meta` = chapter, model, profile."""
    testable = sorted(solved.loc[solved["testable"], "family"])
    moves = {f: crossover(rows, f, n_layers, seed, theta) for f in testable}
    writes = {f: top_write(rows, f, seed) for f in testable}
    moved = {f for f, m in moves.items() if m["p"] <= 0.05}
    confirmed = {f: w["component"] for f, w in writes.items() if w["p"] <= 0.05}
    last = n_layers - 1
    held = "on held-out prompts"
    claims = []
    for f in solved["family"]:
        m, w = moves.get(f), writes.get(f)
        if m is None:
            text = f"In {f}, where the decision reaches the last position: not testable here"
            ev = _untestable(solved, f)
        elif m["layer"] is None:
            text = (f"In {f}, no last-token residual before the final layer restores at least {theta:g} of the decision "
                    + (f"(best: layer {m['best_layer']}, {m['select_recovery']:.2f})" if m.get("best_layer") is not None else "")
                    + f": it reaches the last position only in layer {last}, which is sufficient by construction")
            ev = {"ci_excludes_control": False}
        else:
            ok = m["p"] <= 0.05
            text = (f"In {f}, the decision reaches the last position by layer {m['layer']} of 0–{last}: {held} its "
                    f"last-token residual restores {m['recovery']:.2f} (95% CI {m['recovery_lo']:.2f}–{m['recovery_hi']:.2f}, "
                    f"above {theta:g}), the changed tokens' residual there {m['span_recovery']:.2f}" if ok else
                    f"In {f}, that the decision reaches the last position by layer {m['layer']} of 0–{last} is not "
                    f"confirmed: chosen for restoring {m['select_recovery']:.2f} on half the prompts, its last-token "
                    f"residual restores {m['recovery']:.2f} {held}, not clearly above {theta:g}")
            ev = {"p_value": m["p"], "n_candidates": m["n_candidates"], "selection": "held-out", "n_methods": 2,
                  "methods_agreeing": int(ok) + int(m["noise_p"] <= 0.05)}
        if m is not None:
            ev |= {"n_families": len(testable), "families_agreeing": len(moved) if f in moved else len(testable) - len(moved)}
        claims.append(Claim(text, metric=METRIC + ", exact sign-flip test on held-out prompts",
                            counterfactual="clean residual stream at one layer, last position, in the corrupt prompt",
                            control=f"recovery {theta:g} (half of the clean − corrupt gap)", evidence=ev, **meta))
        if w is None:
            text, ev = f"In {f}, the strongest single write at the last token: not testable here", _untestable(solved, f)
        elif w["component"] is None:
            text, ev = f"In {f}, no single write at the last token has a defined recovery", {"ci_excludes_control": False}
        else:
            ok = w["p"] <= 0.05
            noise = "noising it was not measured" if np.isnan(w["noise_score"]) else f"noising it removes {w['noise_score']:.2f}"
            text = (f"In {f}, the strongest single write at the last token is {site_name(w)} (best of {w['n_candidates']} "
                    f"on half the prompts): {held} patching it into the corrupt run restores {w['recovery']:.2f} "
                    f"(95% CI {w['recovery_lo']:.2f}–{w['recovery_hi']:.2f}){'' if ok else ', not clearly above 0'}; {noise}")
            n_m = 1 if np.isnan(w["noise_score"]) else 2
            ev = {"p_value": w["p"], "n_candidates": w["n_candidates"], "selection": "held-out", "n_methods": n_m,
                  "methods_agreeing": int(ok) + int(w["noise_p"] <= 0.05), "n_families": len(testable),
                  "families_agreeing": sum(c == w["component"] for c in confirmed.values()) if ok else len(testable) - len(confirmed)}
        claims.append(Claim(text, metric=METRIC + ", exact sign-flip test on held-out prompts",
                            counterfactual="clean write of one component at the last position in the corrupt prompt",
                            control="unpatched corrupt run (recovery 0)", evidence=ev, **meta))
    claims.append(cross_claim(cross, cross_family, solved, seed=seed, **meta))
    return claims


# ---------------------------------------------------------------------------------- cross-model
def perturbed(subject: Subject, sigma: float = 0.05, seed: int = 0, name: str | None = None) -> Subject:
    """A copy of `subject` whose decoder-layer weights carry seeded Gaussian noise of `sigma` × each tensor's std
    (embeddings, final norm and unembedding untouched, as with a LoRA adapter on attention/MLP)."""
    from ..model.subject import wrap

    model = copy.deepcopy(subject.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.get_submodule(subject.arch.paths.layers).parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * p.float().std().to(p) * sigma)
    return wrap(name or f"{subject.name}+noise{sigma:g}s{seed}", model, subject.tokenizer,
                   f"{subject.source}; decoder weights + N(0, ({sigma:g}·std)^2), seed {seed}", dict(subject.meta))


def cumulative(component: str, n_layers: int, position: str = "all") -> list[Unit]:
    """Units patching the source's values at layers 0..k for every k (one multi-edit unit each)."""
    return [Unit(tuple(Edit(Site(component, layer, position=position), Op.patch("clean")) for layer in range(k + 1)))
            for k in range(n_layers)]


def cross_patch(dst: Subject, src: Subject, items: Sequence, units: Sequence[Unit], max_tokens: int = 8192) -> pd.DataFrame:
    """Write `src` activations into `dst` (same architecture) for each denoising unit; per-prompt rows with
    recovery = (LD_patched − LD_dst) / (LD_src − LD_dst) and kl = KL(src ‖ patched dst)."""
    if (src.arch.d_model, src.arch.n_layers) != (dst.arch.d_model, dst.arch.n_layers):
        raise ValueError(f"cross-model patching needs the same shape: {src.name} (d_model={src.arch.d_model}, "
                         f"{src.arch.n_layers} layers) vs {dst.name} (d_model={dst.arch.d_model}, {dst.arch.n_layers} layers)")
    if any(e.op.kind != "patch" or e.op.source != "clean" for u in units for e in u.edits):
        raise ValueError("cross-model units must be denoising patches (Op.patch('clean')): the source model is the 'clean' run")
    frames = []
    by_fam: dict[str, list] = {}
    for it in items:
        by_fam.setdefault(it.family, []).append(it)
    for fam, its in sorted(by_fam.items()):
        prompts = [it.prompt for it in its]
        ans, dis = [it.answer_id for it in its], [it.distractor_id for it in its]
        b = Batch(dst, prompts, prompts, ans, dis)
        a = Batch(src, prompts, None, ans, dis)
        b.runs["clean"] = {**b.runs["clean"], "hidden": a.runs["clean"]["hidden"], "logits": a.logits("clean")}
        for u in units:  # source values of module sites come from A's own modules
            for e in u.edits:
                a.value("clean", e)
                key = ("clean", e.site.component, e.site.layer)
                b._values[key] = a._values[key]
        ld_src = metrics.next_token(a.logits("clean"), a.logits("clean"), b.answer_ids, b.distractor_ids)["logit_diff"]
        ld_dst = metrics.next_token(b.logits("corrupt"), a.logits("clean"), b.answer_ids, b.distractor_ids)["logit_diff"]
        for u, lg in zip(units, b.run(list(units), max_tokens=max_tokens)):
            m = metrics.next_token(lg, a.logits("clean"), b.answer_ids, b.distractor_ids)
            frames.append(pd.DataFrame({**u.describe(), "n_layers_patched": len(u.edits), "family": fam,
                                        "item_id": [it.id for it in its], "kl": m["kl"], "logit_diff": m["logit_diff"],
                                        "ld_clean": ld_src, "ld_corrupt": ld_dst}))
    df = pd.concat(frames, ignore_index=True)
    df["recovery"] = metrics.recovery(df["logit_diff"].to_numpy(), df["ld_clean"].to_numpy(), df["ld_corrupt"].to_numpy())
    return df


# ---------------------------------------------------------------------------------- a real fine-tune and CMAP
FT = {"steps": 24, "lr": 2e-3, "batch": 8, "r": 8}  # a small LoRA: seconds on a tiny model, under a minute on SmolLM2
DIRECTIONS = ("tuned→base", "base→tuned")  # whose values are written into whom


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
    `lora.train` on `examples` (default `finetune_data(family, exclude)`), cached in lora's adapter cache (a rerun
    trains nothing), merged by `lora.adapted_subject` into an ordinary Subject. `meta["trained_on"]` says on what;
    `tuned_effect` measures how far it moved."""
    from . import lora

    data = list(examples) if examples is not None else finetune_data(family, exclude)
    if not data:
        raise ValueError(f"no training examples for {family}: every suite item is excluded")
    if layers is None:
        t = lora.target(None, family, subject.arch, subject.arch.n_layers, "all-linear", r=r)
    else:
        t = lora.Target("layers", tuple(sorted(layers)), lora.ALL_LINEAR, r, 2.0 * r)
    ad = lora.train(subject, family, data, t, lora.TrainConfig(steps=steps, lr=lr, batch=batch, seed=seed))
    tuned = lora.adapted_subject(subject, ad)
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
    from ..evidence.stats import bootstrap_ci
    from ..tasks.baselines import last_logits

    prompts = [it.prompt for it in items]
    a, d = torch.tensor([it.answer_id for it in items]), torch.tensor([it.distractor_id for it in items])
    lb, lt = last_logits(base, prompts), last_logits(tuned, prompts)
    mb, mt = metrics.next_token(lb, lb, a, d), metrics.next_token(lt, lb, a, d)
    change = mt["logit_diff"] - mb["logit_diff"]
    est, lo, hi = bootstrap_ci(change)
    return {"n": len(items), "ld_base": float(mb["logit_diff"].mean()), "ld_tuned": float(mt["logit_diff"].mean()),
            "ld_change": est, "ld_change_lo": lo, "ld_change_hi": hi, "p": sign_flip_p(change, "two-sided"),
            "kl": float(mt["kl"].mean())}


def cmap(base: Subject, tuned: Subject, items: Sequence, components: Sequence[str] = ("block", "attn", "mlp"),
         layers: Sequence[int] | None = None, directions: Sequence[str] = DIRECTIONS, with_cumulative: bool = True,
         max_tokens: int = 8192) -> pd.DataFrame:
    """Cross-model activation patching (CMAP, Prakash et al. 2024) between a model and its fine-tune, on the items'
    clean prompts: in each direction ("tuned→base": the fine-tune's value written into the base, does this write
    carry the change; "base→tuned": the base's written into the fine-tune, does it undo it) every single write
    (kind "single": each component at each layer, all positions) and, with `with_cumulative`, the blocks 0..k
    (kind "cumulative", layer = k; with shared embeddings this equals patching the residual after layer k).

    Rows as `cross_patch` (ld_clean = the source's LD, ld_corrupt = the destination's) plus direction and kind;
    `recovery` is per prompt, oriented so that 1 = the destination reaches the source whichever is higher."""
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
        frames += [df[df["unit"].isin(skeys)].assign(kind="single"),
                   df[df["unit"].isin(ckeys)].assign(kind="cumulative", layer=lambda d: d["n_layers_patched"] - 1)]
    out = pd.concat(frames, ignore_index=True)
    o = pd.concat([_oriented(g) for _, g in out.groupby("direction", sort=False)]).loc[out.index]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["recovery"] = (o["logit_diff"] - o["ld_corrupt"]) / (o["ld_clean"] - o["ld_corrupt"])
    return out


def _oriented(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of one direction with the logit differences negated when the source's mean is below the destination's:
    recovery keeps its value (1 = at the source) and `gap_ok` then asks that the models clearly differ."""
    if not len(df) or (df["ld_clean"] - df["ld_corrupt"]).mean() >= 0:
        return df
    return df.assign(logit_diff=-df["logit_diff"], ld_clean=-df["ld_clean"], ld_corrupt=-df["ld_corrupt"])


def cross_summary(cross: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """One row per direction × kind × component × layer: recovery toward the source (ratio of means, bootstrap CI;
    NaN when the two models do not clearly differ, `gap_ok`), mean KL(source ‖ patched destination), prompts."""
    rows = []
    for direction, d in cross.groupby("direction", sort=False):
        d = _oriented(d)
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
    fwd, back = _oriented(raw), _oriented(cross[(cross["direction"] == DIRECTIONS[1]) & (cross["kind"] == "single")])
    lds = raw.groupby("item_id")[["ld_clean", "ld_corrupt"]].first()
    change = lds["ld_clean"] - lds["ld_corrupt"]  # LD_tuned − LD_base per prompt
    out = {"change": float(change.mean()) if len(change) else np.nan, "n_prompts": len(change),
           "testable": gap_ok(-change if change.mean() < 0 else change)}
    if not out["testable"]:
        return out
    sel, test = halves(fwd["item_id"], seed)
    site = ["component", "layer"]
    sites = {k: _rec(_at(g, sel))[0] for k, g in fwd.groupby(site)}
    sites = {k: v for k, v in sites.items() if np.isfinite(v)}
    out |= {"n_candidates": len(sites), "n_select": len(sel), "n_test": len(test)}
    if not sites:
        return out | {"component": None, "p": np.nan}
    comp, layer = max(sites, key=sites.get)
    den, rev = _at(fwd, test, component=comp, layer=layer), _at(back, test, component=comp, layer=layer)
    est, lo, hi = _rec(den)
    return out | {"component": comp, "layer": int(layer), "head": -1, "select_recovery": sites[(comp, layer)],
                  "recovery": est, "recovery_lo": lo, "recovery_hi": hi, "p": excess_p(den, 0.0),
                  "back_recovery": _rec(rev)[0] if len(rev) else np.nan,
                  "back_p": excess_p(rev, 0.0) if len(rev) else np.nan}


def cross_claim(cross: pd.DataFrame | None, family: str | None, solved: pd.DataFrame, *, seed: int = 0,
                **meta) -> Claim:
    """Where a fine-tune's change of a family's logit difference lives (`cross_localize`). Not testable when the family
    fails the flip gate, when no cross-model run was made, or when the models do not clearly differ on it (a model
    patched with itself or an identical copy can therefore never earn this claim)."""
    kw = dict(metric=METRIC.replace("over flipped prompts", "toward the source model") + ", exact sign-flip test on "
              "held-out prompts", counterfactual="one write of the fine-tune (all positions) in the base, and the "
              "reverse", control="recovery 0 (the unpatched destination)", **meta)
    subject = f"Where the fine-tune changes {family or 'a family'}"
    if family is None or cross is None or not len(cross):
        why = "cross-model patching was not run" if solved["testable"].any() else tasks.untestable_why(solved)
        return Claim(f"{subject}: not testable here", evidence={"testable": False, "untestable_why": why}, **kw)
    if family not in set(solved.loc[solved["testable"], "family"]):
        return Claim(f"{subject}: not testable here", evidence=_untestable(solved, family) if family in set(
            solved["family"]) else {"testable": False, "untestable_why": f"{family} was not gated"}, **kw)
    m = cross_localize(cross, seed)
    if not m["testable"]:
        return Claim(f"{subject}: not testable here, the fine-tune does not clearly change its logit difference "
                     f"(mean change {m['change']:+.2f})", evidence={"testable": False, "untestable_why":
                     f"mean LD_tuned − LD_base {m['change']:+.2f} over {m['n_prompts']} prompts: needs >= {MIN_GAP} "
                     "in size and > 2 SE, else there is no difference to localize"}, **kw)
    if m["component"] is None:
        return Claim(f"In {family}, no single write has a defined recovery toward the fine-tune",
                     evidence={"ci_excludes_control": False}, **kw)
    ok = m["p"] <= 0.05
    site = site_name(m)
    local = ok and m["recovery_lo"] >= 0.5
    back = "" if np.isnan(m["back_recovery"]) else f"; the base's value written into the fine-tune undoes {m['back_recovery']:.2f}"
    text = (f"In {family}, the fine-tune's change of the logit difference ({m['change']:+.2f} on average) "
            + (f"is {'localized in' if local else 'carried most by'} {site} (best of {m['n_candidates']} single writes on "
               f"half the prompts): on held-out prompts the fine-tune's value written into the base recovers "
               f"{m['recovery']:.2f} of it (95% CI {m['recovery_lo']:.2f}–{m['recovery_hi']:.2f}){back}" if ok else
               f"is not confirmed in any single write: {site}, chosen for recovering {m['select_recovery']:.2f} on half the "
               f"prompts, recovers {m['recovery']:.2f} on held-out prompts, not clearly above 0"))
    ev = {"p_value": m["p"], "n_candidates": m["n_candidates"], "selection": "held-out",
          "n_methods": 2 if np.isfinite(m["back_p"]) else 1, "methods_agreeing": int(ok) + int(m["back_p"] <= 0.05)}
    return Claim(text, evidence=ev, **kw)


# ---------------------------------------------------------------------------------- across model families
def _shape(model) -> tuple[str, str, int, int, object]:
    """(name, family, d_model, n_layers, tokenizer) of a Subject or a model name, without loading weights."""
    if isinstance(model, Subject):
        return model.name, model.arch.family, model.arch.d_model, model.arch.n_layers, model.tokenizer
    from transformers import AutoConfig, AutoTokenizer

    from ..model import tiny

    if model.startswith("tiny-"):
        tok = tiny.shared_tokenizer()
        cfg = tiny.config(model.removeprefix("tiny-"), len(tok))
    else:
        path = sources.embedded_dir(model) if model in sources.EMBEDDED else model
        cfg, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    cfg = getattr(cfg, "text_config", None) or cfg
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    return model, cfg.model_type, int(d), int(n), tok


def cross_family_why(a, b, items: Sequence) -> str:
    """Why activations of model `a` cannot simply be patched into `b` (Subjects or names; names load only config and
    tokenizer): different widths or depths, separately trained residual bases (a map would have to be learned), and
    whether the tokenizers split the items' prompts identically, which a learned map needs to align positions honestly."""
    (na, fa, da, la, ta), (nb, fb, db, lb, tb) = _shape(a), _shape(b)
    if na == nb:
        return f"{na} and {nb} are the same model: there is nothing to map"
    prompts = [it.prompt for it in items]
    same = sum(ta(p)["input_ids"] == tb(p)["input_ids"] for p in prompts)
    why = [f"{na} ({fa}, d_model={da}, {la} layers, vocab {len(ta)}) and {nb} ({fb}, d_model={db}, {lb} layers, vocab {len(tb)})"]
    if (da, la) != (db, lb):
        why.append("have different residual widths or depths, so no activation fits the other model as it is")
    why.append("are separate models (not one the fine-tune of the other): their residual streams share no basis, so "
               "a patch needs a learned map")
    if same == len(prompts) and prompts:
        why.append(f"tokenize all {same} prompts identically, so positions align and a linear map fit on held-out "
                   "activations would be honest; it is not implemented here")
    else:
        why.append(f"tokenize only {same} of {len(prompts)} prompts identically, so token positions cannot be aligned "
                   "honestly and a map fit on them would pair unrelated tokens; answer logit differences are also in "
                   "different vocabularies")
    return "; ".join(why[:1]) + " " + "; ".join(why[1:])
