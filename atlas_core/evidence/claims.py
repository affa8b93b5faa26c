"""Claims with a confidence computed from their evidence, never typed by hand.

Evidence keys (all optional; a criterion without its evidence counts as not met, "not measured"):
  seeds      seeds_replicated / n_seeds: met when the effect holds in every seed and n_seeds >= 3
  methods    methods_agreeing / n_methods: met when >= 2/3 of >= 2 methods agree
  control    ci_excludes_control (bool) or p_value: met when the CI excludes the control / p <= 0.05
  breadth    families_agreeing / n_families: met when >= half of >= 2 families agree
  testable   False when the model does not do the behaviour the claim is about (e.g. no family it solves):
             the claim is "not testable here" and grades none, whatever else the evidence says
  selection  a "best" chosen out of n_candidates > 1 must be tested on prompts it was not chosen on
             (selection = "held-out") or with a multiplicity correction ("holm", "bh"); otherwise its
             control criterion is not met. The reasons say how many candidates it was chosen from.
Grades: high = control + >= 2 other criteria, with no contradiction (a seed where the effect fails,
or methods disagreeing: the effect then depends on the seed or on the ablation chosen; too few seeds
is missing evidence, not a contradiction); medium = control + >= 1 other;
low = control alone, or other criteria without the control; none = nothing met. Breadth failing only
narrows a claim's scope, so it does not cap the grade. Re-executing a chapter recomputes the evidence, so a
claim whose evidence weakens loses confidence by itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import pandas as pd

from . import registry

SELECTIONS = ("held-out", "holm", "bh")


def criteria(ev: dict) -> dict[str, tuple[bool | None, str]]:
    """Each criterion of the module docstring: (met, reason); met is None where its evidence was not measured."""
    out: dict[str, tuple[bool | None, str]] = {}
    if ev.get("testable") is False:
        out["testable"] = (False, f"not testable here: {ev.get('untestable_why', 'the model does not do the behaviour')}")
    if "n_seeds" in ev:
        ok = ev["n_seeds"] >= 3 and ev.get("seeds_replicated", 0) == ev["n_seeds"]
        why = f"replicated in {ev.get('seeds_replicated', 0)}/{ev['n_seeds']} seeds"
        out["seeds"] = (ok, why if ev["n_seeds"] >= 3 else f"{why} (needs >= 3 seeds)")
    else:
        out["seeds"] = (None, "seeds not measured")
    if ev.get("n_methods", 0) >= 2:
        ok = ev.get("methods_agreeing", 0) / ev["n_methods"] >= 2 / 3
        out["methods"] = (ok, f"{ev.get('methods_agreeing', 0)}/{ev['n_methods']} methods agree")
    else:
        out["methods"] = (None, "one method only")
    if "ci_excludes_control" in ev:
        out["control"] = (bool(ev["ci_excludes_control"]),
                          "95% CI excludes the control" if ev["ci_excludes_control"] else "95% CI includes the control")
    elif "p_value" in ev:
        out["control"] = (ev["p_value"] <= 0.05, f"p = {ev['p_value']:.3g} against the control distribution")
    else:
        out["control"] = (None, "no control comparison")
    k = ev.get("n_candidates", 1)
    if k > 1 and out["control"][0] is not None:
        sel = ev.get("selection", "none")
        ok, why = out["control"]
        if sel in SELECTIONS:
            out["control"] = (ok, f"{why} (best of {k}, {'tested on held-out prompts' if sel == 'held-out' else sel + '-corrected'})")
        else:
            out["control"] = (False, f"{why}, but the best of {k} was tested on the prompts it was chosen on")
    if ev.get("n_families", 0) >= 2:
        ok = ev.get("families_agreeing", 0) / ev["n_families"] >= 0.5
        out["breadth"] = (ok, f"{ev.get('families_agreeing', 0)}/{ev['n_families']} families agree")
    else:
        out["breadth"] = (None, "one family only")
    return out


def grade(evidence: dict) -> tuple[str, list[str]]:
    """(confidence, reasons) from the evidence by the rules in the module docstring."""
    crit = criteria(evidence)
    if "testable" in crit:
        return "none", [f"✗ {crit['testable'][1]}"]
    control = crit["control"][0] is True
    others = sum(1 for k, (ok, _) in crit.items() if k != "control" and ok is True)
    contradicted = (evidence.get("seeds_replicated", 0) < evidence.get("n_seeds", 0)
                    or crit["methods"][0] is False)
    if control and others >= 2 and not contradicted:
        level = "high"
    elif control and others >= 1:
        level = "medium"
    elif control or others >= 1:
        level = "low"
    else:
        level = "none"
    reasons = [("✓ " if ok else "✗ " if ok is False else "– ") + why for ok, why in crit.values()]
    if control and others >= 2 and contradicted:
        reasons.append("capped at medium: contradicted by a seed or a method")
    return level, reasons


@dataclass
class Claim:
    statement: str
    metric: str
    counterfactual: str
    control: str
    evidence: dict = field(default_factory=dict)
    chapter: str = ""
    model: str = ""
    profile: str = ""
    tag: str = ""  # a stable machine id (e.g. "07.precision.nf4"): later code finds the claim without its wording

    @property
    def confidence(self) -> str:
        return grade(self.evidence)[0]

    @property
    def reasons(self) -> list[str]:
        return grade(self.evidence)[1]

    def row(self) -> dict:
        return {"chapter": self.chapter, "claim": self.statement, "confidence": self.confidence,
                "metric": self.metric, "counterfactual": self.counterfactual, "control": self.control,
                "why": "; ".join(self.reasons)}


def record(claims: list[Claim]) -> pd.DataFrame:
    """Append the claims to the run registry and return them as a table."""
    run_id = time.time_ns()
    for c in claims:
        registry.append("claim", **asdict(c), confidence=c.confidence, run_id=run_id)
    return frame(claims)


def frame(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in claims],
                        columns=["chapter", "claim", "confidence", "metric", "counterfactual", "control", "why"])


def latest(model: str, profile: str) -> list[Claim]:
    """The claims of each chapter's latest run for this model and profile, with their evidence."""
    recs = registry.read(kind="claim", model=model, profile=profile)
    last_run = {}
    for r in recs:
        last_run[r["chapter"]] = max(last_run.get(r["chapter"], 0), r.get("run_id", 0))
    keys = ("statement", "metric", "counterfactual", "control", "evidence", "chapter", "model", "profile")
    return [Claim(**{k: r[k] for k in keys}, tag=r.get("tag", "")) for r in recs
            if r.get("run_id", 0) == last_run[r["chapter"]]]  # records before `tag` existed read as tag ""


def table(model: str, profile: str, evidence: bool = False) -> pd.DataFrame:
    """The latest claims of each chapter for this model and profile (re-graded from their evidence); with
    `evidence`, each claim's evidence dict as a column."""
    claims = latest(model, profile)
    t = frame(claims)
    if evidence:
        t["evidence"] = [c.evidence for c in claims]
    return t
