"""The chapter's pipeline: fit each target's directions, screen them and their controls on the selection prompts,
grade the chosen cells on the held-out prompts (`study`), summarise one row per target (`summary`), and audit
every part for leaks (`audit`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ... import tasks
from ...engine.sweep import Cache
from ...model.subject import Subject
from .directions import Directions, fit
from .splits import Split, leaks, templates, texts
from .targets import concept_target, family_target
from .units import best_layers, choose, grade, steer_unit, sweep_units, units


@dataclass
class Study:
    """Everything one steering study measured: directions, held-out splits, screen, held-out grading, best layers."""

    dirs: dict[str, Directions]
    sign: dict[str, int]
    splits: dict[str, Split]
    screen: pd.DataFrame  # real directions, every screened layer × α, selection prompts
    graded: pd.DataFrame  # best layers, every α, held-out prompts, with control statistics
    best: pd.DataFrame  # per target and sign: best layer (chosen on the selection prompts at the control α)
    per_prompt: pd.DataFrame  # held-out rows of the graded sweep
    solved: pd.DataFrame = field(default_factory=pd.DataFrame)  # `tasks.solved` on each family's select + eval items
    control_screen: pd.DataFrame = field(default_factory=pd.DataFrame)  # screened controls, layer × control α, select
    control_best: pd.DataFrame = field(default_factory=pd.DataFrame)  # each screened control's own (layer, sign)
    screen_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-prompt rows of `screen` (real directions)

    @property
    def items(self) -> dict[str, list]:
        """Held-out evaluation items per target."""
        return {t: sp.eval for t, sp in self.splits.items()}

    def untestable(self, target: str) -> str | None:
        """Why a family's claims cannot be tested on this model (None when they can; concepts have no gate)."""
        if self.sign[target] != 1:
            return None
        row = self.solved[self.solved["family"] == target]
        return None if len(row) and bool(row["testable"].iloc[0]) else tasks.untestable_why(row)

    def best_layer(self, target: str, sign: int = 1) -> int:
        """The layer chosen for `target` with this sign of α on the selection prompts."""
        b = self.best[(self.best["family"] == target) & (self.best["sign"] == sign)]
        return int(b["layer"].iloc[0])


