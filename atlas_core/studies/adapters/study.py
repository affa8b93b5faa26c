"""Chapter 05's study: its profile, data, learning-rate search, headline and sweep runs, and the tables it shows.

`task_data` gives train / validation / eval examples (validation: the end of the training split, disjoint from
train; eval: the held-out split) with limits read off the data. Learning rate per strategy (Biderman et al. 2024:
at short budgets rankings flip with it): `lr_runs` trains every strategy at each rate of a log grid,
`run_grid(score="val")` scores validation loss only, `choose_lr` takes the argmin, `headline_runs(lr=...)` trains
each strategy at its own rate (the search seed's run is reused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd

from ... import profiles, tasks
from ...model.subject import Subject
from ..atlas import diff, map_atlas
from .data import TrainConfig, completion_ids, encode_pair, train_tokenizer
from .evaluation import EvalSet
from .grid import fmt_pm, summarize
from .surgery import adapted_subject
from .targeting import ALL_LINEAR, HEADLINE, MODULE_SETS, Target, control_target, target
from .training import Adapter, train

GEN_MARGIN = 2  # generation cap = longest reference completion (tokens, with EOS) + this


def profile(name: str) -> dict:
    """Chapter 05's sizes in a profile: a copy of its `lora` entry in `atlas_core.profiles`."""
    return dict(profiles.get(name)["lora"])


