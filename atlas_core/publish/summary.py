"""What the results say, for a reader: the "What this chapter found" box of every chapter and the parts of the
one-page atlas (chapter 00), computed only from the recorded claims and their evidence.

Nothing here says more than a claim does: a line is a claim's statement (whole, or without its parentheses and
what follows its first ";"), a count of claims, or a rule filled from measured claims of at least medium
confidence, which it links to and quotes. Ranking: confidence, then how many of the grader's criteria a claim
meets, then the p-value against the control in its evidence (effect sizes are on different scales across
chapters, p-values are not). Chapter 01's claims are baselines (what later chapters may test), summed up in one
line, never ranked beside the findings. Rules read sites, layers and strengths from the statements the study
modules write and from `Atlas.hub_evidence`; a statement worded otherwise yields no rule. HTML has no blank line,
so it also works inside a markdown cell.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import pandas as pd

from ..evidence import claims as claims_mod

LEVELS = ("high", "medium", "low", "none")
HEADLINE = ("high", "medium")
BASELINE = "01"  # the chapter whose claims are gates and baselines, not interventions
COLORS = {"high": ("#ffffff", "#1a7f37"), "medium": ("#ffffff", "#0969da"), "low": ("#ffffff", "#6e7781"),
          "none": ("#24292f", "#d0d7de")}
BOX = ("border:1px solid #d0d7de;border-left:4px solid #0969da;border-radius:4px;padding:.5em 1em;margin:1em 0;"
       "background:#f6f8fa;color:#1f2328")
SMALL = "font-size:.85em;color:#57606a"
HEAD = '<p style="margin:1em 0 .2em;font-weight:600">{}</p>'  # a heading that stays out of the page's contents
UNTESTABLE = "not testable here"


@dataclass
class Section:
    """A piece of the page: HTML for the book, plain text for the notebook's text output (and nbval)."""
    html: str
    text: str

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


# ------------------------------------------------------------------------------------------- reading claims
def with_evidence(model: str, profile: str) -> pd.DataFrame:
    """`claims.table(model, profile)` plus an `evidence` column (each claim's evidence dict)."""
    return claims_mod.table(model, profile, evidence=True)


def prepared(claims: pd.DataFrame) -> pd.DataFrame:
    """A copy with a fresh index (anchors `claim-CH-i` use it), `evidence`, a number per chapter and `untestable`."""
    t = claims.reset_index(drop=True)
    t["evidence"] = [e if isinstance(e, dict) else {} for e in t.get("evidence", [None] * len(t))]
    t["why"] = t["why"].fillna("").astype(str)
    t["num"] = t.groupby("chapter").cumcount() + 1  # "02.3": the third claim chapter 02 recorded
    t["untestable"] = t["why"].str.startswith(f"✗ {UNTESTABLE}") | t["claim"].str.contains(UNTESTABLE, regex=False)
    return t


def reasons(why: str) -> list[str]:
    """The grader's reasons, split where the next one starts (a reason may itself contain "; ")."""
    return [r for r in re.split(r"; (?=[✓✗–] |capped at)", why) if r]


def p_value(ev: dict) -> float:
    p = ev.get("p_value") if isinstance(ev, dict) else None
    return float(p) if isinstance(p, int | float) and math.isfinite(p) else math.nan


def ranked(claims: pd.DataFrame) -> pd.DataFrame:
    """Strongest first: confidence, then criteria met, then the evidence's p-value, then recorded order."""
    t = prepared(claims) if "untestable" not in claims else claims
    level = t["confidence"].map({k: i for i, k in enumerate(LEVELS)}).fillna(len(LEVELS))
    met = [-sum(x.startswith("✓") for x in reasons(w)) for w in t["why"]]
    key = pd.DataFrame({"level": level, "met": met, "p": t["evidence"].map(p_value), "pos": range(len(t))}, t.index)
    return t.loc[key.sort_values(["level", "met", "p", "pos"]).index]


