"""Chapter 06's study: its profile, data and eval tasks, the base atlas and its hub, the sweep and format-ablation
runs, the tables the chapter shows (dimension effects, format table) and hub preservation (atlas diff of base vs
adapter on a block sweep)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ... import profiles, tasks
from ...evidence.judges import ApiJudge, Judge, RubricJudge, rank_agreement
from ...model.subject import Subject
from ...tasks import neutral
from ..adapters import (
    GEN_MARGIN,
    Adapter,
    EvalSet,
    Target,
    TrainConfig,
    adapted_subject,
    completion_ids,
    encode_pair,
    spearman_perm,
    train,
    train_tokenizer,
)
from ..atlas import diff, map_atlas
from .data import canonical, instruction_sets
from .formats import FORMATS, render_all
from .sweep import Task, hub_layers, sweep_configs, sweep_runs, target_of

# the hub needs total effects of blocks only: no heads, positions, direct effects or neutral-text specificity
MAP = {"heads": False, "positions": (), "progress": False, "direct": False, "neutral_prompts": 0}


def profile(name: str) -> dict:
    """Chapter 06's sizes in a profile: a copy of its `sft` entry in `atlas_core.profiles`."""
    return dict(profiles.get(name)["sft"])


def judges(use_api: bool | None = None) -> dict[str, Judge]:
    """{"rubric": RubricJudge()} plus {"api": ApiJudge.from_env()} when ATLAS_JUDGE_URL and ATLAS_JUDGE_MODEL are set
    (`use_api` False: never; True: required, a one-line error when unset)."""
    out: dict[str, Judge] = {"rubric": RubricJudge()}
    api = ApiJudge.from_env() if use_api is not False else None
    if use_api and api is None:
        raise ValueError("use_api=True needs ATLAS_JUDGE_URL and ATLAS_JUDGE_MODEL (and ATLAS_JUDGE_KEY) to be set")
    if api is not None:
        out["api"] = api
    return out


def contains_reference(text: str, ex: dict) -> bool:
    """Exact match of an SFT answer: its first line contains the reference."""
    return ex["reference"].lower() in (text.strip().split("\n")[0].lower() if text.strip() else "")


def prepare(subject: Subject, P: dict) -> tuple[dict[str, list[dict]], dict[str, Task], dict]:
    """(training data, tasks, profile with `max_len`): one entry per sweep family (`set@volume`: the first `volume`
    training examples of the set) and per format (`fmt:<format>`: the canonical training set rendered). Each task
    holds the held-out eval examples, the validation examples that choose, neutral sentences for drift and a
    generation cap (its longest reference completion + `adapters.GEN_MARGIN`); `max_len` is the longest example."""
    configs = sweep_configs(P)
    names = list(dict.fromkeys(c["dataset"] for c in configs))
    sets = instruction_sets(max(int(c["volume"]) for c in configs), P["n_val"], P["n_eval"], names)
    canon = canonical(P["n_canon"], P["n_val"], P["n_canon_eval"])
    drift = neutral.sentences(P["n_drift"], seed=1)
    splits: dict[str, dict[str, list[dict]]] = {}
    data: dict[str, list[dict]] = {}
    for c in configs:
        fam = f"{c['dataset']}@{c['volume']}"
        data[fam] = sets[c["dataset"]]["train"][: int(c["volume"])]
        splits[fam] = sets[c["dataset"]]
    for fmt in FORMATS:
        splits[f"fmt:{fmt}"] = {k: render_all(v, fmt, subject.tokenizer) for k, v in canon.items()}
        data[f"fmt:{fmt}"] = splits[f"fmt:{fmt}"]["train"]
    tok = train_tokenizer(subject)
    max_len = max(len(encode_pair(tok, e, None)[0]) for s in splits.values() for v in s.values() for e in v)
    out = {}
    for fam, s in splits.items():
        cap = max(len(completion_ids(tok, e)) for e in s["eval"] + s["val"]) + GEN_MARGIN
        out[fam] = Task(EvalSet(fam, s["eval"], drift, contains_reference, cap, max_len, s["val"]))
    return data, out, {**P, "max_len": max_len}


def base_atlas(subject: Subject, P: dict, seeds: Sequence[int]):
    """The base model's block zero-ablation atlas on `P["atlas_families"]` (first seed, `P["atlas_prompts"]`
    prompts), gated on `P["n_gate"]` items (the hub is scored by the behaviour where a family passes the gate,
    else by KL: a disruption hub)."""
    fams = P["atlas_families"]
    return map_atlas(subject, fams, ["block"], ["zero"], list(seeds)[:1], P["atlas_prompts"], **MAP).gated(
        tasks.gate(subject, fams, n=P["n_gate"], seed=seeds[0]))


def hub_of(atlas, P: dict) -> dict:
    """The atlas's block zero-ablation hub without the layers of `P["hub_exclude"]` (layer 0 usually dominates any
    ablation: chapter 02 reports the hub without it too)."""
    return atlas.hub("block", "zero", exclude=tuple(P.get("hub_exclude", ())))


