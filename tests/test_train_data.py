"""Targets with per-token span tags, length-grouped batches, dynamic padding, bad data."""

import json
import os

import pytest

from protege.data.samples import sample_path
from protege.errors import DataError
from protege.formats import TaskConfig, make_examples
from protege.train.data import collate, encode, length_grouped_batches, load_examples
from protege.train.loss import IGNORE


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    old = os.environ.get("PROTEGE_HOME")
    os.environ["PROTEGE_HOME"] = str(tmp_path_factory.getbasetemp() / "protege_home")
    from protege.students.seq2seq.build import load_tokenizer, resolve_model

    yield load_tokenizer(resolve_model("protege:tiny-t5"))
    if old is None:
        os.environ.pop("PROTEGE_HOME", None)
    else:
        os.environ["PROTEGE_HOME"] = old


CLS = 101  # the MiniLM (BERT) tokenizer's [CLS]: the tiny students' decoder start token
RECORD = {"premise": "Ada was born in Oslo.", "hypothesis": "Ada is Norwegian.", "label": "neutral"}


def test_targets_carry_span_tags_and_eos(tok):
    task = TaskConfig(format="label+rationale")
    ex = make_examples(task, {**RECORD, "rationale": "Birthplace is not nationality."})
    (enc,) = encode(ex, tok, max_source_len=64, max_target_len=64, decoder_start_id=CLS)
    label_ids = tok("Neutral", add_special_tokens=False)["input_ids"]
    rat_ids = tok(" Explanation: Birthplace is not nationality.", add_special_tokens=False)[
        "input_ids"
    ]
    assert enc.target_ids == label_ids + rat_ids + [tok.sep_token_id]
    assert enc.tags == [1] * len(label_ids) + [2] * (len(rat_ids) + 1)
    assert enc.input_ids == tok(ex[0].source)["input_ids"]


def test_multitask_examples_are_all_label_or_all_rationale(tok):
    task = TaskConfig(format="multitask")
    ex = make_examples(task, {**RECORD, "rationale": "Not stated."})
    predict, explain = encode(ex, tok, 64, 64, CLS)
    assert set(predict.tags) == {1} and set(explain.tags) == {2}


def test_truncation_keeps_eos(tok):
    task = TaskConfig(format="label+rationale")
    ex = make_examples(task, {**RECORD, "rationale": "word " * 100})
    (enc,) = encode(ex, tok, max_source_len=8, max_target_len=10, decoder_start_id=CLS)
    assert len(enc.target_ids) == 10 and enc.target_ids[-1] == tok.sep_token_id
    assert len(enc.input_ids) == 8


def test_collate_pads_dynamically_with_ignore_index(tok):
    task = TaskConfig(format="label+rationale")
    rows = [
        {**RECORD, "rationale": "short."},
        {**RECORD, "rationale": "a much longer reason here."},
    ]
    items = encode([e for r in rows for e in make_examples(task, r)], tok, 64, 64, CLS)
    b = collate(items, tok.pad_token_id)
    longest = max(len(e.target_ids) for e in items)
    assert b["labels"].shape == (2, longest)  # padded to the batch, not to a fixed length
    short = min(items, key=lambda e: len(e.target_ids))
    row = 0 if items[0] is short else 1
    assert (b["labels"][row, len(short.target_ids) :] == IGNORE).all()
    assert (b["tags"][row, len(short.target_ids) :] == 0).all()
    assert b["attention_mask"].sum().item() == sum(len(e.input_ids) for e in items)