def short(statement: str, limit: int = 170, colon: bool = False) -> str:
    """A statement without its parentheses and what follows its first "; " (with `colon`, also what follows a
    ": " after its first 40 characters), cut at a word near `limit`."""
    s = statement
    while (t := re.sub(r"\s*\([^()]*\)", "", s)) != s:
        s = t
    s = re.sub(r"\s+", " ", s.split("; ")[0]).strip()
    if colon and (k := s.find(": ", 40)) > 0:
        s = s[:k]
    return s if len(s) <= limit else s[:limit].rsplit(" ", 1)[0] + " …"


def evidence_line(why: str) -> str:
    """The criteria met (✓) and failed (✗), without parentheses: one short line; the full reasons go in the fold."""
    return short(" · ".join(short(r, 80) for r in reasons(why) if r[:1] in "✓✗").replace("; ", ", "))


# --------------------------------------------------------------------------------------------- rendering
def badge(level: str) -> str:
    fg, bg = COLORS.get(level, COLORS["none"])
    return (f'<span class="atlas-badge" style="display:inline-block;padding:0 .5em;border-radius:.8em;font-size:.8em;'
            f'font-weight:600;line-height:1.6;color:{fg};background:{bg}">{html.escape(level)}</span>')


def _marked(text: str, as_html: bool = True) -> str:
    """A text line with [[level]] markers as badges (escaped HTML) or as [level] (text)."""
    pat = r"\[\[(high|medium|low|none)\]\]"
    return re.sub(pat, lambda m: badge(m[1]), html.escape(text)) if as_html else re.sub(pat, r"[\1]", text)


def _item(i: int, r, fold: bool = True) -> tuple[str, str]:
    """(HTML, text) of one claim: badge, statement, its evidence in one line; metric, counterfactual, control and
    reasons behind a fold."""
    ev = evidence_line(r.why)
    out = (f'<li id="claim-{r.chapter}-{i}" style="margin:.4em 0"><span style="{SMALL}">{r.chapter}.{r.num}</span> '
           f'{badge(r.confidence)} {html.escape(r.claim)}')
    if ev:
        out += f'<br><span style="{SMALL}">{html.escape(ev)}</span>'
    if fold:
        rows = "".join(f"<dt>{k}</dt><dd>{html.escape(str(v))}</dd>" for k, v in
                       (("Metric", r.metric), ("Counterfactual", r.counterfactual), ("Control", r.control)))
        why = "".join(f"<li>{html.escape(x)}</li>" for x in reasons(r.why))
        out += (f'<details style="{SMALL}"><summary>metric, counterfactual, control, reasons</summary>'
                f'<dl style="margin:.3em 0">{rows}<dt>Reasons</dt><dd><ul>{why}</ul></dd></dl></details>')
    return out + "</li>", f"  {r.chapter}.{r.num} [{r.confidence}] {r.claim}"


def _listing(t: pd.DataFrame, fold: bool = True) -> tuple[str, str]:
    parts = [_item(i, r, fold) for i, r in zip(t.index, t.itertuples())]
    return ('<ul style="list-style:none;padding-left:.2em">' + "".join(h for h, _ in parts) + "</ul>",
            "\n".join(x for _, x in parts))


def _counts(t: pd.DataFrame) -> str:
    """"3 low and 20 none; 2 of them not testable here" for the claims below medium ("" when there are none)."""
    weak = t[~t["confidence"].isin(HEADLINE)]
    c = weak["confidence"].value_counts()
    n_u = int(weak["untestable"].sum())
    return " and ".join(f"{c[k]} {k}" for k in LEVELS if k in c) + (f"; {n_u} of them {UNTESTABLE}" if n_u else "")