def study(subject: Subject, families: Sequence[str], concepts: Sequence[str] = ("sentiment",), n: int = 8,
          n_fit: int = 16, layers: Sequence[int] | None = None, screen_alphas: Sequence[float] = (-0.4, 0.4),
          alphas: Sequence[float] = (-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8), control_alphas: Sequence[float] = (-0.4, 0.4),
          n_random: int = 10, n_shuffled: int = 3, n_screen_controls: int = 2, seed: int = 0, cache: Cache | None = None,
          progress: bool = False, solved: pd.DataFrame | None = None) -> Study:
    """Fit directions per target on its fit split; on its select split, screen the real direction over layers ×
    `screen_alphas` and the first `n_screen_controls` random and shuffled-label controls over the same layers ×
    `control_alphas` (the same strengths of each sign), each direction choosing its own best (layer, sign) by the
    same rule (`best_layers`, `choose`) on the same cells: the real direction chooses at `control_alphas` too, and
    its other screened strengths are descriptive (the layer × strength map). On the eval split, grade the best layer of each sign against the screened
    controls, each at its own best cell and the same |α| (`grade`); every control also runs at the real
    direction's layer and α (descriptive z / empirical p). Families are gated by `solved` (e.g. `tasks.gate`, on
    more items), else by `tasks.solved` on their select + eval items."""
    if sorted(-a for a in control_alphas if a < 0) != sorted(a for a in control_alphas if a > 0):
        raise ValueError(f"control_alphas {tuple(control_alphas)} must hold the same strengths of both signs: a "
                         "control chooses its sign as the real direction does, and is compared at the same |α|")
    if n_screen_controls < 1 or not (n_random or n_shuffled):
        raise ValueError("steering is graded against screened controls: n_screen_controls >= 1 and at least one "
                         "random or shuffled-label control are needed")
    if not set(control_alphas) <= set(screen_alphas):
        raise ValueError(f"screen_alphas {tuple(screen_alphas)} must include control_alphas {tuple(control_alphas)}: "
                         "the real direction chooses its cell at the strengths its controls are screened at")
    layers = list(range(subject.arch.n_layers) if layers is None else layers)
    controls = ("random", "shuffled")
    dirs, sign, splits, screens, bests, cscreens, cbest, graded, base = {}, {}, {}, [], [], [], [], [], []
    screen_rows = []
    for name in [*families, *concepts]:
        is_concept = name in concepts
        sp = (concept_target if is_concept else family_target)(subject, name, n, n_fit, seed)
        d = fit(subject, sp.fit, name, n_random, n_shuffled, seed)
        dirs[name], sign[name], splits[name] = d, -1 if is_concept else 1, sp
        us = units(d, layers, screen_alphas) + units(d, layers, control_alphas, controls, count=n_screen_controls)
        rows = sweep_units(subject, sp.select, us, sign[name], seed=seed, cache=cache, progress=progress,
                           desc=f"screen {name}")
        real = rows["kind"] == "real"
        screen_rows.append(rows[real].reset_index(drop=True))
        sc = grade(screen_rows[-1])
        sb = best_layers(sc[sc["alpha"].isin(control_alphas)])  # the same cells its controls choose among
        cs = rows[~real].groupby(["family", "kind", "idx", "layer", "alpha"])["effect"].mean().reset_index()
        cb = choose(best_layers(cs, ("family", "kind", "idx")), ("family", "kind", "idx"))
        screens.append(sc)
        bests.append(sb)
        cscreens.append(cs)
        cbest.append(cb)
        us = []
        for b in sb.itertuples():  # the real direction's best cell of each sign, every control there
            us += units(d, [b.layer], [a for a in alphas if np.sign(a) == b.sign])
            us += units(d, [b.layer], [a for a in control_alphas if np.sign(a) == b.sign], controls)
        us += [steer_unit(d, c.kind, c.idx, c.layer, a) for c in cb.itertuples()  # each screened control at its own
               for a in control_alphas if np.sign(a) == c.sign]
        ev = sweep_units(subject, sp.eval, us, sign[name], seed=seed, cache=cache, progress=progress, desc=f"grade {name}")
        graded.append(ev)
        if not is_concept:
            base += [rows, ev]
    per_prompt = pd.concat(graded, ignore_index=True)
    screen = pd.concat(screens, ignore_index=True)
    control_best = pd.concat(cbest, ignore_index=True)
    if solved is None:
        solved = tasks.solved(pd.concat(base) if base else pd.DataFrame(columns=["family", "item_id", "ld_clean", "ld_corrupt"]))
    best = pd.concat(bests, ignore_index=True)
    return Study(dirs, sign, splits, screen, grade(per_prompt, control_best=control_best), best, per_prompt,
                 solved, pd.concat(cscreens, ignore_index=True), control_best, pd.concat(screen_rows, ignore_index=True))


def study_from_profile(subject: Subject, families: Sequence[str], concepts: Sequence[str], S: dict, seed: int,
                       solved: pd.DataFrame | None = None, layers: Sequence[int] | None = None,
                       cache: Cache | None = None) -> Study:
    """`study` with the settings of a steering profile `S` (`profiles`' "steering" entry): the one mapping from
    profile to study, shared by every chapter that needs chapter 04's study (same arguments, so its sweeps are
    cache hits). Layers: every `S["layer_stride"]`-th unless given; `n_screen_controls` (default 2) and
    `screen_alphas` (default ±0.4) where the profile sets them."""
    layers = list(range(0, subject.arch.n_layers, S["layer_stride"])) if layers is None else list(layers)
    return study(subject, list(families), list(concepts), S["n"], S["n_fit"], layers, n_random=S["n_random"],
                 n_shuffled=S["n_shuffled"], n_screen_controls=S.get("n_screen_controls", 2), seed=seed,
                 screen_alphas=S.get("screen_alphas", (-0.4, 0.4)), cache=cache, solved=solved)


