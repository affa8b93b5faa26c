"""The reader's summaries (atlas_core.publish.summary) from hand-built claim tables: ranking, the chapter box,
the one-page atlas's parts, the editing rules and the null case where nothing holds."""

from __future__ import annotations

import re

import pandas as pd

from atlas_core.evidence.claims import Claim, frame, record
from atlas_core.publish import summary as S

HIGH = {"p_value": 1e-4, "n_seeds": 3, "seeds_replicated": 3, "n_methods": 2, "methods_agreeing": 2}
MEDIUM = {"p_value": 0.01, "n_families": 2, "families_agreeing": 2}
LOW = {"p_value": 0.3, "n_families": 2, "families_agreeing": 2}
NONE = {"ci_excludes_control": False}
UNTESTABLE = {"testable": False, "untestable_why": "the model solves no task family"}


def hub_ev(layer: int, component: str = "block", p: float = 5e-5, effect: float = 0.91, **kw) -> dict:
    return {"hub": layer, "component": component, "method": "zero", "metric": "ld_frac", "excluded": [],
            "control": "median layer 10", "effect_minus_control": effect, "p_value": p, "n_candidates": 30,
            "selection": "held-out", "testable": True, "n_seeds": 3, "seeds_replicated": 3, **kw}


def table(*rows: tuple[str, str, dict]) -> pd.DataFrame:
    """(chapter, statement, evidence) rows -> the claims table with its evidence column, graded as recorded."""
    cs = [Claim(s, metric=f"metric of {s[:10]}", counterfactual="cf", control="ctl", evidence=ev, chapter=ch)
          for ch, s, ev in rows]
    t = frame(cs)
    t["evidence"] = [c.evidence for c in cs]
    return t


WRITE = ("In {f}, the strongest single write at the last token is the block of layer 23 (best of 180 on half the "
         "prompts): on held-out prompts patching it into the corrupt run restores {x} (95% CI 0.87–0.98); noising it "
         "removes 0.90")
DECISION = ("In {f}, the decision reaches the last position by layer 23 of 0–29: on held-out prompts its last-token "
            "residual restores {x} (95% CI 0.93–1.00, above 0.5), the changed tokens' residual there -0.04")
STEER = ("Steering {f} along its contrastive direction at layer 26 (+α = 0.4·‖h‖; layer and sign chosen out of 60 "
         "candidates on selection prompts) moves the logit difference 5.58 toward the positive word (effect +5.58, 95% "
         "CI +4.48 to +6.70, 8 held-out prompts), {verdict} the strongest of 12 controls screened the same way (random "
         "+0.10; paired sign-flip p = 0.0078); no prompting baseline or fluency cost measured")
KNOCK = ("Ablating the direction of {f} (its layer-21 direction projected out after every layer, every position; layer "
         "chosen out of 30 on selection prompts) removes 0.40 of its gap vs 0.02 of 5 other families' gaps: selective "
         "(difference +0.38, 95% CI +0.20 to +0.50; off-target KL 0.010)")
LORA = ("{f}: atlas-guided LoRA (3 layers ranked by ld_frac), learning rates searched per family, beats every strategy it "
        "was compared with on held-out eval loss (Δ vs random −0.050 (p 0.01); intersection-union p = 0.01 over 5 seeds, "
        "Holm 0.02 over 2 families)")
BASE = "The model is above chance on code_semantics (synthetic): top-1 accuracy 0.06 [0.01, 0.17] vs chance 0.05"
FLIPS = "The model flips copying (natural): flip rate 1.00 [0.93, 1.00] vs gate 0.7 — testable in later chapters"
NOFLIP = "The model does not reliably flip ioi (natural): flip rate 0.56 [0.41, 0.70] vs gate 0.7 — not testable in later chapters"