def gate_line(claims: pd.DataFrame, variants: bool = True) -> str | None:
    """Chapter 01's gate and baseline checks in one line, "Baselines: ..." (None when it recorded none)."""
    t = prepared(claims)
    t = t[t["chapter"] == BASELINE]
    if t.empty:
        return None
    flips, above, passed = {}, {}, {}
    for s in t["claim"]:
        if m := re.match(r"The model (flips|does not reliably flip) (\S+) \(([^)]+)\)", s):
            flips[(m[2], m[3])] = m[1] == "flips"
            if m[1] == "flips":
                passed.setdefault(m[2], []).append(m[3])
        elif m := re.match(r"The model is (above chance|not above chance) on (\S+) \(([^)]+)\)", s):
            above[(m[2], m[3])] = m[1] == "above chance"
    line = "Baselines: "
    if flips:
        fams = ", ".join(f"{f} ({', '.join(sorted(v))})" if variants else f for f, v in sorted(passed.items()))
        line += (f"the model passes the flip gate on {sum(flips.values())} of {len(flips)} family × variant cells"
                 + (f" ({fams})" if fams else "")
                 + (f" and is above chance on {sum(above.values())} of {len(above)}; " if above else "; "))
    return line + (f"{int(t['confidence'].isin(HEADLINE).sum())} of chapter {BASELINE}'s {len(t)} checks reach medium or "
                   "high confidence (they say what later chapters may test, not how the model works).")


# ------------------------------------------------------------------------------------- the chapter's box
def found_box(claims: pd.DataFrame, chapter: str, max_items: int = 8) -> str:
    """HTML of the "What this chapter found" box: its headline claims (high, then medium) with badges, then a
    line counting the claims below medium and those not testable here."""
    t = prepared(claims)
    t = ranked(t[t["chapter"] == chapter])
    body = '<p style="margin:0 0 .3em;font-weight:600">What this chapter found</p>'
    top = t[t["confidence"].isin(HEADLINE)]
    body += f'<p style="margin:.2em 0">{html.escape(gate_line(t))}</p>' if chapter == BASELINE and len(t) else ""
    if t.empty:
        body += "<p>This chapter recorded no claims for this model and profile.</p>"
    elif top.empty:
        body += "<p>No claim of this chapter reaches medium or high confidence.</p>"
    else:
        body += _listing(top.head(max_items), fold=False)[0]
        if len(top) > max_items:
            body += f'<p style="{SMALL}">… and {len(top) - max_items} more at medium or high, in the claims below.</p>'
    if weak := _counts(t):
        body += f'<p style="{SMALL};margin:.2em 0">Also recorded: {html.escape(weak)} (see the claims below).</p>'
    return f'<div class="atlas-found" style="{BOX}">{body}</div>'


# ----------------------------------------------------------------------------------- the one-page atlas
def hub_line(t: pd.DataFrame) -> str:
    """Where the behaviours live: the ablation hubs (chapter 02's hub claims) that hold, with confidence."""
    hubs = t[[isinstance(e, dict) and "hub" in e and "component" in e for e in t["evidence"]]]
    if hubs.empty:
        return "Where the behaviours live: no ablation-hub claim is recorded (chapter 02 has not run here)."
    if hubs["untestable"].all():
        why = hubs["evidence"].iloc[0].get("untestable_why", "the model solves no task family")
        return f"Where the behaviours live: {UNTESTABLE}, {short(why)}."
    held = ranked(hubs[hubs["confidence"].isin(HEADLINE)])
    if held.empty:
        return f"Where the behaviours live: no ablation hub holds above low confidence ({len(hubs)} tested)."
    groups: dict[str, list[str]] = {}
    for r in held.itertuples():
        ev, ex = r.evidence, r.evidence.get("excluded") or []
        key = f"{ev.get('method', '?')}-ablation hubs" + (f" with layer {', '.join(map(str, ex))} set aside" if ex else "")
        groups.setdefault(key, []).append(f"{ev['component']} layer {ev['hub']} [[{r.confidence}]]")
    return ("Where the behaviours live: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
            + " (each chosen on half the prompts and tested on the other half).")