def test_length_grouping_is_deterministic_complete_and_tight():
    src = [(i * 37) % 101 + 5 for i in range(200)]
    tgt = [(i * 53) % 61 + 3 for i in range(200)]
    a = length_grouped_batches(src, tgt, 8, seed=1, epoch=0, mega_batch=25)
    assert a == length_grouped_batches(src, tgt, 8, seed=1, epoch=0, mega_batch=25)
    assert a != length_grouped_batches(src, tgt, 8, seed=1, epoch=1, mega_batch=25)
    assert sorted(i for b in a for i in b) == list(range(200))

    def efficiency(batches):
        cost = sum(len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b)) for b in batches)
        return (sum(src) + sum(tgt)) / cost

    unsorted = [list(range(i, i + 8)) for i in range(0, 200, 8)]
    assert efficiency(a) > 0.85 > efficiency(unsorted)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_flagged_rows_and_missing_rationales_are_counted(tmp_path):
    rows = [
        {**RECORD, "rationale": "ok"},
        {**RECORD, "rationale": "", "flagged": "label outside the set"},
        {**RECORD},
    ]
    src = write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'rationale': missing"):
        load_examples(src, TaskConfig(format="label+rationale"))
    s = load_examples(src, TaskConfig(format="label+rationale", missing_rationale="skip"))
    assert (s.n_records, s.n_examples, s.skipped_flagged, s.skipped_missing_rationale) == (
        3,
        1,
        1,
        1,
    )


def test_malformed_dataset_errors_name_file_line_field(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(RECORD) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_examples(str(bad_json), TaskConfig())
    src = write(tmp_path / "lab.jsonl", [{**RECORD, "label": "maybe"}])
    with pytest.raises(DataError, match=r"lab.jsonl:1: field 'label': unknown label 'maybe'"):
        load_examples(src, TaskConfig())
    with pytest.raises(DataError, match="no such file"):
        load_examples(str(tmp_path / "nope.jsonl"), TaskConfig())


def test_shipped_samples_load():
    s = load_examples(str(sample_path("nli", "dev")), TaskConfig(), max_rows=10)
    assert s.n_examples == 10


def test_rationale_label_truncation_cuts_the_rationale_and_keeps_the_label(tok):
    task = TaskConfig(format="rationale+label")
    ex = make_examples(task, {**RECORD, "rationale": "word " * 100})
    (enc,) = encode(ex, tok, max_source_len=64, max_target_len=20, decoder_start_id=CLS)
    assert len(enc.target_ids) == 20 and enc.target_ids[-1] == tok.sep_token_id
    tail = tok(" Answer: Neutral", add_special_tokens=False)["input_ids"]
    assert enc.target_ids[-1 - len(tail) : -1] == tail
    assert tok.decode(enc.target_ids[:2]) == "explanation :"  # the connector stays too
    assert enc.label_reach == 20


def test_label_rationale_truncation_keeps_label_and_connector(tok):
    task = TaskConfig(format="label+rationale")
    ex = make_examples(task, {**RECORD, "rationale": "word " * 100})
    (enc,) = encode(ex, tok, max_source_len=64, max_target_len=8, decoder_start_id=CLS)
    assert tok.decode(enc.target_ids[:-1]).startswith("neutral explanation :")
    assert enc.label_reach == len(tok(" Neutral Explanation:", add_special_tokens=False).input_ids)


def test_generation_budget_shorter_than_the_label_is_raised(tok):
    from protege.train.config import GenerationConfig, TrainConfig
    from protege.train.trainer import generation_budget

    task = TaskConfig(format="rationale+label")
    ex = make_examples(task, {**RECORD, "rationale": "word " * 30})
    enc = encode(ex, tok, 64, 96, CLS)
    need = len(enc[0].target_ids)
    for asked, got in ((need - 1, need), (need, need), (need + 5, need + 5)):
        cfg = TrainConfig(task=task, generation=GenerationConfig(max_new_tokens=asked))
        assert generation_budget(cfg, task, enc) == got


def test_multitask_batches_keep_both_rows_of_a_record_together(tmp_path, tok):
    rows = [{**RECORD, "uid": str(i), "rationale": "r " * (i % 7 + 1)} for i in range(40)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_examples(str(path), TaskConfig(format="multitask"))
    enc = encode(data.examples, tok, 32, 32, CLS)
    src = [len(e.input_ids) for e in enc]
    tgt = [len(e.target_ids) for e in enc]
    batches = length_grouped_batches(src, tgt, 6, 0, 0, groups=data.groups)
    assert sorted(i for b in batches for i in b) == list(range(80))
    for b in batches:
        assert len(b) <= 6
        kinds = [data.examples[i].source.split(":")[0] for i in b]
        assert kinds.count("predict") == kinds.count("explain")  # every step trains both
        assert {enc[i].uid for i in b if kinds[b.index(i)] == "predict"} == {enc[i].uid for i in b}
