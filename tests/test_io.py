import json

import pytest

from protege.data.io import (
    read_records,
    rename_fields,
    require_fields,
    require_labels,
    write_jsonl,
)
from protege.data.samples import nli_rows, sample_path
from protege.errors import DataError


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataError, match=r"d.jsonl:3: not valid JSON"):
        read_records(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: expected a JSON object"):
        read_records(path)


def test_csv_parquet_and_jsonl_read_alike(tmp_path):
    rows = [{"premise": "p", "hypothesis": "h", "label": "neutral"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.csv").write_text("premise,hypothesis,label\np,h,neutral\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        got = [{k: v for k, v in r.items() if k != "_line"} for r in read_records(tmp_path / name)]
        assert got == rows, name
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "none.jsonl")


def test_field_checks_name_line_and_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"context": "p", "label": "neutral"})
        + "\n"
        + json.dumps({"context": "p", "label": "yes"})
        + "\n"
    )
    rows = rename_fields(read_records(path), {"premise": "context"})
    assert rows[0]["premise"] == "p"
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'hypothesis': missing"):
        require_fields(rows, ["premise", "hypothesis"], str(path))
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'label': unknown label 'yes'"):
        require_labels(rows, "label", ["entailment", "neutral", "contradiction"], str(path))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_jsonl(tmp_path / "o.jsonl", [{"a": 1, "_line": 4}])
    assert (tmp_path / "o.jsonl").read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def test_shipped_samples_are_balanced_and_deterministic():
    import random

    rows = read_records(sample_path("nli", "train"))
    labels = {r["label"] for r in rows}
    assert labels == {"entailment", "neutral", "contradiction"}
    assert nli_rows(10, random.Random(1), "x") == nli_rows(10, random.Random(1), "x")
    assert len(read_records(sample_path("summarization", "test"))) == 120