def five_lines(claims: pd.DataFrame, model: str, profile: str, about: str = "") -> Section:
    """The summary up front: the model; the baselines; where the behaviours live; the strongest result of each
    intervention chapter; what failed (or that nothing holds)."""
    t = prepared(claims)
    who = f"Model: {model} (profile {profile}{'; ' + about if about else ''})"
    if t.empty:
        lines = [f"{who}.", "Claims: none recorded for this model and profile yet; execute the chapters, then this page."]
    else:
        c, chs = t["confidence"].value_counts(), sorted(t["chapter"].unique())
        lines = [f"{who}. {len(t)} claims from chapter{'s' * (len(chs) > 1)} {', '.join(chs)}: "
                 + ", ".join(f"{c.get(k, 0)} {k}" for k in LEVELS) + ".",
                 gate_line(t, variants=False) or f"Baselines: chapter {BASELINE} recorded no claims here.", hub_line(t)]
        best = []
        for ch in [x for x in chs if x != BASELINE]:
            r = ranked(t[t["chapter"] == ch]).iloc[0]
            best.append(f"{ch}: {short(r['claim'], 140, colon=True)} [[{r['confidence']}]]" if r["confidence"] in HEADLINE
                        else f"{ch}: nothing reaches medium confidence (best: {r['confidence']})")
        lines.append("Strongest result per chapter: " + ("; ".join(best) or "no intervention chapter has run") + ".")
        weak = ~t["confidence"].isin(HEADLINE)
        if weak.all():
            lines.append(f"Nothing holds: no claim reaches medium or high confidence ({_counts(t)}).")
        elif not weak.any():
            lines.append("What failed: nothing; every claim reaches medium or high confidence.")
        else:
            per = ", ".join(f"chapter {ch} {int(w.sum())} of {len(w)}" for ch, w in weak.groupby(t["chapter"]) if w.any())
            lines.append(f"What failed: {int(weak.sum())} of {len(t)} claims stay below medium ({_counts(t)}): {per}.")
    body = "".join(f'<li style="margin:.25em 0"><b>{html.escape(x.split(": ", 1)[0])}</b>: '
                   f'{_marked(x.split(": ", 1)[1])}</li>' for x in lines)
    return Section(f'<div class="atlas-summary" style="{BOX}"><ol style="margin:0;padding-left:1.3em">{body}</ol></div>',
                   "\n".join(f"{i}. {_marked(x, False)}" for i, x in enumerate(lines, 1)))


def by_chapter(claims: pd.DataFrame) -> Section:
    """The claims that hold (high, then medium), grouped by chapter; chapter 01's baselines as one line with its
    checks behind a fold. Weaker claims are counted here and listed by `negatives`."""
    t = prepared(claims)
    if t.empty:
        return Section("<p>No claims recorded yet.</p>", "No claims recorded yet.")
    h, x = [], []
    for ch, g in t.groupby("chapter", sort=True):
        top = ranked(g[g["confidence"].isin(HEADLINE)])
        h.append(HEAD.format(html.escape(f"Chapter {ch}")))
        x.append(f"Chapter {ch}")
        lh, lt = _listing(top)
        if ch == BASELINE:
            h.append(f"<p>{html.escape(gate_line(g))}</p><details><summary>the {len(top)} checks that hold</summary>"
                     f"{lh}</details>")
            x += [f"  {gate_line(g)}", lt]
        elif top.empty:
            h.append("<p>No claim of this chapter reaches medium or high confidence.</p>")
            x.append("  (nothing at medium or high)")
        else:
            h.append(lh)
            x.append(lt)
        if weak := _counts(g):
            h.append(f'<p style="{SMALL}">Also {html.escape(weak)}: see the negative results.</p>')
    return Section("".join(h), "\n".join(x))


