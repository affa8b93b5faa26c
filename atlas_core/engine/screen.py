"""Attribution patching: a first-order screen of every unit from one forward + backward per batch.

For a unit that replaces a site's value x by x' (any Op: zero, mean, resample, patch, ...), the
change of the logit difference is estimated as  grad_x LD · (x' - x), with the replacement computed
by the engine itself (`Batch.replacement`), so screen and exact sweep share one vocabulary. It is a
screen, never a verdict: `recall` measures how often its top-k matches the exact top-k.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import tracing
from .batch import Batch
from .interventions import Unit
from .sweep import batches


def attribution(subject, items: Sequence, units: Sequence[Unit], seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """Estimated per-prompt logit-difference change of each single-edit unit (columns as in `sweep` rows,
    plus `ld_change_est`). One forward+backward per batch and run (clean, or corrupt for denoising)."""
    if subject.remote:
        raise ValueError("the attribution screen differentiates here: run it without remote (the exact sweep runs remotely)")
    rows = []
    for its in batches(items, batch_size):
        b = Batch.of_items(subject, its, seed=seed)
        b.prefetch(list(units))
        for run in ("clean", "corrupt"):
            us = [u for u in units if u.run == run]
            if not us:
                continue
            est = _estimate(b, run, us)
            for u, v in zip(us, est):
                d = u.describe()
                for it, x in zip(its, v):
                    rows.append({"seed": seed, "family": it.family, "item_id": it.id, **d, "ld_change_est": float(x)})
    return pd.DataFrame(rows)


def _estimate(b: Batch, run: str, units: list[Unit]) -> list[np.ndarray]:
    """grad_x LD · (x' − x) per prompt for each unit, from one traced forward and one backward."""
    if any(len(u.edits) != 1 for u in units):
        raise ValueError(f"the screen handles single-edit units; got {next(u.key for u in units if len(u.edits) != 1)}")
    pts = {tracing.point(b.arch, u.edits[0].site) for u in units}
    arch = b.arch
    with torch.enable_grad():
        got = tracing.forward(b.s.nn, arch.paths.layers, b.runs[run]["ids"], b.mask, reads=sorted(pts, key=lambda p: (p.layer, p.stage)),
                              grad_from=arch.paths.embed)
        saved, lg = {p: got[p] for p in pts}, got["logits"]
        rows = torch.arange(lg.shape[0])
        ld = lg[rows, b.answer_ids.to(lg.device)] - lg[rows, b.distractor_ids.to(lg.device)]
        order = list(saved)
        grads = dict(zip(order, torch.autograd.grad(ld.sum(), [saved[p] for p in order])))
    res = []
    with torch.no_grad():
        for u in units:
            e = u.edits[0]
            pt = tracing.point(arch, e.site)
            x, g = saved[pt].detach(), grads[pt]
            if e.site.component == "block":
                x = x - b.runs[run]["hidden"][e.site.layer]  # block value is the delta; d out/d delta = 1
            if e.site.component == "head":
                sl = arch.head_slice(e.site.head)
                x, g = x[..., sl], g[..., sl]
            new = b.replacement(e, x)
            res.append(((new - x) * g).sum(dim=(1, 2)).cpu().double().numpy())
    return res


SPEED_STRIDE = 10  # the speed line times the exact sweep on every 10th unit


def versus_exact(subject, items: Sequence, units: Sequence[Unit], seed: int, k: int) -> tuple[pd.DataFrame | None, str]:
    """The screen against the exact sweep on the same prompts (`recall` by component and method) and a line on
    their speeds, measured on the first family with an empty cache so both sides compute: the exact side on
    every `SPEED_STRIDE`-th unit (they span every component, method and layer in the sweep's order), scaled to
    all units. Remote subjects: (None, why) — the screen differentiates through weights that are not here."""
    from .sweep import Cache, sweep

    if subject.remote:
        return None, "attribution screen skipped: it differentiates through the weights, which are on NDIF"
    est = attribution(subject, items, units, seed=seed)
    exact = sweep(subject, items, units, seed=seed, progress=False)  # the atlas's own seed: cached
    rec = recall(est, exact, k=k, by=("component", "method"))
    one = [it for it in items if it.family == items[0].family]
    t_screen = timed_attribution(subject, one, units, seed=seed)[1]
    timed = list(units)[::SPEED_STRIDE]
    t0 = time.perf_counter()
    sweep(subject, one, timed, seed=seed, progress=False, cache=Cache(":memory:"))
    t_exact = (time.perf_counter() - t0) * len(units) / len(timed)
    return rec, (f"{len(units)} units x {len(one)} prompts: screen {t_screen:.1f} s, exact {t_exact:.1f} s (timed on "
                 f"{len(timed)} of the units, scaled) -> screen is {t_exact / t_screen:.0f}x faster")


def recall(est: pd.DataFrame, exact: pd.DataFrame, k: int = 10, by=("component",)) -> pd.DataFrame:
    """Recall of the exact top-k units (by |mean logit-diff change|) among the screen's top-k, per group, against
    its chance level k/N (`p`: hypergeometric, `recall_p`), with the Pearson correlation of estimated vs exact mean
    effects. The exact change is taken against the run the unit edits, as the screen's is: the corrupt run for
    denoising patches, the clean run otherwise."""
    keys = ["family", "component", "layer", "head", "position", "method"]
    e = est.groupby(keys)["ld_change_est"].mean()
    ref = np.where(exact["method"] == "denoise", exact["ld_corrupt"], exact["ld_clean"])
    x = exact.assign(ld_change_exact=exact["logit_diff"] - ref).groupby(keys)["ld_change_exact"].mean()
    j = pd.concat([e, x], axis=1).dropna().reset_index()
    recs = []
    for g, t in j.groupby(list(by)):
        kk = min(k, len(t))
        top_e = set(t["ld_change_est"].abs().nlargest(kk).index)
        top_x = set(t["ld_change_exact"].abs().nlargest(kk).index)
        hits = len(top_e & top_x)
        r = np.corrcoef(t["ld_change_est"], t["ld_change_exact"])[0, 1] if len(t) > 2 else np.nan
        recs.append({**dict(zip(by, g if isinstance(g, tuple) else (g,))), "k": kk, "n_units": len(t),
                     "recall_at_k": hits / kk, "chance": kk / len(t), "p": recall_p(hits, kk, len(t)), "pearson": float(r)})
    return pd.DataFrame(recs)


def recall_p(hits: int, k: int, n: int) -> float:
    """One-sided p of recall@k: P(overlap >= hits) when the screen's top-k are k of the n units drawn at random
    (hypergeometric; expected recall k/n). k = n gives p = 1: a screen that must pick everything shows nothing."""
    from scipy.stats import hypergeom

    return float(hypergeom.sf(hits - 1, n, k, k))


def timed_attribution(*args, **kw) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    df = attribution(*args, **kw)
    return df, time.perf_counter() - t0


def screen_claims(rec: pd.DataFrame, atlas, **tags) -> list:
    """One claim per (component, method) group of `recall`: does the screen's top-k beat chance (k/N)?

    p-values are Holm-adjusted over the groups (one family of tests); a model that solves no family makes the
    logit difference meaningless, so there the claims are not testable."""
    from ..evidence.claims import Claim
    from ..evidence.stats import holm
    from ..tasks import untestable_why

    adj = holm(rec["p"].to_numpy()) if len(rec) else np.array([])
    out = []
    for r, p in zip(rec.itertuples(), adj):
        what = f"{r.component}/{r.method}"
        kw = dict(metric="recall@k of the exact top-k units by |logit-difference change|",
                  counterfactual="first-order (attribution) estimate vs exact intervention",
                  control=f"chance recall k/N = {r.chance:.2f}", **tags)
        if not atlas.testable_families:
            out.append(Claim(f"the attribution screen on {what} units: not testable here (the model solves no family)",
                             evidence={"testable": False, "untestable_why": untestable_why(atlas.solved)}, **kw))
            continue
        verdict = "finds more of" if p <= 0.05 else "does not find more of"
        out.append(Claim(
            f"the attribution screen {verdict} the exact top-{r.k} {what} units than chance (recall {r.recall_at_k:.2f} "
            f"vs {r.chance:.2f} of {r.n_units}; Holm p = {p:.3g} over {len(rec)} groups)",
            evidence={"p_value": float(p), "recall_at_k": float(r.recall_at_k), "chance": float(r.chance)}, **kw))
    return out
