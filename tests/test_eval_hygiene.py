"""Split hygiene: overlaps reported, training or selection on test refused."""

from __future__ import annotations

import shutil

import pytest

from protege.data.io import read_records, write_jsonl
from protege.data.samples import sample_path
from protege.errors import ProtegeError
from protege.evaluate.hygiene import check_splits, normalise_text, refuse_test_use
from protege.formats import TaskConfig


def test_normalise_text():
    assert normalise_text("  The CAT, sat!\n") == "the cat sat"


def test_shipped_sample_splits_are_clean():
    splits = {s: read_records(sample_path("nli", s)) for s in ("train", "dev", "test")}
    assert check_splits(splits, TaskConfig()) == {"ok": True, "pairs": []}


def test_overlaps_by_uid_and_by_normalised_input():
    task = TaskConfig()
    train = [
        {"uid": "a", "premise": "It rains.", "hypothesis": "Wet.", "label": "neutral"},
        {"uid": "b", "premise": "Sun", "hypothesis": "Dry", "label": "neutral"},
    ]
    test = [
        {"uid": "a", "premise": "Other", "hypothesis": "row", "label": "neutral"},
        {"uid": "z", "premise": "it  RAINS", "hypothesis": "wet", "label": "entailment"},
    ]
    report = check_splits({"train": train, "test": test}, task)
    assert not report["ok"]
    (pair,) = report["pairs"]
    assert pair["splits"] == ["train", "test"]
    assert pair["same_uid"] == 1 and pair["same_input"] == 1
    assert "a" in pair["examples"]


def test_refuses_test_file_as_training_or_selection(tmp_path):
    test = tmp_path / "test.jsonl"
    write_jsonl(test, [{"uid": "1", "premise": "p", "hypothesis": "h", "label": "neutral"}])
    copy = tmp_path / "renamed.jsonl"
    shutil.copy(test, copy)
    with pytest.raises(ProtegeError, match="training data is the test file"):
        refuse_test_use(test, test, "training")
    with pytest.raises(ProtegeError, match="selection"):
        refuse_test_use(copy, test, "selection")  # same bytes under another name
    refuse_test_use(sample_path("nli", "dev"), test, "selection")  # different data: fine
    refuse_test_use(None, test, "training")
    refuse_test_use("anli", "anli", "training")  # hub names: the split tells them apart