def realistic() -> pd.DataFrame:
    return table(
        ("01", BASE, {"ci_excludes_control": True, "n_seeds": 3, "seeds_replicated": 3}),
        ("01", FLIPS, {"ci_excludes_control": True, "n_seeds": 3, "seeds_replicated": 3}),
        ("01", NOFLIP, {"ci_excludes_control": False, "n_seeds": 3, "seeds_replicated": 0}),
        ("02", "block layer 0 is the zero-ablation hub (held-out +0.91 vs median layer 10, p = 5e-05; best of 30 layers)",
         hub_ev(0, n_methods=2, methods_agreeing=2)),
        ("02", "mlp layer 2 is the zero-ablation hub (excluding layer 0) (held-out +0.39 vs median layer 21)",
         hub_ev(2, "mlp", effect=0.39, excluded=[0], control="median layer 21")),
        ("02", "the attribution screen finds more of the exact top-10 attn/zero units than chance", {"p_value": 1e-5}),
        ("03", WRITE.format(f="ioi", x="0.78"), HIGH),
        ("03", WRITE.format(f="induction", x="0.47"), HIGH),
        ("03", DECISION.format(f="ioi", x="0.81"), MEDIUM),
        ("04", STEER.format(f="sentiment", verdict="beyond"), MEDIUM),
        ("04", KNOCK.format(f="antonyms"), MEDIUM),
        ("04", STEER.format(f="copying", verdict="but not reliably beyond"), LOW),
        ("04", "Steering factual_recall: not testable here (the family does not pass the flip gate)", UNTESTABLE),
        ("05", LORA.format(f="ioi"), MEDIUM),
    )


def test_found_box_puts_headline_claims_first_and_counts_the_rest():
    t = table(("02", "a weak claim", LOW), ("02", "a medium claim", MEDIUM), ("02", "a null claim", NONE),
              ("02", "the hub: not testable here", UNTESTABLE), ("02", "a strong claim", HIGH), ("03", "other", HIGH))
    box = S.found_box(t.drop(columns="evidence"), "02")  # the lead passes claims.table(...), without evidence
    assert "What this chapter found" in box and "\n\n" not in box  # safe inside a markdown cell
    assert box.index("a strong claim") < box.index("a medium claim")
    assert "a weak claim" not in box and "other" not in box
    assert "1 low and 2 none; 1 of them not testable here" in box
    assert S.found_box(t, "05").count("recorded no claims") == 1
    assert "recorded no claims" in S.found_box(t.iloc[:0], "02")
    none_held = S.found_box(table(("04", "x", LOW)), "04")
    assert "No claim of this chapter reaches medium or high confidence" in none_held


def test_ranking_breaks_ties_by_criteria_met_then_p_value():
    t = table(("02", "fewer criteria", {**HIGH, "p_value": 1e-9, "n_methods": 1}),  # medium: seeds + control
              ("02", "larger p", {**HIGH, "p_value": 0.01}), ("02", "smaller p", HIGH),
              ("02", "more criteria", {**HIGH, "p_value": 0.04, "n_families": 2, "families_agreeing": 2}))
    assert S.ranked(t)["claim"].tolist() == ["more criteria", "smaller p", "larger p", "fewer criteria"]


def test_baselines_get_their_own_line_not_the_findings_rank():
    t = realistic()
    lines = S.five_lines(t, "m", "p", about="llama, 30 layers").text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("1. Model: m (profile p; llama, 30 layers)")
    assert "passes the flip gate on 1 of 2 family × variant cells (copying)" in lines[1]
    assert "above chance on 1 of 1" in lines[1] and "code_semantics" not in lines[3]
    assert "block layer 0 [high]" in lines[2] and "mlp layer 2 [medium]" in lines[2] and "set aside" in lines[2]
    assert "02: block layer 0 is the zero-ablation hub [high]" in lines[3]  # short: no parentheses
    assert "03: In ioi, the strongest single write at the last token is the block of layer 23 [high]" in lines[3] and "05:" in lines[3]
    assert lines[4].startswith("5. What failed:") and "chapter 04 2 of 4" in lines[4]
    ch = S.by_chapter(t).text
    first = ch.split("Chapter 02")[0]
    assert "Baselines: the model passes the flip gate on 1 of 2 family × variant cells (copying (natural))" in first
    assert BASE in first and NOFLIP not in first  # failed checks: negatives
    neg = S.negatives(t)
    assert NOFLIP in neg.text and "Steering factual_recall: not testable here" in neg.text.split("Not testable")[1]
    assert STEER.format(f="copying", verdict="but not reliably beyond") in neg.text.split("Not testable")[0]


