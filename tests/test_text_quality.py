"""Reference-free text measurements on constructed texts whose answer is known."""

from atlas_core.evidence import text_quality as tq


def test_repetition_counts_repeated_ngrams():
    assert tq.repetition("the cat sat on the mat today") == 0.0
    assert tq.repetition("a b c a b c a b c") == 4 / 7  # 7 trigrams; the last 4 were seen before
    assert tq.repetition("one two") == 0.0


def test_loops_and_degenerate():
    assert tq.loops("I think that is it is it is it")
    assert tq.loops("no no no")
    assert not tq.loops("a varied answer with no loop at all")
    assert tq.degenerate("") and tq.degenerate("   ")
    assert tq.degenerate("go go go go")
    assert not tq.degenerate("Paris is the capital of France.")


def test_summary_and_words():
    s = tq.summary(["a b c", "x x x x"])
    assert s["words"] == 3.5 and s["degenerate"] == 0.5
    assert tq.words("  two   words ") == 2
