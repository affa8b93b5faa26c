"""Chapter 07's profile, data splits and skipping experiments.

Prompts are split once: neutral sentences into selection (criteria are computed on them), test (continuations and
perplexity) and healing (training + validation text) sets, disjoint; task items into selection items (the atlas
criterion) and test items (accuracy), disjoint too. Nothing measured on the test side chooses anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ... import profiles, tasks
from ...model.subject import Subject
from ...paths import read_json, results_dir
from ...tasks import neutral
from ..adapters import attach
from . import qualitative
from .criteria import depths
from .quality import Probe, measure, probe
from .recovery import heal
from .skipping import check, removed, runs, smaller, tag


def profile(name: str) -> dict:
    """Chapter 07's settings in a profile (`profiles.PROFILES[name]['compression']`)."""
    return dict(profiles.get(name)["compression"])


@dataclass
class Data:
    """The chapter's disjoint prompt sets."""

    select_texts: list[str]
    test_prompts: list[str]
    test_texts: list[str]
    heal_texts: list[str]
    heal_val: list[str]
    select_items: list
    test_items: list

    def sizes(self) -> str:
        return (f"selection: {len(self.select_texts)} sentences + {len(self.select_items)} task items; test: "
                f"{len(self.test_prompts)} continuation prompts, {len(self.test_texts)} perplexity texts, "
                f"{len(self.test_items)} task items; healing: {len(self.heal_texts)} train + {len(self.heal_val)} "
                "validation sentences (all disjoint)")


