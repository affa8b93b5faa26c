"""Baseline behaviour of a model on the suite: accuracy, answer probability, logit differences, with CIs."""

from __future__ import annotations

import numpy as np
import torch

from ..engine import batch
from ..evidence.stats import bootstrap_ci, proportion_ci
from .core import FAMILIES, TokItem, load_items, sample, validate, with_chat_template


@torch.inference_mode()
def last_logits(subject, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
    """[len(prompts), vocab] next-token logits at the last position (left padding, positions from the mask)."""
    out: list[torch.Tensor | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = subject.encode([prompts[i] for i in idx])
        logits = batch.last_logits(subject, enc["input_ids"], enc["attention_mask"]).cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return torch.stack(out) if out else torch.empty(0)


SCORES = ("correct", "corrupt_correct", "p_answer", "logit_diff_clean", "logit_diff_corrupt")


def score(subject, items: list[TokItem], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-item metrics on clean and corrupt prompts. Each item's numbers are kept in the sweep cache (keyed by
    the engine version, the model's fingerprint and the item's prompts and token ids), so the flip gates of
    later chapters read what chapter 01's baselines measured; a model with a PEFT adapter attached in place
    (same fingerprint, other function) is never cached."""
    from ..engine.sweep import Cache, code_version
    from ..paths import content_key

    cache = None if hasattr(subject.model, "peft_config") else Cache()
    keys = [content_key("score", code_version(), subject.fingerprint, it.prompt, it.corrupt, it.answer_id,
                        it.distractor_id, it.corrupt_answer_id) for it in items]
    hit = cache.get_many(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in hit]
    if todo:
        its = [items[i] for i in todo]
        a = torch.tensor([it.answer_id for it in its])
        d = torch.tensor([it.distractor_id for it in its])
        ca = torch.tensor([it.corrupt_answer_id for it in its])
        lc = last_logits(subject, [it.prompt for it in its], batch_size)
        lx = last_logits(subject, [it.corrupt for it in its], batch_size)
        r = torch.arange(len(its))
        new = {"correct": (lc.argmax(-1) == a).numpy().astype(float),
               "corrupt_correct": (lx.argmax(-1) == ca).numpy().astype(float),
               "p_answer": lc.softmax(-1)[r, a].numpy(), "logit_diff_clean": (lc[r, a] - lc[r, d]).numpy(),
               "logit_diff_corrupt": (lx[r, a] - lx[r, d]).numpy()}
        got = {keys[i]: {m: float(new[m][j]) for m in SCORES} for j, i in enumerate(todo)}
        if cache is not None:
            cache.put_many(got)
        hit = {**hit, **got}
    return {m: np.array([hit[k][m] for k in keys], dtype=float) for m in SCORES}


FLIP_GATE = 0.7  # a family is testable when the 95% lower bound of its flip rate reaches this


def flipped(ld_clean, ld_corrupt) -> np.ndarray:
    """Items the model solves in the sense localization needs: the clean prompt prefers the answer over the
    distractor (LD > 0) and the corrupt prompt flips that preference (LD < 0)."""
    return (np.asarray(ld_clean, float) > 0) & (np.asarray(ld_corrupt, float) < 0)


def solved(rows, gate: float = FLIP_GATE):
    """Per family: items, flipped items, flip rate with its Clopper-Pearson 95% CI, and `testable`
    (lower bound >= gate). `rows` is any table with family, item_id, ld_clean, ld_corrupt (a sweep's rows,
    or `score` output); an item seen several times (several units or seeds) counts once."""
    import pandas as pd

    its = pd.DataFrame(rows)[["family", "item_id", "ld_clean", "ld_corrupt"]].drop_duplicates(["family", "item_id"])
    its = its.assign(flipped=flipped(its["ld_clean"], its["ld_corrupt"]))
    out = []
    for fam, g in its.groupby("family", sort=True):
        rate, lo, hi = proportion_ci(int(g["flipped"].sum()), len(g))
        out.append({"family": fam, "n_items": len(g), "n_flipped": int(g["flipped"].sum()), "flip_rate": rate,
                    "flip_lo": lo, "flip_hi": hi, "testable": bool(lo >= gate)})
    return pd.DataFrame(out, columns=["family", "n_items", "n_flipped", "flip_rate", "flip_lo", "flip_hi", "testable"])


def _suite(subject, family: str, variant: str, bucket: str, chat: bool) -> list:
    raw = load_items(family, variant, bucket)
    return with_chat_template(raw, subject.tokenizer) if chat else raw


def scored(subject, families, n: int = 48, seed: int = 0, bucket: str = "short", variant: str = "synthetic",
           chat: bool = False):
    """(items, table): n sampled items per family and their clean/corrupt logit differences and flips
    (`chat`: the chat-template variant, `core.with_chat_template`)."""
    import pandas as pd

    its = [it for fam in families
           for it in sample(validate(_suite(subject, fam, variant, bucket, chat), subject.tokenizer)[0], n, seed)]
    m = score(subject, its) if its else {"logit_diff_clean": [], "logit_diff_corrupt": []}
    t = pd.DataFrame({"family": [it.family for it in its], "item_id": [it.id for it in its],
                      "ld_clean": m["logit_diff_clean"], "ld_corrupt": m["logit_diff_corrupt"]})
    return its, t.assign(flipped=flipped(t["ld_clean"], t["ld_corrupt"]))


def gate(subject, families, n: int = 48, seed: int = 0, bucket: str = "short", variant: str = "synthetic",
         chat: bool = False):
    """`solved` measured on n items per family (clean and corrupt forwards only): the flip gate a chapter applies
    before it localizes, steers or patches a family. More items than a chapter's own sample make the gate's
    lower bound meaningful (16 items need 16/16 flips to pass 0.7; 48 need about 40)."""
    return solved(scored(subject, families, n, seed, bucket, variant, chat)[1])


def untestable_why(table) -> str:
    """One line for a claim that cannot be tested: which families were tried and how often they flipped."""
    rates = ", ".join(f"{r.family} {r.n_flipped}/{r.n_items}" for r in table.itertuples())
    return (f"{'no family passes' if len(table) != 1 else 'the family does not pass'} the flip gate (clean LD > 0 "
            f"and corrupt LD < 0, 95% lower bound >= {FLIP_GATE}); flipped items: {rates or 'none measured'}")


CHOICES = {"agreement": 2}  # answers a model could be guessing among, where not all distinct answers compete


def _status(lo: float, hi: float, chance: float) -> str:
    return "above chance" if lo > chance else "below chance" if hi < chance else "at chance"


def baselines(subject, families=None, variants=("synthetic", "natural"), n: int = 50, seed: int = 0,
              bucket: str = "short", batch_size: int = 16, chat: bool = False):
    """One row per family x variant: accuracy, p(answer), logit differences clean/corrupt and the flip rate,
    each with a 95% CI (Clopper-Pearson for rates, studentized bootstrap for means), whether the model is at
    chance, and whether the family is `testable` (flip-rate lower bound >= FLIP_GATE: what later chapters
    require before they localize a behaviour).

    Chance for top-1 accuracy is 1 / (number of distinct answers in the family's items; 2 for agreement),
    i.e. a model that knows the answer type but guesses among its values; chance for the pairwise answer-vs-distractor
    accuracy is 0.5. The validation report (items dropped under this tokenizer) is in `df.attrs['validation']`.
    `chat`: every prompt wrapped in the tokenizer's chat template (`core.with_chat_template`; column `template`).

    `subject` may also be a list of subjects or model names: one table for all of them, with a `model` column."""
    import pandas as pd

    if isinstance(subject, (list, tuple)):
        from .. import load

        parts = [baselines(load(s) if isinstance(s, str) else s, families, variants, n, seed, bucket, batch_size, chat)
                 for s in subject]
        tables = []
        for p in parts:  # attrs hold DataFrames, which pd.concat cannot compare: concatenate bare copies
            t = p.assign(model=p.attrs["model"])
            t.attrs = {}
            tables.append(t)
        df = pd.concat(tables, ignore_index=True)
        df = df[["model"] + [c for c in df.columns if c != "model"]]
        df.attrs["validation"] = pd.concat([p.attrs["validation"].assign(model=p.attrs["model"]) for p in parts],
                                           ignore_index=True)
        df.attrs["model"] = ",".join(p.attrs["model"] for p in parts)
        return df

    rows, reports = [], []
    for fam in families or FAMILIES:
        for var in variants:
            raw = _suite(subject, fam, var, bucket, chat)
            if not raw:
                continue
            kept, rep = validate(raw, subject.tokenizer)
            reports.append(rep.assign(variant=var))
            its = sample(kept, n, seed)
            if not its:
                continue
            m = score(subject, its, batch_size)
            chance = 1.0 / CHOICES.get(fam, max(2, len({it.answer.strip() for it in raw})))
            row = {"family": fam, "variant": var, "template": "chat" if chat else "none", "bucket": bucket,
                   "n": len(its), "chance": chance}
            flips = flipped(m["logit_diff_clean"], m["logit_diff_corrupt"])
            for col, hits in (("accuracy", m["correct"]), ("pair_accuracy", m["logit_diff_clean"] > 0),
                              ("corrupt_accuracy", m["corrupt_correct"]), ("flip_rate", flips)):
                est, lo, hi = proportion_ci(int(np.sum(hits)), len(its))  # rates: exact interval
                row.update({col: est, f"{col}_lo": lo, f"{col}_hi": hi})
            for col, vals in (("p_answer", m["p_answer"]), ("logit_diff_clean", m["logit_diff_clean"]),
                              ("logit_diff_corrupt", m["logit_diff_corrupt"])):
                est, lo, hi = bootstrap_ci(vals, seed=seed)
                row.update({col: est, f"{col}_lo": lo, f"{col}_hi": hi})
            row["status"] = _status(row["accuracy_lo"], row["accuracy_hi"], chance)
            row["at_chance"] = row["status"] != "above chance"
            row["pair_status"] = _status(row["pair_accuracy_lo"], row["pair_accuracy_hi"], 0.5)
            row["testable"] = bool(row["flip_rate_lo"] >= FLIP_GATE)
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["validation"] = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame()
    df.attrs["model"] = getattr(subject, "name", "?")
    return df


def baseline_claims(base, runs: dict, **tags) -> list:
    """Per family x variant: "above chance" and "flips reliably (testable)", worded from the measured rates.

    base: `baselines` of the first seed; runs: {seed: baselines table} (replication over prompt samples)."""
    from ..evidence.claims import Claim

    def seeds_ok(r, ok) -> int:  # seeds in which this family x variant meets `ok(table)`
        return sum(bool((ok(t) & (t["family"] == r.family) & (t["variant"] == r.variant)).any()) for t in runs.values())

    out = []
    for r in base.itertuples():
        above = r.accuracy_lo > r.chance
        ev = {"ci_excludes_control": bool(above), "n_prompts": int(r.n), "n_seeds": len(runs),
              "seeds_replicated": seeds_ok(r, lambda t: t["accuracy_lo"] > t["chance"])}
        out.append(Claim(
            f"The model is {'above chance' if above else 'not above chance'} on {r.family} ({r.variant}): "
            f"top-1 accuracy {r.accuracy:.2f} [{r.accuracy_lo:.2f}, {r.accuracy_hi:.2f}] vs chance {r.chance:.2f}",
            metric="top-1 accuracy, Clopper-Pearson 95% CI over prompts", counterfactual="none (unmodified model)",
            control=f"chance = {r.chance:.3f}", evidence=ev, **tags))
        ev = {"ci_excludes_control": bool(r.testable), "n_prompts": int(r.n), "n_seeds": len(runs),
              "seeds_replicated": seeds_ok(r, lambda t: t["flip_rate_lo"] >= FLIP_GATE)}
        out.append(Claim(
            f"The model {'flips' if r.testable else 'does not reliably flip'} {r.family} ({r.variant}): flip rate "
            f"{r.flip_rate:.2f} [{r.flip_rate_lo:.2f}, {r.flip_rate_hi:.2f}] vs gate {FLIP_GATE} — "
            f"{'testable' if r.testable else 'not testable'} in later chapters",
            metric="flip rate (clean LD > 0 and corrupt LD < 0), Clopper-Pearson 95% CI",
            counterfactual="the corrupt prompt (one token replaced)", control=f"gate = {FLIP_GATE}", evidence=ev, **tags))
    return out


def template_flips(plain, chat):
    """Flip rate per family x variant without and with the chat template, side by side (two `baselines` tables)."""
    cols = ["n", "flip_rate", "flip_rate_lo", "flip_rate_hi", "testable"]
    key = ["family", "variant"]
    a, b = plain[key + cols].copy(), chat[key + cols].copy()
    a.attrs, b.attrs = {}, {}  # attrs hold DataFrames, which a merge cannot compare
    out = a.merge(b, on=key, how="outer", suffixes=("", "_chat"))
    return out.fillna({"n": 0, "n_chat": 0, "testable": False, "testable_chat": False}).astype(
        {"n": int, "n_chat": int, "testable": bool, "testable_chat": bool})