def split_val(examples: Sequence[dict], n_train: int, n_val: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) from one training split: validation = its last `n_val` items, train = up to `n_train`
    of the others, none sharing a prompt (or a fact, or an item's content key: `tasks.content_key`) with a
    validation item."""
    val = list(examples[len(examples) - n_val:]) if n_val else []
    seen = {e["prompt"] for e in val} | {e[k] for e in val for k in ("fact", "key") if k in e}
    rest = [e for e in examples[: len(examples) - n_val]
            if e["prompt"] not in seen and e.get("fact", None) not in seen and e.get("key", None) not in seen]
    return rest[:n_train], val


def family_examples(family: str, split: str, source: str = "completions", exclude: Sequence[str] = ()) -> list[dict]:
    """A family's train or eval examples: "completions" = the stored splits (`tasks.training_split`), "items" = derived
    from its task items (`tasks.item_examples`; `exclude`: prompts kept out of the eval split)."""
    if source == "items":
        return tasks.item_examples(family, split, exclude=exclude)
    if source != "completions":
        raise ValueError(f"source={source!r}: use 'completions' or 'items'")
    return tasks.training_split(family, split)


def task_data(subject: Subject, families: Sequence[str], P: dict, source: str = "completions",
              exclude: Sequence[str] = (), drift_families: Sequence[str] | None = None
              ) -> tuple[dict[str, list[dict]], dict[str, EvalSet], dict]:
    """(train examples, eval sets, profile with `max_len`) per family from the task suite (`family_examples`: `source`,
    `exclude`); each eval set carries the family's validation examples (`split_val`, `P["n_val"]`); drift prompts =
    the other families' eval prompts (of `drift_families`, default `tasks.TRAIN_FAMILIES`; same source).

    The limits come from the data: `max_len` is the longest tokenized train, validation or eval example (prompt,
    completion, EOS), so no example is cut before the loss; a family's generation cap is its longest reference
    completion (tokens, EOS included) + `GEN_MARGIN`, so the reference completions score exact match 1."""
    tv = {f: split_val(family_examples(f, "train", source), P["n_train"], P.get("n_val", 0)) for f in families}
    tr = {f: tv[f][0] for f in families}
    evals = {f: family_examples(f, "eval", source, exclude)[: P["n_eval"]] for f in families}
    drift = {f: [e["prompt"] for e in family_examples(f, "eval", source, exclude)[-P["n_drift"]:]]
             for f in (drift_families or tasks.TRAIN_FAMILIES)}
    tok = train_tokenizer(subject)
    max_len = max(len(encode_pair(tok, e, None)[0]) for f in families for e in tr[f] + tv[f][1] + evals[f])
    sets = {f: EvalSet(f, evals[f], [p for g, ps in drift.items() if g != f for p in ps],
                       partial(tasks.exact_match, f),  # a function the grid's helper process can be sent
                       max(len(completion_ids(tok, e)) for e in evals[f]) + GEN_MARGIN, max_len, tv[f][1])
            for f in families}
    return tr, sets, {**P, "max_len": max_len}


def headline_seeds(seeds: Sequence[int], P: dict) -> list[int]:
    """The chapter's seeds, extended to `P["n_seeds"]` (new ones: 1000, 1001, ...) where the profile asks for more."""
    out = [int(s) for s in seeds]
    new = (s for s in range(1000, 10**6) if s not in out)
    return out + [next(new) for _ in range(P.get("n_seeds", 0) - len(out))]


def lr_for(lr: float | pd.DataFrame | None, family: str, strategy: str, P: dict) -> tuple[float, str]:
    """(learning rate, family whose validation split chose it; "" = not chosen) from a float, None (the profile's
    `lr`) or a `choose_lr` table (the family's own row, else the strategy's row of a searched family)."""
    if lr is None or isinstance(lr, int | float):
        return float(P["lr"] if lr is None else lr), ""
    rows = lr[lr["strategy"] == strategy]
    if not len(rows):
        raise ValueError(f"no learning rate was chosen for strategy {strategy!r}")
    r = (rows[rows["family"] == family] if (rows["family"] == family).any() else rows).iloc[0]
    return float(r["lr"]), str(r["family"])


def headline_runs(atlas, subject: Subject, families: Sequence[str], seeds: Sequence[int], P: dict,
                  strategies: Sequence[str] | None = None, lr: float | pd.DataFrame | None = None,
                  pool: Sequence[str] | None = None) -> list[tuple[dict, Target, TrainConfig]]:
    """The base model plus every strategy x seed at identical steps and batch; the learning rate per strategy from
    `lr` (see `lr_for`). Controls are drawn against the atlas target (`control_target`; wrong-family from `pool`,
    default `families`; skipped where no other family has scores)."""
    runs = []
    for f in families:
        runs.append(({"family": f, "experiment": "headline"}, Target("none", (), ()), TrainConfig(0, 0.0, seed=0)))
        for s in seeds:
            for st in strategies or P.get("strategies") or HEADLINE:
                if (t := control_target(atlas, subject, f, st, s, P["k"], P["r"], pool or families)) is not None:
                    rate, src = lr_for(lr, f, st, P)
                    runs.append(({"family": f, "experiment": "headline", "lr_from": src}, t,
                                  TrainConfig(P["steps"], rate, P["batch"], "adamw", s, P.get("max_len"))))
    return runs


def lr_runs(atlas, subject: Subject, families: Sequence[str], seeds: Sequence[int], P: dict,
            pool: Sequence[str] | None = None) -> list[tuple[dict, Target, TrainConfig]]:
    """The learning-rate search: the headline strategies at every rate of `P["lrs"]` on the first
    `P["search_seeds"]` seeds of `P["search_families"]` (None: every family), scored on validation loss
    (`run_grid(score="val")`). The surgery adapter's runs (all-linear, sweep family, first seed) keep its
    checkpoints, so the chosen one is reused as it is; so are the chosen runs in the headline."""
    fams = [f for f in families if f in (P.get("search_families") or families)]
    runs = []
    for rate in P["lrs"]:
        for labels, t, tc in headline_runs(atlas, subject, fams, list(seeds)[: P.get("search_seeds", 1)], P,
                                           lr=rate, pool=pool or families):
            if t.strategy != "none":
                surgery = (labels["family"], t.strategy, tc.seed) == (P["sweep_family"], "all-linear", seeds[0])
                runs.append(({**labels, "experiment": "lr", **({"checkpoints": tuple(P["checkpoints"])} if surgery
                                                                else {})}, t, tc))
    return runs


def choose_lr(search: pd.DataFrame) -> pd.DataFrame:
    """Per (family, strategy) of a search grid: the learning rate of lowest validation loss (mean over the search
    seeds), how many rates and seeds it was chosen from, and whether it lies on the grid's edge (the best rate may
    then lie outside the grid)."""
    g = search.groupby(["family", "strategy", "lr"], sort=False)["val_loss"].agg(["mean", "size"]).reset_index()
    rows = []
    for (f, st), d in g.groupby(["family", "strategy"], sort=False):
        best = d.loc[d["mean"].fillna(np.inf).idxmin()]
        grid = sorted(d["lr"])
        rows.append({"family": f, "strategy": st, "lr": float(best["lr"]), "val_loss": float(best["mean"]),
                     "n_lrs": len(grid), "n_search_seeds": int(d["size"].min()),
                     "at_edge": len(grid) > 1 and best["lr"] in (grid[0], grid[-1])})
    return pd.DataFrame(rows)


def sweep_runs(atlas, arch, seed: int, P: dict,
               lr: float | pd.DataFrame | None = None) -> list[tuple[dict, Target, TrainConfig]]:
    """Module, rank and optimizer sweeps around the atlas-guided run (all modules, rank r, AdamW at the atlas
    strategy's rate from `lr`, see `lr_for`) on the sweep family."""
    f = P["sweep_family"]
    tc = TrainConfig(P["steps"], lr_for(lr, f, "atlas", P)[0], P["batch"], "adamw", seed, P.get("max_len"))
    base = target(atlas, f, arch, P["k"], "atlas", ALL_LINEAR, seed=seed, r=P["r"])
    runs = [({"family": f, "experiment": "modules", "value": "all"}, base, tc)]
    runs += [({"family": f, "experiment": "modules", "value": m}, replace(base, modules=MODULE_SETS.get(m, (m,))), tc)
             for m in P["modules"]]
    runs += [({"family": f, "experiment": "rank", "value": str(r)}, replace(base, r=r, alpha=2.0 * r), tc)
             for r in sorted({*P["ranks"], P["r"]})]
    runs += [({"family": f, "experiment": "optimizer", "value": o}, base, replace(tc, optimizer=o))
             for o in ["adamw", *P["optimizers"]]]
    return runs


def budget(name: str, P: dict, families: Sequence[str], strategies: Sequence[str], seeds: Sequence[int]) -> str:
    """One line: how many trainings the profile `name` asks of the search, the headline and the sweeps (runs the
    search already trained are reused: its runs at the chosen rates, and the sweeps' base run is the headline's)."""
    searched = [f for f in families if f in (P.get("search_families") or families)]
    n_search = len(strategies) * len(P["lrs"]) * min(P.get("search_seeds", 1), len(seeds)) * len(searched)
    n_head = len(families) * len(strategies) * len(seeds) - len(strategies) * min(P.get("search_seeds", 1),
                                                                                   len(seeds)) * len(searched)
    n_sweep = len(P["modules"]) + len({*P["ranks"]} - {P["r"]}) + len(P["optimizers"])
    return (f"budget ({name}): learning-rate search {len(strategies)} strategies x {len(P['lrs'])} rates "
            f"{list(P['lrs'])} x {P.get('search_seeds', 1)} seed(s) on {searched}; headline {len(families)} task(s) "
            f"x {len(strategies)} strategies x {len(seeds)} seeds of {P['steps']} steps (batch {P['batch']}), "
            f"evaluated on {P['n_eval']} held-out examples each; sweeps {n_sweep} runs; "
            f"{n_search + n_head + n_sweep} trainings in all")


def data_limits(train: dict[str, list[dict]], evalsets: dict[str, EvalSet], P: dict) -> str:
    """One line: the limits `task_data` read off the data and the number of train / validation / eval items."""
    caps = {f: ev.max_new_tokens for f, ev in evalsets.items()}
    sizes = {f: (len(train[f]), len(ev.val), len(ev.examples)) for f, ev in evalsets.items()}
    return (f"max_len {P['max_len']} tokens (longest example); generation caps {caps} (longest reference completion "
            f"+ {GEN_MARGIN}); train / validation / eval items {sizes}")


def sweep_adapter(subject: Subject, atlas, strategy: str, data: dict[str, list[dict]], lr: float | pd.DataFrame | None,
                  P: dict, seed: int, checkpoints: Sequence[int] = ()) -> Adapter:
    """The sweep family's adapter of one strategy at its chosen rate (`lr_for`), trained or reused from the cache:
    chapter 05's surgery adapter (all-linear, with checkpoints) and the atlas diff's (atlas)."""
    f = P["sweep_family"]
    t = target(atlas, f, subject.arch, P["k"], strategy, r=P["r"])
    tc = TrainConfig(P["steps"], lr_for(lr, f, strategy, P)[0], P["batch"], "adamw", seed, P["max_len"])
    return train(subject, f, data[f], t, tc, checkpoints=checkpoints)


def headline_table(head: pd.DataFrame, search: pd.DataFrame, k: int, n_layers: int) -> tuple[pd.DataFrame, str]:
    """The headline as mean ± sd over seeds per (family, strategy), base model first, and a note: the share of the
    all-linear parameters the atlas adapters train, and how many headline runs the search had already trained."""
    cols = ("n_trainable", "lr", "train_loss", "eval_loss", "exact_match", "drift")
    table = summarize(head, ["family", "strategy"], cols)
    table["strategy"] = pd.Categorical(table["strategy"], ["none", *HEADLINE])
    table = table.sort_values(["family", "strategy"]).reset_index(drop=True).drop(columns="lr_sd")
    lin = table[table.strategy.isin(["atlas", "all-linear"])].pivot(index="family", columns="strategy",
                                                                    values="n_trainable")
    notes = []
    if {"atlas", "all-linear"} <= set(lin.columns):
        notes.append(f"atlas-guided adapters train {lin['atlas'].mean() / lin['all-linear'].mean():.0%} of the "
                     f"all-linear parameters (by construction: {k} of {n_layers} layers)")
    reused = len(head.merge(search[["family", "strategy", "seed", "lr"]]))  # the search's runs at the chosen rate
    notes.append(f"{len(search)} search runs, {int((head['strategy'] != 'none').sum())} headline runs ({reused} of "
                 "them reused from the search)")
    return fmt_pm(table), "\n".join(notes)


def atlas_diff(subject: Subject, adapter: Adapter, families: Sequence[str], P: dict, seeds: Sequence[int]) -> pd.DataFrame:
    """Which components an adapter moved: the zero-ablation atlas (`P["diff_components"]`, `P["atlas_prompts"]`
    prompts) of the adapter merged into a copy of the subject, minus the subject's (`atlas.diff`)."""
    adapted = adapted_subject(subject, adapter)
    kw = {"heads": False, "positions": (), "progress": False, "neutral_prompts": 0, "direct": False}
    base = map_atlas(subject, families, P["diff_components"], ["zero"], seeds, P["atlas_prompts"], **kw)
    return diff(base, map_atlas(adapted, families, P["diff_components"], ["zero"], seeds, P["atlas_prompts"], **kw))