def data(subject: Subject, P: dict, seed: int) -> Data:
    """Split neutral sentences and task items (see the module docstring); continuation prompts are the first
    half (in words, at least 3) of each test sentence."""
    s = neutral.sentences(seed=seed)
    a, b, c = P["n_select"], P["n_test"], P["n_heal_val"]
    if a + b + c + 8 > len(s):
        raise ValueError(f"{len(s)} neutral sentences cannot give {a} + {b} + {c} + >= 8 disjoint ones")
    sel, test, val, heal = s[:a], s[a:a + b], s[a + b:a + b + c], s[a + b + c:][:P.get("n_heal")]
    prompts = [" ".join(t.split()[:max(3, len(t.split()) // 2)]) for t in test]
    pool, _ = tasks.validate([it for f in P["families"] for it in tasks.load_items(f)], subject.tokenizer)
    si, ti = [], []
    for f in P["families"]:
        its = tasks.sample([i for i in pool if i.family == f], 2 * P["n_items"], seed)
        si += its[:len(its) // 2]
        ti += its[len(its) // 2:]
    return Data(sel, prompts, test, heal, val, si, ti)


def make_probe(subject: Subject, d: Data, P: dict) -> Probe:
    """The base model measured once on the test side."""
    return probe(subject, d.test_prompts, d.test_items, d.test_texts, P["gen_tokens"])


def skip_sets(n_layers: int, P: dict) -> pd.DataFrame:
    """Every single layer, then contiguous runs of P['run_lengths'] (all starts, or P['runs_per_length'] evenly
    spaced ones when set: a subsample)."""
    rows = [{"kind": "single", "depth": 1, "layers": (i,)} for i in range(n_layers)]
    rows += [{"kind": "run", "depth": len(r), "layers": r}
             for r in runs(n_layers, [n for n in P["run_lengths"] if n > 1], P.get("runs_per_length"))]
    return pd.DataFrame(rows)


def skip_table(subject: Subject, sets: pd.DataFrame, pr: Probe) -> pd.DataFrame:
    """Quality of every skip set as a real smaller model (layers removed in place, restored after each), against
    the base on the test probe. Columns: the set's own columns, skipped, top1, top5, kl, next_top5, accuracy, ppl,
    and per-prompt top-5 overlap (`per_prompt_top5`) for the tests."""
    rows = []
    for r in sets.to_dict("records"):
        with removed(subject, r["layers"]) as m:
            q = measure(m, subject, pr)
        rows.append({**r, "skipped": tag(r["layers"]), **{k: q[k] for k in ("top1", "top5", "kl", "next_top5",
                     "accuracy", "ppl")}, "per_prompt_top5": q["per_prompt"].top5.tolist()})
    return pd.DataFrame(rows)


def base_row(subject: Subject, pr: Probe) -> dict:
    """The unchanged model on the probe (top-1/top-5 agreement 1 and KL 0 by construction)."""
    q = measure(subject.model, subject, pr)
    return {k: q[k] for k in ("top1", "top5", "kl", "accuracy", "ppl")}


def criterion_quality(subject: Subject, sets: pd.DataFrame, pr: Probe) -> pd.DataFrame:
    """`skip_table` of the criteria's sets (criterion, depth, draw, layers)."""
    return skip_table(subject, sets, pr)


def by_depth(cq: pd.DataFrame, metric: str = "top5") -> pd.DataFrame:
    """Criterion x depth: each informed criterion's value and the random draws' mean, min and max."""
    inf = cq[cq.criterion != "random"].pivot_table(index="depth", columns="criterion", values=metric)
    rnd = cq[cq.criterion == "random"].groupby("depth")[metric].agg(["mean", "min", "max"]).add_prefix("random_")
    return inf.join(rnd).reset_index()


def budget(P: dict, n_layers: int, n_seeds: int) -> str:
    """What the profile runs, in one line."""
    n_sets = len(skip_sets(n_layers, P))
    n_crit = len(P["fractions"]) * (3 + P["n_random"])
    return (f"{n_sets} skip sets ({n_layers} single layers + contiguous runs of {min(P['run_lengths'])}-"
            f"{max(P['run_lengths'])}{', subsampled to ' + str(P['runs_per_length']) + ' starts per length' if P.get('runs_per_length') else ', every start'}), "
            f"{n_crit} criterion sets ({len(P['fractions'])} depths x (3 criteria + {P['n_random']} random draws)), "
            f"4 healed removals (one per criterion) x {n_seeds} seeds "
            f"({P['heal_steps']} steps each), {len(P['precisions'])} precisions, {P['n_qual']} qualitative prompts")


def heal_sets(sets: pd.DataFrame, n_layers: int, fraction: float) -> pd.DataFrame:
    """The removals to heal: each criterion's set (random: its first draw) at the depth nearest `fraction`."""
    d = depths(n_layers, [fraction])[0]
    return sets[(sets.depth == d) & (sets.draw == 0)].reset_index(drop=True)


def best_adapter(subject: Subject, root: Path | None = None) -> tuple[Path | None, str]:
    """The best chapter-05 adapter cached for this model (highest exact match, then lowest eval loss, over every
    evaluated adapter under results/lora/<fingerprint>/), or None and why not."""
    base = Path(root or results_dir() / "lora") / subject.fingerprint[:12]
    cands = []
    for ev in sorted(base.glob("*/*/eval-*.json")) if base.exists() else []:
        r = read_json(ev)
        if r and "exact_match" in r:
            cands.append((-r["exact_match"], r.get("eval_loss", np.inf), ev.parent, ev.parent.parent.name))
    if not cands:
        return None, "no chapter-05 adapter is cached for this model (run chapter 05 first): not available"
    em, loss, path, fam = min(cands, key=lambda c: (c[0], c[1]))
    return path, (f"best of {len(cands)} cached chapter-05 adapters: {path.name} ({fam}, exact match {-em:.2f}, "
                  f"eval loss {loss:.3f})")


def skip_check(subject: Subject, layers: Sequence[int], prompts: Sequence[str]) -> pd.DataFrame:
    """`skipping.check` with the checkpoint saved under results/compression/checkpoints/, as a one-row table."""
    path = results_dir() / "compression" / "checkpoints" / f"{subject.fingerprint[:12]}-skip{tag(layers)}"
    return pd.DataFrame([check(subject, layers, prompts, path)])


def qualitative_suite(subjects: dict[str, Subject], healed: tuple[Subject, object] | None, adapter: Path | None,
                      P: dict) -> pd.DataFrame:
    """The qualitative prompts under every configuration: each precision, the healed skip (smaller model + its
    healing adapter) and the best chapter-05 adapter on the fp32 model, when given."""
    n, g = P["n_qual"], P["qual_tokens"]
    out = [qualitative.run(k, s, n, g) for k, s in subjects.items()]
    if healed is not None:
        small, ad = healed
        with attach(small, ad):
            out.append(qualitative.run(f"healed {small.name.rsplit('-skip', 1)[-1]}", small, n, g))
    if adapter is not None:
        with attach(subjects["fp32"], adapter):
            out.append(qualitative.run(f"ch05 adapter ({adapter.parent.name})", subjects["fp32"], n, g))
    return pd.concat(out, ignore_index=True)


def healed_config(subject: Subject, rec: pd.DataFrame, examples: Sequence[dict], P: dict) -> tuple[Subject, object]:
    """The healed removal with the highest mean healed top-5 overlap (on the probe): its smaller model and its
    first seed's healing adapter (reused from the cache)."""
    he = rec[rec.state == "healed"]
    best = he.groupby("skipped", sort=False).top5.mean().idxmax()
    layers = [int(x) for x in _layers_of(best)]
    small = smaller(subject, layers)
    return small, heal(small, examples, P, int(he[he.skipped == best].seed.iloc[0]))


def _layers_of(skipped: str) -> list[int]:
    body = skipped[1:]
    if "-" in body:
        a, b = body.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in body.split(",")]
