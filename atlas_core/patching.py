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
units write A's values into B, and recovery measures how far B moves to A's logit difference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from . import metrics, tasks
from .claims import Claim
from .engine import Batch, position_ids
from .interventions import Edit, Op, Site, Unit, _exists
from .stats import sign_flip_p
from .subject import Subject
from .sweep import sweep

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
           if c in ("resid", "block") or _exists(arch, c, layer)
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
    from .tasks.baselines import scored as score_items

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
            lg = subject.model(input_ids=ids, attention_mask=b.mask, position_ids=position_ids(b.mask),
                               use_cache=False, logits_to_keep=1).logits[:, -1].float()
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


def cross_curve(cross: pd.DataFrame) -> pd.DataFrame:
    """Recovery toward A (ratio of means, CI) and KL per curve and k: A's blocks 0..k, or A's residual at k only."""
    cr = []
    for _, g in cross.groupby("unit"):
        comp, n = g["component"].iloc[0], int(g["n_layers_patched"].iloc[0])
        est, lo, hi = _rec(g)
        k = int(g["layer"].iloc[0]) + n - 1 if comp == "block" else int(g["layer"].iloc[0])
        cr.append({"curve": "blocks 0..k (A's writes)" if comp == "block" else "resid at k only", "k": k,
                   "recovery": est, "recovery_lo": lo, "recovery_hi": hi, "kl": g["kl"].mean()})
    return pd.DataFrame(cr).sort_values(["curve", "k"], ignore_index=True)


def cross_trend(cross: pd.DataFrame, n_layers: int) -> dict:
    """Does writing A's blocks 0..k into B move B toward A as k grows? Per prompt, the least-squares slope of
    B's logit difference over the k < n_layers − 1 (all layers restore A by construction), tested > 0 with an exact
    sign-flip test over prompts; the gap A − B must be clearly positive."""
    b = cross[cross["component"] == "block"].assign(k=lambda d: d["n_layers_patched"] - 1)
    b = b[b["k"] < n_layers - 1]
    gap = b.groupby("item_id")[["ld_clean", "ld_corrupt"]].first()
    gap = gap["ld_clean"] - gap["ld_corrupt"]
    curve = cross_curve(cross[cross["component"] == "block"]) if len(b) else pd.DataFrame(columns=["k", "recovery"])
    inner = curve[curve["k"] < n_layers - 1]
    ld = b.pivot_table(index="item_id", columns="k", values="logit_diff")
    ok = gap_ok(gap) and ld.shape[1] >= 2
    slopes = np.polyfit(ld.columns.to_numpy(float), ld.to_numpy().T, 1)[0] if ok else np.array([])
    mono, drops = monotonic(inner["recovery"].to_numpy())
    return {"testable": ok, "gap": float(gap.mean()) if len(gap) else np.nan, "n_k": ld.shape[1],
            "slope": float(slopes.mean() / gap.mean()) if ok else np.nan,
            "p": sign_flip_p(slopes, "greater") if ok else np.nan, "monotonic": mono, "drops": drops,
            "final": float(curve["recovery"].iloc[-1]) if len(curve) else np.nan}


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
    cross-model curve (`cross_trend`). `meta` = chapter, model, profile."""
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
    claims.append(_cross_claim(cross, cross_family, solved, n_layers, meta))
    return claims


def _cross_claim(cross: pd.DataFrame | None, family: str | None, solved: pd.DataFrame, n_layers: int, meta: dict) -> Claim:
    kw = dict(metric="normalized recovery toward model A, ratio of means; per-prompt slope over k, exact sign-flip test",
              counterfactual="A's block writes at layers 0..k in B", control="no trend over k (slope 0)", **meta)
    if cross is None or not len(cross) or family is None:
        why = "cross-model patching was not run" if solved["testable"].any() else tasks.untestable_why(solved)
        return Claim("Writing A's block outputs into a noised copy B: not testable here",
                     evidence={"testable": False, "untestable_why": why}, **kw)
    t = cross_trend(cross, n_layers)
    if not t["testable"]:
        return Claim(f"Writing A's block outputs into a noised copy B ({family}): not testable here",
                     evidence={"testable": False, "untestable_why": f"B's logit difference is not clearly below A's "
                               f"(mean gap {t['gap']:.2f}, needs >= {MIN_GAP} and > 2 SE) or fewer than 2 layers patched"}, **kw)
    ok = t["p"] <= 0.05
    shape = "monotonically" if t["monotonic"] else f"with {t['drops']} drops > 0.02"
    text = (f"In {family}, writing A's block outputs at layers 0..k into a noised copy B "
            + (f"moves B's logit difference toward A's as k grows, {shape}" if ok else "does not move B's logit difference steadily toward A's as k grows")
            + f" ({t['slope']:+.2f} of the gap per layer over k < {n_layers - 1}; all layers restore A by construction)")
    return Claim(text, evidence={"p_value": t["p"]}, **kw)


# ---------------------------------------------------------------------------------- cross-model
def perturbed(subject: Subject, sigma: float = 0.05, seed: int = 0, name: str | None = None) -> Subject:
    """A copy of `subject` whose decoder-layer weights carry seeded Gaussian noise of `sigma` × each tensor's std
    (embeddings, final norm and unembedding untouched, as with a LoRA adapter on attention/MLP)."""
    from .subject import _finish

    model = copy.deepcopy(subject.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.get_submodule(subject.arch.paths.layers).parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * p.float().std().to(p) * sigma)
    return _finish(name or f"{subject.name}+noise{sigma:g}s{seed}", model, subject.tokenizer,
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


def monotonic(values: Sequence[float], tol: float = 0.02) -> tuple[bool, int]:
    """(is the curve non-decreasing within `tol`, number of drops larger than tol)."""
    d = np.diff(np.asarray(values, float))
    drops = int((d < -tol).sum())
    return drops == 0, drops
