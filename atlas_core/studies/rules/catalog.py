"""The original MI-Atlas study's rules (issue 25, (1)-(16)): id, short text, the chapters whose measurements test
each; and `Finding`, one rule's verdict on one model with its evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

HOLDS, FAILS, UNTESTABLE = "holds", "fails", "not testable here"
VERDICTS = (HOLDS, FAILS, UNTESTABLE)
ANCHOR = "08_robustness.html#rules-under-test"  # chapter 08's table, relative to the book's pages


@dataclass(frozen=True)
class Rule:
    id: int
    text: str
    chapters: tuple[str, ...]


RULES: tuple[Rule, ...] = (
    Rule(1, "the L0 MLP has the largest MLP ablation effect", ("02",)),
    Rule(2, "ablation methods change magnitudes but keep the top-3 layer ranking", ("02",)),
    Rule(3, "mean ablation of the residual stream gives all-zero effects", ("02",)),
    Rule(4, "answer-token positions dominate over the first token at every layer", ("02",)),
    Rule(5, "o_proj is the most parameter-efficient LoRA target", ("06",)),
    Rule(6, "atlas-guided LoRA matches all-linear exact match with far fewer parameters", ("05",)),
    Rule(7, "adapter effects concentrate in the last ~10% of layers", ("05",)),
    Rule(8, "the core circuit locks in early in training", ("05",)),
    Rule(9, "steering works only at some layers and its sign can reverse", ("04",)),
    Rule(10, "4-bit NF4 amplifies intervention sensitivity", ("07",)),
    Rule(11, "the hub depends on suite breadth (hub from 4 families vs all)", ("02",)),
    Rule(12, "rank 8 is the efficiency point and Adafactor the practical optimizer", ("06",)),
    Rule(13, "lower SFT loss goes with worse judged quality", ("06",)),
    Rule(14, "naive layer skipping is fatal", ("07",)),
    Rule(15, "steering beats prompting at a stated fluency cost", ("04",)),
    Rule(16, "the hub is a sink layer rather than a task layer", ("02",)),
)


@dataclass
class Finding:
    """One rule on one model: `verdict` (holds / fails / not testable here), the measured evidence in words,
    the evidence dict it is graded from (`evidence.claims.grade`), why that verdict, the source chapters, and
    `ceiling`: the confidence of the source claim it reads (the rule's grade never exceeds it; None: no claim)."""
    verdict: str
    measured: str
    evidence: dict
    why: str
    sources: tuple[str, ...] = ()
    ceiling: str | None = None
    method: dict = field(default_factory=dict)  # metric / counterfactual / control of the row's claim


def untestable(why: str, sources: tuple[str, ...] = (), measured: str = "—") -> Finding:
    """A "not testable here" finding (graded none)."""
    return Finding(UNTESTABLE, measured, {"testable": False, "untestable_why": why}, f"not testable here: {why}",
                   sources)


def inconclusive(measured: str, why: str, sources: tuple[str, ...], ceiling: str | None = None) -> Finding:
    """A measured result whose test cannot tell the rule's direction: "not testable here" at this run's size."""
    return Finding(UNTESTABLE, measured, {"testable": False, "untestable_why": f"inconclusive: {why}"},
                   f"not testable here (inconclusive at this run's size): {why}", sources, ceiling)
