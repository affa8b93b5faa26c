"""Precisions: fp32, bf16, bitsandbytes int8 and NF4 (through `load(..., quantization=)`), measured against fp32:
generation speed (tok/s at batch 1 and 8, all in one run), memory, KL and top-1 agreement over the fp32 model's
continuations, and intervention sensitivity (the same steering and ablation units under each precision).

A precision whose backend does not load or run here is reported with a one-line ValueError (`available`,
`load_precision`), never with made-up numbers. Models that are not on disk (tiny random ones) are saved once as a
checkpoint so that bitsandbytes can quantize them on load like any other.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...engine.batch import Batch
from ...engine.interventions import Op, Site, Unit, layer_sweep
from ...engine.sweep import sweep
from ...evidence.stats import resample_ci
from ...model import sources
from ...model.subject import Subject, load
from ...paths import results_dir
from ..atlas import Atlas, diff
from .quality import Probe, measure
from .recovery import tokens_per_second
from .skipping import save

KINDS = ("fp32", "bf16", "int8", "nf4")


def available(kind: str) -> None:
    """Raise a one-line ValueError when `kind` cannot run here (unknown kind, or bitsandbytes missing)."""
    if kind not in KINDS:
        raise ValueError(f"unknown precision {kind!r}; known: {', '.join(KINDS)}")
    if kind in ("int8", "nf4"):
        try:
            importlib.import_module("bitsandbytes")
        except Exception as err:  # ImportError, or a broken native library
            raise ValueError(f"{kind} is not available on this machine: bitsandbytes does not import "
                             f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no message'})") from None


def source(subject: Subject, root: Path | None = None) -> str:
    """A name or path `load` can re-read the subject's weights from (a tiny model is saved once, by fingerprint)."""
    if subject.name in sources.EMBEDDED or Path(subject.name).exists() or "/" in subject.name:
        return subject.name
    path = Path(root or results_dir() / "compression" / "checkpoints") / subject.fingerprint[:12]
    if not (path / "config.json").exists():
        save(subject, path)
    return str(path)


