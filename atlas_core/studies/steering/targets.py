"""What a study steers: a task family (fit on its corrupt − clean prompts) or a concept (fit on contrastive
sentences, graded on probe prompts), each split into fit, select and eval samples held out from one another."""

from __future__ import annotations

from ... import tasks
from ...model.subject import Subject
from .probes import concept_items
from .splits import Split, has_word, split_by_template, template, templates


def family_target(subject: Subject, family: str, n: int, n_fit: int, seed: int = 0, bucket: str = "short") -> Split:
    """Fit pairs (corrupt, clean), select items and eval items of a family: validated items, disjoint in
    templates and texts (`split_by_template`)."""
    items, _ = tasks.validate(tasks.load_items(family, "synthetic", bucket), subject.tokenizer)
    fit_items, sel, ev = split_by_template(items, (n_fit, n, n), seed)
    if not (fit_items and sel and ev):
        raise ValueError(f"{family}: its {len(items)} items fall into fewer than 3 template groups, so fit, select and "
                         "eval prompts cannot be held out from one another")
    return Split(family, [(it.corrupt, it.prompt) for it in fit_items], sel, ev)


def concept_target(subject: Subject, concept: str, n: int, n_fit: int, seed: int = 0) -> Split:
    """Fit pairs (positive, negative), select and eval probe items of a concept. Probe templates are split between
    select and eval; fit sentences sharing a template or text with any probe prompt, or containing a probe word,
    are dropped before sampling."""
    items = concept_items(subject, concept)
    sel, ev = split_by_template(items, (n, n), seed)
    words = tuple(sorted({w.strip() for it in items for w in (it.answer, it.distractor)}))
    probe_tpl = {template(it.prompt) for it in items}
    probe_txt = {it.prompt for it in items}
    pool = [p for p in tasks.contrastive(concept) if not has_word(" ".join(p), words) and not templates(p) & probe_tpl
            and not any(q in t or t in q for t in p for q in probe_txt)]
    if not pool:
        raise ValueError(f"{concept}: every fit sentence shares a template, a text or a probe word with the probe prompts")
    return Split(concept, split_by_template(pool, (n_fit,), seed)[0], sel, ev, words)
