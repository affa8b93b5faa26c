"""Task suite: data/ agrees with the generators, sizes, validation, splits, contrastive sets, baselines."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from atlas_core import tasks
from atlas_core.paths import data_dir
from atlas_core.tasks import store

MIN = {("synthetic", "short"): 300, ("natural", "short"): 50, ("synthetic", "medium"): 50, ("synthetic", "long"): 50}


@pytest.fixture(scope="module")
def tok():
    from atlas_core.model.tiny import shared_tokenizer

    return shared_tokenizer()


@pytest.fixture(scope="module")
def all_items():
    return tasks.load_items(None, variant=None, bucket=None)


def test_families_in_order():
    assert tasks.FAMILIES == ("factual_recall", "json_schema", "code_semantics", "copying", "induction",
                              "delimiter_tracking", "deobfuscation", "ioi", "arithmetic", "agreement", "antonyms",
                              "sequence_continuation")


def test_data_regenerates_byte_identically(tok):
    files = store.build_files(store.SEED, tokenizer=tok)
    files["manifest.json"] = store.manifest(files, store.SEED)
    bad = [rel for rel, b in files.items() if (data_dir() / rel).read_bytes() != b]
    assert not bad, f"data/ disagrees with the generators in {bad}: run `python -m atlas_core.tasks regenerate`"
    on_disk = {p.relative_to(data_dir()).as_posix() for p in data_dir().rglob("*") if p.is_file()}
    assert on_disk - set(files) == set(), "stray files in data/"


def test_validated_sizes_on_smollm2(tok, all_items):
    kept, report = tasks.validate(all_items, tok)
    assert list(report.family) == list(tasks.FAMILIES)
    assert (report.kept == report.total).all(), report  # generated against this tokenizer: nothing dropped
    for (variant, bucket), n in MIN.items():
        for fam in tasks.FAMILIES:
            got = [k for k in kept if k.family == fam and k.variant == variant and k.bucket == bucket]
            lo, hi = tasks.BUCKETS[bucket]
            assert len(got) >= n, (fam, variant, bucket, len(got))
            assert all(lo <= k.n_tokens <= hi for k in got)


def test_items_are_symmetric_probes(tok, all_items):
    ids = [it.id for it in all_items]
    assert len(set(ids)) == len(ids)
    for it in all_items:
        assert it.corrupt_answer == it.distractor and it.answer != it.distractor and it.prompt != it.corrupt
    kept, _ = tasks.validate(all_items[:200], tok)
    for k in kept:
        p, c = tok(k.prompt)["input_ids"], tok(k.corrupt)["input_ids"]
        assert p[: k.diff_pos] == c[: k.diff_pos] and p[k.diff_pos] != c[k.diff_pos]
        assert tok(k.prompt + k.answer)["input_ids"][-1] == k.answer_id


def test_some_facts_are_right():
    items = tasks.load_items("factual_recall", bucket=None, variant=None)
    caps = {it.meta["subject"]: it.answer for it in items if it.meta["relation"] == "capital"}
    for country, city in (("France", " Paris"), ("Japan", " Tokyo"), ("Australia", " Canberra"), ("Canada", " Ottawa")):
        assert caps.get(country, city) == city


def test_validation_counts_drops():
    it = tasks.load_items("ioi")[0]
    from dataclasses import replace

    from atlas_core.model.tiny import shared_tokenizer

    bad = [replace(it, answer=" Mary Jane"), replace(it, corrupt=it.corrupt + " and"), it]
    kept, rep = tasks.validate(bad, shared_tokenizer())
    row = rep.iloc[0]
    assert (row.total, row.kept, row.dropped_answer_not_single_token, row.dropped_length_mismatch) == (3, 1, 1, 1)


def test_malformed_line_names_file_and_line(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    good = tasks.load_items("ioi")[0]
    (d / "ioi.jsonl").write_text(good.to_json() + "\n" + '{"id": "x", "family": "ioi"}\n')
    with pytest.raises(ValueError, match=r"ioi\.jsonl:2: missing fields"):
        tasks.load_items("ioi", root=tmp_path)
    (d / "ioi.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"ioi\.jsonl:1: invalid JSON"):
        tasks.load_items("ioi", root=tmp_path)


def test_sample_and_hash_are_deterministic(all_items):
    a = tasks.sample(all_items, 30, seed=1)
    assert a == tasks.sample(all_items, 30, seed=1) and a != tasks.sample(all_items, 30, seed=2)
    assert len({x.id for x in a}) == 30
    assert tasks.sample(all_items[:5], 10, seed=0).__len__() == 5
    h = tasks.suite_hash(all_items[:50])
    assert h == tasks.suite_hash(list(all_items[:50])) and h != tasks.suite_hash(all_items[1:51])


@pytest.mark.parametrize("family", tasks.TRAIN_FAMILIES)
def test_training_splits(family):
    tr, ev = tasks.training_split(family, "train"), tasks.training_split(family, "eval")
    assert len(tr) >= 300 and len(ev) >= 100
    assert not {e["prompt"] for e in tr} & {e["prompt"] for e in ev}
    if family == "factual_recall":
        assert not {e["fact"] for e in tr} & {e["fact"] for e in ev}
    assert all(tasks.exact_match(family, e["completion"], e) for e in tr + ev)
    assert not tasks.exact_match(family, " nonsense", ev[0])


def test_json_exact_match_parses():
    ex = tasks.training_split("json_schema", "eval")[0]
    reordered = json.dumps(dict(reversed(list(ex["expected"].items()))))
    assert tasks.exact_match("json_schema", " " + reordered + "\nmore text", ex)
    assert not tasks.exact_match("json_schema", ' {"name": ', ex)


@pytest.mark.parametrize("name", tasks.FAMILIES + tasks.CONCEPTS)
def test_contrastive(name):
    pairs = tasks.contrastive(name)
    assert len(pairs) >= 100 and all(p != n for p, n in pairs)


def test_baselines_on_tiny_model():
    from atlas_core.model.archmap import ArchMap
    from atlas_core.model.subject import Subject
    from atlas_core.model.tiny import build

    model, tok = build("llama", n_layers=2, d=32)
    subj = Subject("tiny", model, tok, ArchMap.from_model(model), source="tiny")
    df = tasks.baselines(subj, families=("ioi", "agreement"), n=6)
    assert len(df) == 4 and set(df.family) == {"ioi", "agreement"}
    for col in ("accuracy", "accuracy_lo", "accuracy_hi", "p_answer", "logit_diff_clean", "logit_diff_corrupt",
                "chance", "status", "at_chance", "flip_rate", "flip_rate_lo", "testable"):
        assert col in df
    assert not df["testable"].any()  # a random model flips no family reliably
    assert (df.chance == 0.5).any()  # agreement: is/are
    assert len(df.attrs["validation"]) == 4


def test_baselines_for_several_models_in_one_call():
    from atlas_core.model.archmap import ArchMap
    from atlas_core.model.subject import Subject
    from atlas_core.model.tiny import build

    subs = []
    for fam in ("llama", "qwen2"):
        model, tok = build(fam, n_layers=2, d=32)
        subs.append(Subject(f"tiny-{fam}", model, tok, ArchMap.from_model(model), source="tiny"))
    one = tasks.baselines(subs[1], families=("ioi",), n=6)
    both = tasks.baselines(subs, families=("ioi",), n=6)
    assert list(both["model"]) == ["tiny-llama", "tiny-llama", "tiny-qwen2", "tiny-qwen2"]
    got = both[both.model == "tiny-qwen2"].drop(columns="model").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, one.reset_index(drop=True))
    assert set(both.attrs["validation"]["model"]) == {"tiny-llama", "tiny-qwen2"}


def test_baseline_claims_are_worded_from_the_evidence():
    def row(acc_lo, flip_lo):
        return {"family": "ioi", "variant": "synthetic", "n": 50, "accuracy": acc_lo + 0.1, "accuracy_lo": acc_lo,
                "accuracy_hi": acc_lo + 0.2, "chance": 0.1, "flip_rate": flip_lo + 0.1, "flip_rate_lo": flip_lo,
                "flip_rate_hi": min(1.0, flip_lo + 0.2), "testable": flip_lo >= tasks.FLIP_GATE}

    good = pd.DataFrame([row(0.5, 0.8)])
    bad = pd.DataFrame([row(0.05, 0.3)])
    g = tasks.baseline_claims(good, {1: good, 2: good, 3: good})
    b = tasks.baseline_claims(bad, {1: bad, 2: bad, 3: bad})
    assert "is above chance" in g[0].statement and "not above chance" in b[0].statement
    assert "flips ioi" in g[1].statement and "does not reliably flip" in b[1].statement
    assert [c.confidence for c in g] == ["medium", "medium"] and [c.confidence for c in b] == ["none", "none"]


def test_gate_scores_more_items_than_a_chapter_samples(tok):
    from conftest import tiny_subject

    g = tasks.gate(tiny_subject("llama", tok), ["ioi", "antonyms"], n=12)
    assert g["family"].tolist() == ["antonyms", "ioi"] and (g["n_items"] == 12).all() and not g["testable"].any()


# ---------------------------------------------------------------- chat-template variant
SIMPLE_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template", ["own", "simple"])
def test_chat_variant_keeps_lengths_equal_and_points_diff_pos_at_the_differing_token(tok, template):
    """The user turn holds the prompt, the assistant turn is open and the answer is the reply's first token; clean and
    corrupt keep one token length and diff_pos is the first templated token where they differ."""
    import copy

    t = copy.copy(tok)
    if template == "simple":
        t.chat_template = SIMPLE_TEMPLATE
    raw = [it for f in ("ioi", "antonyms", "factual_recall") for it in tasks.load_items(f, "synthetic", "short")[:40]]
    chat = tasks.with_chat_template(raw, t)
    kept, rep = tasks.validate(chat, t)
    assert len(kept) >= 40 and rep["dropped_length_mismatch"].sum() == 0
    for it in kept:
        assert it.prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\n" in it.prompt
        assert it.meta["template"] == "chat" and not it.answer.startswith(" ")
        p, c = t(it.prompt)["input_ids"], t(it.corrupt)["input_ids"]
        assert len(p) == len(c) == it.n_tokens
        assert p[: it.diff_pos] == c[: it.diff_pos] and p[it.diff_pos] != c[it.diff_pos]
        assert t(it.prompt + it.answer)["input_ids"] == p + [it.answer_id]
    plain = {it.id: it for it in tasks.validate(raw, t)[0]}
    shift = {it.diff_pos - plain[it.id].diff_pos for it in kept if it.id in plain}
    assert len(shift) == 1 and shift.pop() > 0  # the template adds one fixed prefix before every prompt


def test_chat_variant_without_a_template_is_a_clear_error(tok):
    import copy

    t = copy.copy(tok)
    t.chat_template = None
    assert not tasks.has_chat_template(t)
    with pytest.raises(ValueError, match="has no chat template"):
        tasks.with_chat_template(tasks.load_items("ioi", "synthetic", "short")[:2], t)


def test_baselines_with_the_chat_template_side_by_side(tok):
    from conftest import tiny_subject

    s = tiny_subject("llama", tok)
    plain = tasks.baselines(s, families=("ioi", "agreement"), variants=("synthetic",), n=6)
    chat = tasks.baselines(s, families=("ioi", "agreement"), variants=("synthetic",), n=6, chat=True)
    assert set(plain["template"]) == {"none"} and set(chat["template"]) == {"chat"}
    side = tasks.template_flips(plain, chat)
    assert list(side["family"]) == ["agreement", "ioi"]
    assert {"flip_rate", "flip_rate_chat", "n_chat", "testable_chat"} <= set(side.columns)
    assert tasks.gate(s, ["ioi"], n=6, chat=True)["n_items"].tolist() == [6]


def test_scores_are_cached_per_item_and_never_under_an_attached_adapter(tok, monkeypatch):
    """The gate's second call reads every item from the cache (no forward) with identical numbers, a sample of
    more items computes only the new ones, and a model with an in-place adapter is always recomputed."""
    import sys

    from conftest import tiny_subject

    baselines = sys.modules["atlas_core.tasks.baselines"]  # the module (the package exports a function of its name)
    s = tiny_subject("llama", tok, seed=3)
    calls = []
    real = baselines.last_logits
    monkeypatch.setattr(baselines, "last_logits", lambda subj, prompts, bs=16: calls.append(len(prompts)) or real(subj, prompts, bs))
    g1 = tasks.gate(s, ["ioi", "antonyms"], n=6, seed=5)
    assert calls == [12, 12]
    g2 = tasks.gate(s, ["ioi", "antonyms"], n=6, seed=5)
    assert calls == [12, 12] and g1.equals(g2)
    tasks.gate(s, ["ioi", "antonyms"], n=8, seed=5)  # the same 6 first items (sample is hash-ordered) + 2 new each
    assert calls[2:] == [4, 4]
    s.model.peft_config = {}  # what PEFT leaves on a model it adapted in place
    tasks.gate(s, ["ioi", "antonyms"], n=6, seed=5)
    assert calls[4:] == [12, 12]