def summary(st: Study, n_layers: int) -> pd.DataFrame:
    """Per target, the (layer, sign) chosen on the selection prompts out of `n_candidates`, graded on the held-out
    prompts at the largest control strength of that sign: effect with CI, the strongest control (each screened
    control at its own chosen (layer, sign), `grade`) and the paired sign-flip p against it, and whether the target
    is testable on this model."""
    chosen = choose(st.best)
    g = st.graded.dropna(subset=["p_control"]).assign(sign=lambda x: np.sign(x["alpha"]).astype(int))
    g = g.merge(chosen[["family", "sign", "layer", "n_candidates"]], on=["family", "sign", "layer"])
    g = g.loc[g.assign(m=g["alpha"].abs()).groupby("family")["m"].idxmax()].copy()
    g["depth"] = g["layer"] / max(1, n_layers - 1)
    g["kind"] = ["concept" if st.sign[f] == -1 else "family" for f in g["family"]]
    why = {f: st.untestable(f) for f in g["family"]}
    g["testable"] = [why[f] is None for f in g["family"]]
    g["untestable_why"] = [why[f] or "" for f in g["family"]]
    g["held_out"] = [not st.splits[f].leaks() for f in g["family"]]
    cols = ["family", "kind", "layer", "depth", "sign", "alpha", "n_candidates", "effect", "effect_lo", "effect_hi",
            "control", "control_effect", "n_controls", "p_control", "n_random", "n_shuffled", "p_shuffled", "z_random",
            "z_shuffled", "kl", "n", "testable", "untestable_why", "held_out"]
    return g[[c for c in cols if c in g]].reset_index(drop=True)


def graded_controls(st: Study) -> pd.DataFrame:
    """Every control's mean held-out effect at the real direction's graded cells (family, layer, α), per draw."""
    pp = st.per_prompt
    ctl = pp[pp["kind"] != "real"].groupby(["family", "kind", "idx", "layer", "alpha"])["effect"].mean().reset_index()
    return ctl.merge(st.graded[["family", "layer", "alpha"]], on=["family", "layer", "alpha"])


def bucket_items(subject: Subject, st: Study, family: str, bucket: str, n: int, seed: int) -> list:
    """Eval items of a family in a length bucket: none shares a template or text with its fit or select prompts
    (the short bucket gives the study's own eval items, or more held-out items when `n` exceeds them)."""
    sp = st.splits[family]
    if bucket == "short" and n <= len(sp.eval):
        return sp.eval[:n]
    its, _ = tasks.validate(tasks.load_items(family, "synthetic", bucket), subject.tokenizer)
    held = {t for x in [*sp.fit, *sp.select] for t in templates(x)}
    held_txt = [t for x in [*sp.fit, *sp.select] for t in texts(x)]
    its = [it for it in its if not templates(it) & held and not any(h in t for t in texts(it) for h in held_txt)]
    return tasks.sample(its, n, seed)


def audit(st: Study, extra: dict[str, tuple[str, Sequence]] | None = None) -> list[str]:
    """Every leak between what a direction was fit or selected on and what it is graded on, for all the studies
    run on `st`: each target's fit / select / eval; every target's fit against every target's eval (knockout and
    off-target runs apply one target's direction to the others' prompts); and `extra` item sets graded with a
    target's direction (name -> (target, items), e.g. another length bucket). Empty = properly held out."""
    out = [f"{t}: {x}" for t, sp in st.splits.items() for x in sp.leaks()]
    fits = [p for sp in st.splits.values() for p in sp.fit]
    evals = [it for sp in st.splits.values() for it in sp.eval]
    out += [f"across targets: {x}" for x in leaks({"fit (all targets)": fits, "eval (all targets)": evals})]
    for name, (t, its) in (extra or {}).items():
        sp = st.splits[t]
        out += [f"{name}: {x}" for x in leaks({"fit": sp.fit, "select": sp.select, name: its}, sp.probe_words)]
    return out