def load_precision(subject: Subject, kind: str, root: Path | None = None) -> Subject:
    """The subject at another precision (fp32 is the subject itself); a one-line ValueError when it cannot."""
    available(kind)
    if kind == "fp32":
        return subject
    src = source(subject, root)
    try:
        if kind == "bf16":
            s = load(src, dtype=torch.bfloat16)
        else:
            s = load(src, quantization=kind)
            enc = s.encode(["a"])
            with torch.inference_mode():
                s.model(**enc)  # a kernel missing on this device fails here, not later
    except (ImportError, RuntimeError, OSError, NotImplementedError, AttributeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{kind} is not available on this machine: {msg[:200]}") from None
    s.name = f"{subject.name}@{kind}"
    return s


def speed(subjects: dict[str, Subject], prompts: Sequence[str], new_tokens: int, batches: Sequence[int] = (1, 8),
          reps: int = 3) -> pd.DataFrame:
    """tok/s of greedy generation per precision and batch size, alternating precisions within one run (median of
    `reps`), with the ratio to fp32 at the same batch size."""
    for s in subjects.values():
        tokens_per_second(s.model, s, prompts[:1], 2)  # warm-up
    got: dict = {}
    for _ in range(reps):
        for b in batches:
            for k, s in subjects.items():
                got.setdefault((k, b), []).append(tokens_per_second(s.model, s, list(prompts[:b]), new_tokens))
    df = pd.DataFrame([{"precision": k, "batch": b, "tok_s": float(np.median(v))} for (k, b), v in got.items()])
    ref = df[df.precision == "fp32"].set_index("batch").tok_s
    return df.assign(ratio_vs_fp32=df.tok_s / df.batch.map(ref))


def fidelity(subjects: dict[str, Subject], pr: Probe) -> pd.DataFrame:
    """Per precision: memory (bytes of weights), KL(fp32 || precision), top-1 agreement and top-5 overlap over
    the fp32 continuations, task accuracy and perplexity."""
    rows = []
    for k, s in subjects.items():
        q = measure(s.model, s, pr)
        rows.append({"precision": k, "memory_mb": s.model.get_memory_footprint() / 2**20, "kl": q["kl"],
                     "top1": q["top1"], "top5": q["top5"], "accuracy": q["accuracy"], "ppl": q["ppl"]})
    return pd.DataFrame(rows)


def steering_units(subject: Subject, pairs: Sequence[tuple[str, str]], layer: int, alphas: Sequence[float]) -> list[Unit]:
    """Steering units: add alpha x (mean residual difference positive - negative at `layer`'s output, last token),
    the same vector for every precision (computed on the fp32 model)."""
    pos = Batch(subject, [p for p, _ in pairs]).runs["clean"]["hidden"][layer + 1][:, -1].float()
    neg = Batch(subject, [n for _, n in pairs]).runs["clean"]["hidden"][layer + 1][:, -1].float()
    v = (pos - neg).mean(0)
    return [Unit.of(Site("resid", layer), Op.add(v, a, name=f"steer-L{layer}"), kind="steer", alpha=a) for a in alphas]


def ablation_sweep(subjects: dict[str, Subject], items: Sequence, n_boot: int = 200) -> tuple[dict, pd.DataFrame]:
    """The same sweep (every block zero-ablated, on the same task items) under each precision: an `Atlas` per
    precision and the per-(precision, layer, item) KL rows in `sensitivity`'s format."""
    atlases, rows = {}, []
    for k, s in subjects.items():
        units = layer_sweep(["block"], ["zero"], s.arch.n_layers, s.arch)
        r = sweep(s, list(items), units, progress=False, desc=f"ablation {k}")
        atlases[k] = Atlas.from_rows(r, s.name, s.fingerprint, s.arch.n_layers, s.arch.n_heads, n_boot=n_boot)
        rows.append(pd.DataFrame({"precision": k, "unit": r.unit, "kind": "ablate", "layer": r.layer, "alpha": 0.0,
                                  "prompt": r.item_id, "kl": r.kl}))
    return atlases, pd.concat(rows, ignore_index=True)


def atlas_diffs(atlases: dict) -> pd.DataFrame:
    """`atlas.diff(fp32, precision)` for every other precision: per-layer change of the block-ablation KL."""
    return pd.concat([diff(atlases["fp32"], a).assign(precision=k) for k, a in atlases.items() if k != "fp32"],
                     ignore_index=True)


def sensitivity(subjects: dict[str, Subject], prompts: Sequence[str], units: Sequence[Unit]) -> pd.DataFrame:
    """Per (precision, unit, prompt): KL(unedited || edited) of the next token, each precision against its own
    unedited forward."""
    rows = []
    for k, s in subjects.items():
        b = Batch(s, list(prompts))
        clean = torch.log_softmax(b.logits("clean").float(), -1)
        for u, lg in zip(units, b.run(list(units))):
            lp = torch.log_softmax(lg.float(), -1)
            kl = (clean.exp() * (clean - lp)).sum(-1).clamp_min(0).double().numpy()
            d = u.describe()
            rows += [{"precision": k, "unit": u.key, "kind": d.get("kind"), "layer": d["layer"],
                      "alpha": d["alpha"], "prompt": i, "kl": float(x)} for i, x in enumerate(kl)]
    return pd.DataFrame(rows)


def amplification(sens: pd.DataFrame | Sequence[pd.DataFrame], ref: str = "fp32", n_boot: int = 1000) -> pd.DataFrame:
    """Per precision and unit kind (steering at each alpha; ablation pooled over layers): mean KL, the ratio
    mean KL(precision) / mean KL(fp32) and its 95% percentile-bootstrap CI over prompts (paired: the prompts are
    resampled together; n prompts >= 8 here, so a bootstrap fits). `sens`: one table or several (steering, ablation)."""
    rows = []
    sens = sens if isinstance(sens, pd.DataFrame) else pd.concat(list(sens), ignore_index=True)
    sens = sens.assign(cond=np.where(sens.kind == "steer", "steer a=" + sens.alpha.map("{:g}".format), "ablate"))
    for cond, g in sens.groupby("cond", sort=False):
        per = g.groupby(["precision", "prompt"]).kl.mean().unstack("precision")
        for k in per.columns:
            if k == ref:
                continue
            a, r = per[k].to_numpy(), per[ref].to_numpy()
            est, lo, hi = resample_ci(lambda x: x[0].mean() / max(x[1].mean(), 1e-12), (a, r), n_boot=n_boot)
            rows.append({"condition": cond, "precision": k, "kl": float(a.mean()), "kl_fp32": float(r.mean()),
                         "ratio": est, "lo": lo, "hi": hi, "n_prompts": len(a)})
    return pd.DataFrame(rows)


def hub_moves(sens: pd.DataFrame) -> pd.DataFrame:
    """Per precision: the layer whose ablation moves the next token most (the hub), and the Spearman correlation
    of its per-layer ablation map with fp32's."""
    m = sens[sens.kind == "ablate"].groupby(["precision", "layer"]).kl.mean().unstack("precision")
    ref = m["fp32"].rank()
    return pd.DataFrame([{"precision": k, "hub_layer": int(m[k].idxmax()), "hub_kl": float(m[k].max()),
                          "spearman_vs_fp32": float(m[k].rank().corr(ref))} for k in m.columns])


def precision_subjects(subject: Subject, kinds: Sequence[str]) -> tuple[dict[str, Subject], pd.DataFrame]:
    """Load every precision that works here; the status table says, per kind, 'ok' with the load time, or the
    one-line error of a precision that is not available."""
    subs, rows = {}, []
    for k in kinds:
        t0 = time.perf_counter()
        try:
            subs[k] = load_precision(subject, k)
            rows.append({"precision": k, "status": "ok", "load_s": round(time.perf_counter() - t0, 1)})
        except ValueError as err:
            rows.append({"precision": k, "status": f"not available: {err}", "load_s": float("nan")})
    return subs, pd.DataFrame(rows)
