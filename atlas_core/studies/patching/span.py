"""Span and input patching: a 'diff' edit covering every token where clean and corrupt differ (`sweep_span`), and
the layer-0 input patch that checks the span is complete (`input_patch`, `input_check`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ... import tasks
from ...engine.batch import Batch, last_logits
from ...engine.interventions import Unit
from ...engine.sweep import sweep
from ...evidence import metrics
from ...model.subject import Subject
from .prompts import span_of
from .recovery import summarize
from .sites import SITE, expand


def sweep_span(subject: Subject, items: Sequence, units: Sequence[Unit], **kw) -> pd.DataFrame:
    """`sweep`, except that a 'diff' edit covers every token where clean and corrupt differ (position 'span').

    Items are grouped by their span; each group runs the units expanded to it (cached by `sweep` as usual).
    Rows gain `n_diff` (differing tokens) and `last_in_span` (the last token differs: every last-position
    residual patch is then sufficient by construction)."""
    groups: dict[tuple[int, ...], list] = {}
    for it in items:
        groups.setdefault(span_of(subject.tokenizer, it), []).append(it)
    frames, counts = [], {"computed": 0, "cached": 0}
    for sp, its in groups.items():
        exp = {u: expand(u, sp) for u in units}
        df = sweep(subject, its, list(exp.values()), **kw)
        for k in counts:
            counts[k] += df.attrs.get(k, 0)
        desc = pd.DataFrame([{**u.describe(), "unit": u.key.replace("@diff", "@span"), "n_edits": len(x.edits),
                              "position": "span" if x != u else str(u.edits[0].site.position), "_key": x.key}
                             for u, x in exp.items()]).set_index("_key")
        key = df["unit"].copy()
        for c in desc.columns:
            df[c] = key.map(desc[c])
        last = {it.id: len(subject.tokenizer(it.prompt)["input_ids"]) - 1 in sp for it in its}
        frames.append(df.assign(n_diff=len(sp), last_in_span=df["item_id"].map(last)))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[
        "seed", "family", "item_id", *SITE, "method", "unit", "logit_diff", "ld_clean", "ld_corrupt", "kl", "n_diff",
        "last_in_span"])
    out.attrs.update(counts)
    return out.astype({"layer": int, "head": int})


@torch.inference_mode()
def input_patch(subject: Subject, items: Sequence) -> pd.DataFrame:
    """The clean layer-0 residual input (token embeddings) written into the corrupt run at the first differing
    token ('diff') and at every differing token ('span'). The span patch turns the corrupt prompt into the
    clean one, so it must give the clean logit difference exactly: a check of the span, never a finding."""
    rows = []
    for fam, its in tasks.by_family(items).items():
        b = Batch.of_items(subject, its)
        clean, corrupt = b.runs["clean"]["ids"], b.runs["corrupt"]["ids"]
        base = {r: metrics.next_token(b.logits(r), b.logits("clean"), b.answer_ids, b.distractor_ids)["logit_diff"]
                for r in ("clean", "corrupt")}
        for pos, sel in (("diff", b.positions("diff")), ("span", (clean != corrupt) & b.mask.bool())):
            ids = torch.where(sel, clean, corrupt)
            lg = last_logits(subject, ids, b.mask)
            m = metrics.next_token(lg, b.logits("clean"), b.answer_ids, b.distractor_ids)
            rows.append(pd.DataFrame({"family": fam, "item_id": [it.id for it in its], "position": pos,
                                      "n_diff": sel.sum(1).cpu().numpy(), "logit_diff": m["logit_diff"], "kl": m["kl"],
                                      "ld_clean": base["clean"], "ld_corrupt": base["corrupt"]}))
    return pd.concat(rows, ignore_index=True)


def input_check(inp: pd.DataFrame) -> pd.DataFrame:
    """`input_patch`'s rows per family × position: most differing tokens patched, the largest |LD − LD_clean| (0 for
    a complete span) and the recovery over flipped prompts with its prompt count."""
    err = inp.assign(err=(inp["logit_diff"] - inp["ld_clean"]).abs()).groupby(["family", "position"])
    rec = summarize(inp.assign(component="input", layer=-1, head=-1, method="denoise"), by=("family", "position"))
    return err.agg(max_tokens=("n_diff", "max"), max_abs_error=("err", "max")).join(
        rec[["family", "position", "recovery", "n"]].set_index(["family", "position"]))
