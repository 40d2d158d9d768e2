"""Predictor and `protege predict`: records and strings, rationales, resumable files, bad rows."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from serve_util import nli_rows, trained_model

from protege.cli import main
from protege.errors import DataError, ProtegeError
from protege.formats import TaskConfig, save_task
from protege.formats import parse_output as parse
from protege.serve.batch import predict_file
from protege.serve.predictor import Predictor


@pytest.fixture(scope="session")
def tiny_nli(pytestconfig):
    return trained_model(pytestconfig)


@pytest.fixture(scope="session")
def predictor(tiny_nli):
    return Predictor.load(tiny_nli, batch_size=8)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_records_and_strings_give_the_same_prediction(predictor):
    rows = nli_rows("dev", 5)
    strings = [predictor.source(r) for r in rows]
    assert [p["label"] for p in predictor.predict(rows)] == [
        p["label"] for p in predictor.predict(strings)
    ]
    assert all(p["label"] in predictor.task.labels for p in predictor.predict(rows))


def test_rationale_on_request(predictor):
    rows = nli_rows("dev", 3)
    plain = predictor.predict(rows)
    full = predictor.predict(rows, with_rationale=True)
    assert all("rationale" not in p for p in plain)
    assert all(p["rationale"] and p["rationale"].startswith("the hypothesis") for p in full)
    assert [p["label"] for p in full] == [p["label"] for p in plain]


def test_parse_tolerates_uncased_connector():
    task = TaskConfig(format="label+rationale")
    p = parse(task, "neutral explanation : the text says so.")
    assert (p.label, p.rationale) == ("neutral", "the text says so.")
    assert parse(task, "neutral neutral").label is None


def test_multitask_student_explains_with_a_second_input(tmp_path):
    from protege.students.seq2seq.build import build_random_student

    d = build_random_student("t5", tmp_path / "m")
    save_task(TaskConfig(format="multitask"), d)
    p = Predictor.load(d, max_new_tokens=4)
    assert p.source("x") == "predict: x"
    out = p.predict(nli_rows("dev", 2), with_rationale=True)
    assert all(o["label"] in p.task.labels and isinstance(o["rationale"], str) for o in out)


def test_summarization_generates_text(tmp_path):
    from protege.students.seq2seq.build import build_random_student

    d = build_random_student("bart", tmp_path / "s")
    save_task(TaskConfig(type="summarization", input_template="{article}"), d)
    out = Predictor.load(d, max_new_tokens=5).predict([{"article": "a b c"}, "d e f"])
    assert [set(o) for o in out] == [{"text"}, {"text"}]


def test_predict_file_resumes_without_redoing(predictor, tiny_nli, tmp_path, monkeypatch):
    rows = nli_rows("dev", 20)
    src = write_rows(tmp_path / "in.jsonl", rows)
    full = predict_file(predictor, src, tmp_path / "full.jsonl", progress=False)
    assert (full.n_rows, full.n_resumed, full.n_malformed) == (20, 0, 0)
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["uid"] == rows[0]["uid"]
    # An interrupted run: one batch of 8 written, then killed while writing a ninth row.
    out = tmp_path / "out.jsonl"
    _interrupted_run(predictor, src, out, monkeypatch, model_dir=tiny_nli)
    real = predictor.predict
    partial = tmp_path / "out.jsonl.partial"
    with open(partial, "a") as f:
        f.write(lines[8][:17])  # the torn ninth line
    seen = []
    monkeypatch.setattr(predictor, "predict", lambda xs, **kw: seen.extend(xs) or real(xs, **kw))
    r = predict_file(predictor, src, out, progress=False, model_dir=tiny_nli)
    assert (r.n_resumed, r.n_predicted, len(seen)) == (8, 12, 12)

    def labels(text):
        return [(r["uid"], r["prediction"]["label"]) for r in map(json.loads, text.splitlines())]

    assert labels(out.read_text()) == labels("\n".join(lines))
    assert not list(tmp_path.glob("out.jsonl.*"))  # no partial, record or lock left
    with pytest.raises(ProtegeError, match="already exists"):
        predict_file(predictor, src, out, progress=False)


def _interrupted_run(predictor, src, out, monkeypatch, **kw):
    """Leave OUT.partial with one batch, as a run killed after its first batch does."""
    real = predictor.predict
    calls = []

    def interrupted(xs, **kw):
        calls.append(xs)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(xs, **kw)

    with monkeypatch.context() as m:
        m.setattr(predictor, "predict", interrupted)
        with pytest.raises(KeyboardInterrupt):
            predict_file(predictor, src, out, progress=False, **kw)


def test_resume_with_another_model_or_mode_is_refused(predictor, tiny_nli, tmp_path, monkeypatch):
    from protege.students.seq2seq.build import build_random_student

    src = write_rows(tmp_path / "in.jsonl", nli_rows("dev", 20))
    out = tmp_path / "out.jsonl"
    _interrupted_run(predictor, src, out, monkeypatch, model_dir=tiny_nli)
    other = build_random_student("t5", tmp_path / "other")
    save_task(TaskConfig(format="label+rationale"), other)
    with pytest.raises(ProtegeError, match=r"out.jsonl.partial: was written by .*not this one"):
        predict_file(Predictor.load(other), src, out, progress=False, model_dir=other)
    with pytest.raises(ProtegeError, match="was written with no --rationale"):
        predict_file(predictor, src, out, progress=False, model_dir=tiny_nli, with_rationale=True)
    with pytest.raises(ProtegeError, match="was written with --fast"):
        predict_file(predictor, src, out, progress=False, model_dir=tiny_nli, fast=False)
    assert len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 8  # untouched
    assert predict_file(predictor, src, out, progress=False, model_dir=tiny_nli).n_resumed == 8


def test_two_runs_on_one_output_cannot_both_write(predictor, tmp_path):
    import fcntl
    import os

    src = write_rows(tmp_path / "in.jsonl", nli_rows("dev", 4))
    fd = os.open(tmp_path / "out.jsonl.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds it
    try:
        with pytest.raises(ProtegeError, match="another `protege predict` is writing it"):
            predict_file(predictor, src, tmp_path / "out.jsonl", progress=False)
    finally:
        os.close(fd)
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_empty_input_and_unwritable_output(predictor, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no rows to predict"):
        predict_file(predictor, empty, tmp_path / "o.jsonl", progress=False)
    src = write_rows(tmp_path / "in.jsonl", nli_rows("dev", 2))
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ProtegeError, match="cannot create the output directory"):
        predict_file(predictor, src, blocked / "sub" / "o.jsonl", progress=False)


def test_partial_from_another_input_is_refused(predictor, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", nli_rows("dev", 4))
    other = write_rows(tmp_path / "other.jsonl", nli_rows("test", 4))
    predict_file(predictor, other, tmp_path / "o.jsonl", progress=False)
    (tmp_path / "o.jsonl").rename(tmp_path / "x.jsonl.partial")
    (tmp_path / "x.jsonl.partial.json").write_text(
        json.dumps({"model": None, "fingerprint": None, "rationale": False, "fast": True})
    )
    with pytest.raises(ProtegeError, match="does not match the input's row 1"):
        predict_file(predictor, src, tmp_path / "x.jsonl", progress=False)


def test_bad_row_fails_before_any_prediction(predictor, tmp_path):
    rows = nli_rows("dev", 4)
    del rows[2]["hypothesis"]
    src = write_rows(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match=r"in.jsonl:3: field 'hypothesis'"):
        predict_file(predictor, src, tmp_path / "out.jsonl", progress=False)
    assert not list(tmp_path.glob("out.jsonl*"))


def test_cli_predict(tiny_nli, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", nli_rows("dev", 6))
    runner = CliRunner()
    r = runner.invoke(
        main, ["predict", str(tiny_nli), str(src), "--rationale", "--batch-size", "4"]
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "in.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("rationale" in row["prediction"] for row in rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"premise": "a", "hypothesis": "b"}\nnot json\n')
    r = runner.invoke(main, ["predict", str(tiny_nli), str(bad)])
    assert r.exit_code == 1 and "bad.jsonl:2: not valid JSON" in r.output


def test_model_fingerprint_follows_contents_not_times(tmp_path):
    """Touching or copying a checkpoint keeps its fingerprint (a resume goes on); weights of
    the same size and modification time but other bytes change it (a resume is refused)."""
    import os
    import shutil

    from protege.digest import model_fingerprint

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"d_model": 8}')
    weights = bytearray(os.urandom(3 << 20))  # 3 MiB: hashed at both ends only
    (model / "model.safetensors").write_bytes(weights)
    before = model_fingerprint(model)
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(model) == before
    assert model_fingerprint(shutil.copytree(model, tmp_path / "copy")) == before
    stat = (model / "model.safetensors").stat()
    weights[100] ^= 0xFF  # retrained: same size, same mtime, other bytes
    (model / "model.safetensors").write_bytes(weights)
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_fingerprint(model) != before
    (model / "config.json").write_text('{"d_model": 16}')
    assert len({before, model_fingerprint(model)}) == 2
