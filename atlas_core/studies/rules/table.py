"""Chapter 08's "rules under test" table (`table`: one row and one Claim per rule) and chapter 00's one-line strip
(`strip`: the counts and one badge per rule, read from chapter 08's latest recorded rule claims)."""

from __future__ import annotations

import html

import pandas as pd

from ... import tasks
from ...evidence.claims import Claim, latest
from . import atlas_rules, claim_rules
from .catalog import ANCHOR, FAILS, HOLDS, RULES, UNTESTABLE, Finding, Rule, untestable
from .readers import cap, clean, load_atlas, lowest_of

COLUMNS = ["rule", "the rule", "verdict", "measured", "source", "confidence", "why"]
CLAIM_RULES = {5: claim_rules.rule5, 6: claim_rules.rule6, 7: claim_rules.rule7, 8: claim_rules.rule8,
               9: claim_rules.rule9, 10: claim_rules.rule10, 12: claim_rules.rule12, 13: claim_rules.rule13,
               14: claim_rules.rule14, 15: claim_rules.rule15}
ATLAS_RULES = {1: atlas_rules.rule1, 2: atlas_rules.rule2, 3: atlas_rules.rule3, 4: atlas_rules.rule4,
               16: atlas_rules.rule16}
COLORS = {HOLDS: "#2e7d32", FAILS: "#c62828", UNTESTABLE: "#9e9e9e"}


def findings(model: str, profile: str) -> dict[int, Finding]:
    """Each rule's finding from chapter 02's stored atlas and the latest tagged claims of chapters 02-07."""
    claims = [c for c in latest(model, profile) if c.chapter != "08"]
    atlas = load_atlas(model, profile)
    out: dict[int, Finding] = {}
    for rule in RULES:
        if rule.id in CLAIM_RULES:
            out[rule.id] = CLAIM_RULES[rule.id](claims, model, profile)
        elif atlas is None:
            out[rule.id] = untestable(f"chapter 02 has not run for {model}/{profile} (no stored atlas)", ("02",))
        else:
            order = list(atlas.meta.get("families") or tasks.FAMILIES)
            f = atlas_rules.rule11(atlas, claims, order) if rule.id == 11 else ATLAS_RULES[rule.id](atlas, claims)
            if not atlas.testable and f.verdict != UNTESTABLE:  # KL disruption only: no grade above low
                f.ceiling = lowest_of(f.ceiling, "low")
                f.why += "; disruption (KL) only, the model solves no task family: graded at most low"
            out[rule.id] = f
    return out


def claim_of(rule: Rule, f: Finding, model: str, profile: str) -> Claim:
    """The rule's row as a chapter-08 Claim (tag "08.rule<N>"), graded from its evidence capped at its source's."""
    ev, capped = cap(f.evidence, f.ceiling)
    ev = clean(ev | {"verdict": f.verdict, "rule": rule.id, "sources": list(f.sources)}
               | ({"capped_at_source": f.ceiling} if capped else {}))
    m = f.method or {"metric": "the source chapter's measurement", "counterfactual": "—", "control": "—"}
    return Claim(f"Rule ({rule.id}) \"{rule.text}\" {f.verdict} on {model}: {f.measured}", m["metric"],
                 m["counterfactual"], m["control"], ev, "08", model, profile, f"08.rule{rule.id}")


def table(model: str, profile: str) -> tuple[pd.DataFrame, list[Claim]]:
    """(table, claims): one row per rule (1)-(16) with its verdict (holds / fails / not testable here), the measured
    evidence in words, source chapters, confidence (graded, never above the source claim's) and why; and the
    rows as chapter-08 Claims for `record`."""
    rows, claims = [], []
    for rule, f in zip(RULES, findings(model, profile).values(), strict=True):
        c = claim_of(rule, f, model, profile)
        claims.append(c)
        why = f.why + (f" (grade capped at {f.ceiling}, the grade of what it reads)" if "capped_at_source" in c.evidence
                       else "")
        rows.append({"rule": rule.id, "the rule": rule.text, "verdict": f.verdict, "measured": f.measured,
                     "source": ", ".join(f.sources), "confidence": c.confidence, "why": why})
    return pd.DataFrame(rows, columns=COLUMNS), claims


def strip(model: str, profile: str) -> str:
    """HTML: "Rules under test on <model>: k hold, m fail, j not testable here" and one badge per rule linking to
    chapter 08's table, from chapter 08's latest rule claims; a line saying so when chapter 08 has not run."""
    got = {c.tag: c for c in latest(model, profile) if c.chapter == "08" and c.tag.startswith("08.rule")}
    if not got:
        return (f'<p class="rules-strip">Rules under test on {html.escape(model)}: chapter 08 has not run for this '
                f'model and profile (<a href="{ANCHOR}">the rules</a>).</p>')
    badges, n = [], {HOLDS: 0, FAILS: 0, UNTESTABLE: 0}
    for rule in RULES:
        c = got.get(f"08.rule{rule.id}")
        verdict = c.evidence.get("verdict", UNTESTABLE) if c else UNTESTABLE
        n[verdict] = n.get(verdict, 0) + 1
        title = f"({rule.id}) {rule.text}: {verdict}" + (f", confidence {c.confidence}" if c else ", not recorded")
        badges.append(f'<a href="{ANCHOR}" title="{html.escape(title, quote=True)}" style="display:inline-block;'
                      f"min-width:1.6em;margin:0 2px;padding:0 3px;border-radius:3px;color:#fff;text-align:center;"
                      f'text-decoration:none;background:{COLORS.get(verdict, COLORS[UNTESTABLE])}">{rule.id}</a>')
    head = (f"Rules under test on {html.escape(model)}: {n[HOLDS]} hold, {n[FAILS]} fail, "
            f"{n[UNTESTABLE]} not testable here")
    return f'<p class="rules-strip"><a href="{ANCHOR}">{head}</a> {"".join(badges)}</p>'