def plan(P: dict, seeds: Sequence[int], hub: int, n_layers: int) -> dict[str, list[tuple[dict, Target, TrainConfig]]]:
    """The runs: "sweep" (every configuration x seed, `sweep_configs`), "sweep_base" (the base model on each sweep
    set) and "formats" (the base model in every format, then one adapter per format x seed at `P["format"]`)."""
    layers = hub_layers(hub, n_layers, P["hub_k"])
    sw = sweep_runs(sweep_configs(P), seeds, layers, P, P["batch"])
    F = P["format"]
    none = (Target("none", (), ()), TrainConfig(0, 0.0, seed=0))
    fm = [({"family": f"fmt:{fmt}", "format": fmt, "config": "base model"}, *none) for fmt in FORMATS]
    fm += [({"family": f"fmt:{fmt}", "format": fmt, "config": fmt}, target_of(F["modules"], F["rank"], layers),
            TrainConfig(F["steps"], F["lr"], P["batch"], "adamw", int(s), P["max_len"]))
           for fmt in FORMATS for s in seeds]
    sets: dict[str, str] = {}  # one family per data set (volumes share their eval set)
    for lab, _, _ in sw:
        sets.setdefault(lab["family"].split("@")[0], lab["family"])
    return {"sweep": sw, "sweep_base": [({"family": f, "config": "base model"}, *none) for f in sets.values()], "formats": fm}


def budget(P: dict, runs: dict, seeds: Sequence[int]) -> str:
    """One line: how many adapters the profile trains and on what."""
    n_cfg = len(sweep_configs(P))
    return (f"sweep: {n_cfg} configurations x {len(seeds)} seeds = {len(runs['sweep'])} adapters (batch {P['batch']}, "
            f"base: {P['base']}); formats: {len(FORMATS)} x {len(seeds)} = {len(runs['formats']) - len(FORMATS)} adapters on "
            f"{P['n_canon']} canonical examples ({P['format']['steps']} steps), judged on {P['n_canon_eval']} held-out "
            f"prompts; the base model on {len(runs['sweep_base'])} sweep sets and {len(FORMATS)} formats")


def dimension_effects(sw: pd.DataFrame, metric: str = "eval_loss") -> pd.DataFrame:
    """Per sweep dimension and seed: the range (max - min) of `metric` over the dimension's configurations and the
    base configuration; then per dimension the mean range over seeds, its min and max, and the values compared."""
    base = sw[sw["dim"] == "base"]
    rows = []
    for dim, g in sw[sw["dim"] != "base"].groupby("dim", sort=False):
        both = pd.concat([base, g])
        per_seed = both.groupby("seed")[metric].agg(lambda v: float(np.nanmax(v) - np.nanmin(v)))
        rows.append({"dim": dim, "n_values": int(both["config"].nunique()), "values": ", ".join(
            ["base", *dict.fromkeys(g["value"])]), "n_seeds": int(per_seed.size), "range": float(per_seed.mean()),
            "range_min": float(per_seed.min()), "range_max": float(per_seed.max()),
            "per_seed": {int(k): float(v) for k, v in per_seed.items()}})
    return pd.DataFrame(rows).sort_values("range", ascending=False).reset_index(drop=True)


def hub_adapters(subject: Subject, runs: Sequence[tuple[dict, Target, TrainConfig]], data: dict[str, list[dict]],
                 config: str, n: int) -> list[Adapter]:
    """The trained adapters of one sweep configuration (its first `n` seeds; reused from the cache)."""
    return [train(subject, lab["family"], data[lab["family"]], t, tc) for lab, t, tc in runs
            if lab["config"] == config][:n]


def hub_survival(subject: Subject, atlas, ads: Sequence[Adapter], P: dict, seeds: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per adapter: base hub, adapted hub, whether it is the same layer, Spearman of the two layer maps with its
    permutation p; the atlas diff rows of every adapter). Each adapter is merged into a copy of the model and
    mapped like the base (same families, prompts, seed and gate); the hub and the maps leave out `P["hub_exclude"]`."""
    h = hub_of(atlas, P)
    base_scores = atlas.layer_scores(None, "block", "zero", h["metric"]).drop(h["excluded"], errors="ignore")
    rows, diffs = [], []
    for ad in ads:
        b = map_atlas(adapted_subject(subject, ad), P["atlas_families"], ["block"], ["zero"], list(seeds)[:1],
                      P["atlas_prompts"], **MAP).gated(atlas.solved)
        hb = hub_of(b, P)
        s = b.layer_scores(None, "block", "zero", h["metric"])
        both = base_scores.index.intersection(s.index)
        rho, p, min_p = spearman_perm(base_scores[both], s[both])
        rows.append({"adapter_seed": ad.train.seed, "layers": "-".join(map(str, ad.target.layers or ())) or "all",
                     "metric": h["metric"], "testable": bool(h["testable"]), "excluded": list(h["excluded"]), "base_hub": h["layer"],
                     "adapted_hub": hb["layer"], "same_hub": hb["layer"] == h["layer"], "rho": rho, "p_value": p,
                     "min_p": min_p, "n_layers": len(both)})
        diffs.append(diff(atlas, b, metric=h["metric"]).assign(adapter_seed=ad.train.seed))
    return pd.DataFrame(rows), pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame()


def agreement(df: pd.DataFrame, a: str = "rubric", b: str = "api") -> pd.DataFrame:
    """How far two judges agree (`rank_agreement`), over runs (mean eval scores) and over every judged answer;
    empty when judge `b` did not run."""
    if f"{b}_eval" not in df:
        return pd.DataFrame()
    runs = rank_agreement(df[f"{a}_eval"], df[f"{b}_eval"])
    xa = [x for s in df[f"{a}_scores"] for x in s]
    xb = [x for s in df[f"{b}_scores"] for x in s]
    return pd.DataFrame([{"over": "runs", **runs}, {"over": "answers", **rank_agreement(xa, xb)}])