def test_rules_come_from_medium_claims_and_link_and_quote_them():
    t = realistic()
    rules = S.rules(t)
    kinds = [r.kind for r in rules]
    assert kinds == sorted(kinds, key=list(S.CATEGORIES).index) and set(kinds) == set(S.CATEGORIES)
    text = {r.text for r in rules}
    assert ("To change the decision in ioi and induction, target the block of layer 23 at the last token: patching "
            "its clean value into the corrupt run restores 0.78, 0.47 of it on held-out prompts.") in text
    assert any(r.startswith("To steer sentiment, add +0.4·‖h‖ along its contrastive direction after layer 26") for r in text)
    assert not any("copying" in r for r in text)  # "but not reliably beyond" at low: no rule
    assert any(r.startswith("Ablating the direction of antonyms (its layer-21 direction") for r in text)
    assert any(r.startswith("To fine-tune ioi, put the LoRA adapters on the atlas's layers (3 layers") for r in text)
    keep = next(r for r in rules if r.kind == "keep")
    assert "block layer 0 (+0.91)" in keep.text and "mlp layer 2 (+0.39 with layer 0 set aside)" in keep.text
    conf = S.prepared(t)["confidence"]
    assert all(conf[i] in S.HEADLINE for r in rules for i in r.rows)
    page = S.edit_rules(t).html + S.by_chapter(t).html
    for r in rules:
        for i in r.rows:
            ch = t.loc[i, "chapter"]
            assert f'href="#claim-{ch}-{i}"' in page and f'id="claim-{ch}-{i}"' in page
            assert f"“{S.html.escape(t.loc[i, 'claim'])}”" in page


def test_a_category_without_support_says_so():
    t = table(("03", WRITE.format(f="ioi", x="0.78"), HIGH))
    out = S.edit_rules(t).text
    assert out.count("No rule is supported yet") == 3 and "no steering or direction-edit claim" in out


def test_null_case_emits_no_rule_and_says_nothing_holds():
    t = table(("01", NOFLIP, NONE), ("02", "block layer 3 is the zero-ablation hub (held-out +0.10)", hub_ev(3, p=0.4)),
              ("03", WRITE.format(f="ioi", x="0.78"), LOW), ("04", STEER.format(f="ioi", verdict="beyond"), LOW),
              ("05", LORA.format(f="ioi"), UNTESTABLE))
    assert S.rules(t) == []
    assert S.edit_rules(t).text.startswith("No rule is supported yet")
    lines = S.five_lines(t, "m", "p").text.splitlines()
    assert lines[-1].startswith("5. Nothing holds: no claim reaches medium or high confidence")
    assert "no ablation hub holds above low confidence (1 tested)" in lines[2]
    assert all("nothing reaches medium" in x for x in lines[3].split(": ", 1)[1].split("; "))
    assert "(nothing at medium or high)" in S.by_chapter(t).text


def test_wording_the_patterns_do_not_know_yields_no_rule():
    odd = ("In ioi, that the decision reaches the last position by layer 23 of 0–29 is not confirmed: chosen for "
           "restoring 0.9 on half the prompts, its last-token residual restores 0.3 on held-out prompts")
    assert S.rules(table(("03", odd, HIGH), ("04", "Steering works somewhere", HIGH))) == []


def test_empty_and_untestable_tables_read_sensibly():
    empty = table()
    assert "Claims: none recorded" in S.five_lines(empty, "m", "p").text
    assert S.edit_rules(empty).text.startswith("No rule is supported yet")
    assert "None recorded" in S.negatives(empty).html
    unt = table(("02", "block: no zero-ablation hub can be localized — not testable here", {**hub_ev(0), **UNTESTABLE}))
    assert "Where the behaviours live: not testable here, the model solves no task family." in S.five_lines(
        unt, "m", "p").text


def test_html_is_escaped_and_reasons_fold_away():
    t = table(("02", "effect < 0.5 for <script>", MEDIUM))
    h = S.by_chapter(t).html
    assert "<script>" not in h and "effect &lt; 0.5" in h
    assert re.search(r"<details[^>]*><summary>metric, counterfactual, control, reasons</summary>", h)
    assert "✓ p = 0.01 against the control distribution" in h  # the one short evidence line


def test_with_evidence_reads_each_claims_latest_record():
    kw = dict(metric="m", counterfactual="c", control="k", chapter="02", model="sum-m", profile="sum-p")
    record([Claim("layer 3 is the hub", evidence=HIGH, **kw), Claim("other", evidence=LOW, **kw)])
    record([Claim("layer 3 is the hub", evidence=MEDIUM, **kw)])
    t = S.with_evidence("sum-m", "sum-p")
    assert t["claim"].tolist() == ["layer 3 is the hub"] and t["evidence"].tolist() == [MEDIUM]
    assert t["confidence"].tolist() == ["medium"]