def negatives(claims: pd.DataFrame) -> Section:
    """Claims whose evidence does not support them (low or none), by chapter (chapter 01's behind a fold), then
    the claims not testable here."""
    t = prepared(claims)
    h, x = [], []
    for title, part, fold in (("Did not hold (low or none)", t[~t["confidence"].isin(HEADLINE) & ~t["untestable"]], True),
                              (UNTESTABLE.capitalize(), t[t["untestable"]], False)):
        h.append(HEAD.format(html.escape(title)))
        x.append(title)
        if part.empty:
            h.append("<p>None recorded.</p>")
            x.append("  none recorded")
        for ch, g in part.groupby("chapter", sort=True):
            lh, lt = _listing(ranked(g), fold)
            h.append(f"<details><summary>chapter {ch}: {len(g)} baseline checks</summary>{lh}</details>"
                     if ch == BASELINE and fold else f"<p>Chapter {html.escape(ch)}</p>{lh}")
            x += [f"Chapter {ch}", lt]
    return Section("".join(h), "\n".join(x))


# ------------------------------------------------------------------------------------ what to do if you edit
CATEGORIES = {"target": ("Which layers to target", "patching"), "keep": ("What not to remove", "ablation-hub"),
              "steer": ("Steering and direction edits: layers and strengths that work", "steering or direction-edit"),
              "finetune": ("Fine-tuning", "atlas-guided LoRA")}
NUM = r"(-?\d+(?:\.\d+)?)"
PATTERNS = {  # the statements the study modules write (patching, steering, lora); group 1 is the family
    "write": r"In (\S+), the strongest single write at the last token is (.+?) \(best of .*?restores " + NUM,
    "decision": r"In (\S+), the decision reaches the last position by layer (\d+) of .*?restores " + NUM,
    "cross": r"In (\S+), the fine-tune's change of the logit difference \([^)]*\) is (?:localized in|carried most by) "
             r"(.+?) \(best of .*?recovers " + NUM + " of it",
    "steer": r"Steering (\S+) along its contrastive direction at layer (\d+) \(([+−-])α = ([\d.]+)·‖h‖.*? moves the logit "
             r"difference ([\d.]+) (toward|away from) (.+?) \(effect .*?\), beyond the strongest",
    "knock": r"(Pushing|Ablating the direction of) (\S+) \(([^;]+);.*?\) removes " + NUM + " of its gap vs " + NUM
             + r" of (\d+) other families' gaps: selective \(",
    "lora": r"(\S+): atlas-guided LoRA \(([^)]+)\).*?, beats every strategy it was compared with",
}
TEMPLATES = {  # {f}: the families joined, {x}: their numbers joined, {k}: the grouping key; else the match groups
    "write": ("target", "To change the decision in {f}, target {k} at the last token: patching its clean value into the "
                        "corrupt run restores {x} of it on held-out prompts."),
    "decision": ("target", "To change the decision in {f}, edit the last-token residual stream at layer {k}: patching it "
                           "there restores {x} of the decision on held-out prompts."),
    "cross": ("target", "To undo or inspect a fine-tune's change of {1}, target {2}: writing the fine-tune's value there "
                        "into the base recovers {3} of the change on held-out prompts."),
    "steer": ("steer", "To steer {1}, add {3}{4}·‖h‖ along its contrastive direction after layer {2}, at the last "
                       "token: on held-out prompts this moved the logit difference {5} {6} {7}, beyond its controls."),
    "knock": ("steer", "{1} {2} ({3}) removed {4} of its gap vs {5} of {6} other families' gaps on held-out prompts: "
                       "use it to remove {2} selectively."),
    "lora": ("finetune", "To fine-tune {f}, put the LoRA adapters on the atlas's layers ({k}): that beat every strategy "
                         "it was compared with on held-out eval loss."),
}
GROUPED = {"write": 2, "decision": 2, "lora": 2}  # rules that gather families sharing match group N


@dataclass
class Rule:
    kind: str  # a key of CATEGORIES
    text: str
    rows: list[int]  # the supporting claims (indices of the prepared table)


def _joined(xs: list[str]) -> str:
    xs = list(dict.fromkeys(xs))
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def _keep_rule(hubs: list[tuple[int, dict]]) -> Rule:
    """"Do not remove" the ablation hubs that beat their control on held-out prompts."""
    sites: dict[tuple, str] = {}
    for _, ev in hubs:
        ex = ", ".join(map(str, ev.get("excluded") or []))
        sites.setdefault((ev["component"], ev["hub"]), f"{ev['component']} layer {ev['hub']} "
                         f"({ev['effect_minus_control']:+.2f}{' with layer ' + ex + ' set aside' if ex else ''})")
    ctl = "the median layer" if all(str(e.get("control", "")).startswith("median") for _, e in hubs) else "its control"
    what = {"ld_frac": "of the clean logit difference (as a fraction of it)"}.get(m := hubs[0][1].get("metric", ""), m)
    return Rule("keep", f"Do not remove, prune or {_joined([e.get('method', '?') for _, e in hubs])}-ablate "
                f"{_joined(list(sites.values()))}: on held-out prompts, ablating each removes that much more {what} "
                f"than ablating {ctl}.", [i for i, _ in hubs])


def rules(claims: pd.DataFrame) -> list[Rule]:
    """Practical rules, each filled from measured claims of at least medium confidence; none without one."""
    t = prepared(claims)
    t = ranked(t[t["confidence"].isin(HEADLINE) & ~t["untestable"]])
    hubs, groups, out = [], {}, []
    for i, r in zip(t.index, t.itertuples()):
        ev = r.evidence
        if "hub" in ev and "component" in ev and p_value(ev) <= 0.05 and ev.get("effect_minus_control", 0) > 0:
            hubs.append((i, ev))
            continue
        for name, pat in PATTERNS.items():
            if (m := re.match(pat, r.claim)) and "not clearly above" not in r.claim:
                if name in GROUPED:
                    groups.setdefault((name, m[GROUPED[name]]), []).append((i, m))
                else:
                    kind, text = TEMPLATES[name]
                    out.append(Rule(kind, text.format(None, *m.groups()), [i]))
                break
    for (name, key), got in groups.items():
        kind, text = TEMPLATES[name]
        out.append(Rule(kind, text.format(f=_joined([m[1] for _, m in got]), k=key,
                                          x=", ".join(m[len(m.groups())] for _, m in got)), [i for i, _ in got]))
    if hubs:
        out.append(_keep_rule(hubs))
    return sorted(out, key=lambda r: list(CATEGORIES).index(r.kind))


def edit_rules(claims: pd.DataFrame) -> Section:
    """"What to do if you edit this model": the rules by category, each linked to and quoting its claims; a
    category no claim supports says that no rule is supported yet."""
    t = prepared(claims)
    found = rules(t)
    if not found:
        s = ("No rule is supported yet: no claim of medium or high confidence says where or how to edit this model "
             "(see the negative results).")
        return Section(f"<p>{html.escape(s)}</p>", s)
    h, x = [], []
    for kind, (title, what) in CATEGORIES.items():
        mine = [r for r in found if r.kind == kind]
        none = f"No rule is supported yet: no {what} claim reaches medium confidence."
        h.append(HEAD.format(html.escape(title)) + ("" if mine else f"<p>{html.escape(none)}</p>"))
        x += [title] if mine else [title, f"  {none}"]
        items = []
        for rule in mine:
            src = t.loc[rule.rows]
            links = " ".join(f'<a href="#claim-{r.chapter}-{i}">{html.escape(r.chapter)}.{r.num}</a> {badge(r.confidence)}'
                             for i, r in zip(src.index, src.itertuples()))
            quotes = "".join(f'<blockquote style="margin:.3em 0 .3em 1em">“{html.escape(c)}”</blockquote>'
                             for c in src["claim"])
            items.append(f'<li style="margin:.4em 0">{html.escape(rule.text)}<br><span style="{SMALL}">from claim {links}</span>'
                         f'<details style="{SMALL}"><summary>the measured claim{"s" if len(src) > 1 else ""}, quoted'
                         f"</summary>{quotes}</details></li>")
            x.append(f"  - {rule.text} [from {', '.join(f'{r.chapter}.{r.num} {r.confidence}' for r in src.itertuples())}]")
        h.append("<ul>" + "".join(items) + "</ul>" if items else "")
    return Section("".join(h), "\n".join(x))
