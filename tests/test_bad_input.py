"""Bad input gets one clear line naming where and what, never a traceback or a "nan"."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from click.testing import CliRunner
from serve_util import nli_rows, trained_model

from protege.cli import main
from protege.data.io import read_records
from protege.errors import DataError, ProtegeError
from protege.formats import CHARS_PER_TOKEN_MAX, TaskConfig, clip_sources, save_task
from protege.serve.batch import predict_file
from protege.serve.predictor import Predictor


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: not UTF-8 \(byte 11\)"):
        read_records(path)


def test_lone_surrogate_names_the_line_and_pairs_pass(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": "\\ud83d\\ude00"}\n{"a": "x\\udc00y"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: a string holds a lone surrogate"):
        read_records(path)
    path.write_text('{"a": "\\ud83d\\ude00"}\n')
    assert read_records(path)[0]["a"] == "\U0001f600"


def test_deep_json_line_is_one_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataError, match=r"rows.jsonl:1: JSON nested too deeply"):
        read_records(path)


def test_csv_with_a_bom_and_csv_errors_with_their_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("\ufeffpremise,hypothesis\na,b\n".encode())
    [row] = read_records(path)
    assert row["premise"] == "a" and row["_line"] == 2
    path.write_text("premise,hypothesis\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"rows.csv:3: more values than header columns"):
        read_records(path)
    path.write_bytes(b"premise,hypothesis\na,b\n\xff,c\n")
    with pytest.raises(DataError, match=r"rows.csv:\d+: not UTF-8"):
        read_records(path)


def test_clip_keeps_what_truncation_keeps():
    assert clip_sources(["ab" * 10, "x"], 2) == ["ab" * 10, "x"]
    long = "word " * 100_000
    (clipped,) = clip_sources([long], 4)
    assert len(clipped) == 4 * CHARS_PER_TOKEN_MAX and long.startswith(clipped)


@pytest.fixture(scope="module")
def model(pytestconfig):
    return trained_model(pytestconfig)


@pytest.mark.slow
def test_a_50_mb_row_is_cut_before_tokenizing(model, tmp_path):
    predictor = Predictor.load(model)
    row = {**nli_rows("dev", 1)[0]}
    row["premise"] = "many words " * 5_000_000  # 55 MB
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps(row) + "\n")
    t0 = time.perf_counter()
    r = predict_file(predictor, src, tmp_path / "out.jsonl", progress=False)
    assert r.n_rows == 1 and time.perf_counter() - t0 < 30  # was 98 s and 7.1 GB


@pytest.mark.slow
def test_empty_file_to_eval_is_an_error_not_nan(model, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    r = CliRunner().invoke(main, ["eval", str(model), "--data", str(empty)])
    assert r.exit_code == 1 and "no rows to evaluate" in r.output and "nan" not in r.output
    r = CliRunner().invoke(main, ["predict", str(model), str(empty)])
    assert r.exit_code == 1 and "no rows to predict" in r.output


@pytest.mark.slow
def test_broken_model_dirs_say_what_is_broken(model, tmp_path):
    task = tmp_path / "task"
    shutil.copytree(model, task)
    (task / "protege_task.json").write_text("{not json")
    with pytest.raises(ProtegeError, match=r"protege_task.json: not valid JSON"):
        Predictor.load(task)
    weights = tmp_path / "weights"
    shutil.copytree(model, weights)
    (weights / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ProtegeError, match="cannot load student"):
        Predictor.load(weights)
    no_tok = tmp_path / "no_tok"
    shutil.copytree(model, no_tok)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ProtegeError, match="no tokenizer files"):
        Predictor.load(no_tok)
    r = CliRunner().invoke(main, ["predict", str(weights), str(task / "protege_task.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_building_a_random_student_leaves_the_seeded_rng_alone(tmp_path):
    import torch

    from protege.students.seq2seq.build import build_random_student

    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    a = build_random_student("bart", tmp_path / "a")
    assert torch.equal(torch.rand(4), expected)  # the build drew nothing from it
    b = build_random_student("bart", tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_unwritable_generate_output_keeps_the_paid_answers(fake_openai, tmp_path):
    from protege.data.samples import sample_path
    from protege.generate import GenerateConfig, run_generate
    from protege.teacher.config import TeacherConfig
    from protege.teacher.store import TeacherStore

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    cfg = GenerateConfig(
        recipe="explain", input=str(sample_path("nli", "dev")), output=str(blocked / "o.jsonl"),
        limit=3, progress=False,
        teacher=TeacherConfig(kind="openai", model="fake-model", base_url=fake_openai.base_url),
    )  # fmt: skip
    with pytest.raises(ProtegeError, match="cannot write .*kept in the teacher store"):
        run_generate(cfg)
    with TeacherStore() as store:
        assert store.stats()[0]["ok"] == 3
    cfg.output = str(tmp_path / "o.jsonl")
    assert run_generate(cfg).n_calls == 0


def test_task_file_that_is_not_an_object(tmp_path):
    from protege.formats import load_task

    save_task(TaskConfig(), tmp_path)
    (tmp_path / "protege_task.json").write_text("[1, 2]")
    with pytest.raises(ProtegeError, match="expected a JSON object"):
        load_task(tmp_path)


def test_an_answer_nested_1000_levels_deep_is_flagged_on_every_run(fake_openai, tmp_path):
    from protege.data.samples import sample_path
    from protege.generate import GenerateConfig, run_generate
    from protege.teacher.config import TeacherConfig

    deep = '{"label": "neutral", "x": ' + "[" * 1000 + "]" * 1000 + "}"
    fake_openai.reply = lambda messages: deep
    cfg = GenerateConfig(
        recipe="label", input=str(sample_path("nli", "dev")), output=str(tmp_path / "o.jsonl"),
        limit=2, progress=False,
        teacher=TeacherConfig(kind="openai", model="fake-model", base_url=fake_openai.base_url),
    )  # fmt: skip
    for _ in range(2):  # the run that paid, then a rerun from the store
        run_generate(cfg)
        rows = [json.loads(line) for line in open(tmp_path / "o.jsonl")]
        assert [r["flagged"] for r in rows] == ["answer is nested more than 64 levels deep"] * 2


@pytest.mark.slow
def test_a_corrupt_partial_predict_file_is_one_line(model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in nli_rows("dev", 3)))
    partial = tmp_path / "out.jsonl.partial"
    from pathlib import Path

    from protege.digest import model_fingerprint

    meta = {"model": str(Path(model).resolve()), "fingerprint": model_fingerprint(model),
            "rationale": False, "fast": True}  # fmt: skip
    (tmp_path / "out.jsonl.partial.json").write_text(json.dumps(meta))
    for junk in (b'{"premise": "a"\n', b"\xff\xfe garbage\n", b"[1, 2]\n"):
        partial.write_bytes(junk)
        r = CliRunner().invoke(main, ["predict", str(model), str(src), "-o",
                                      str(tmp_path / "out.jsonl")])  # fmt: skip
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert "out.jsonl.partial:1: not a row predict wrote" in r.output


@pytest.mark.slow
def test_a_run_directory_on_a_full_disk_is_one_line(tmp_path):
    """A file size limit (RLIMIT_FSIZE) makes a write fail with EFBIG, as a full disk does;
    safetensors then raises its own SafetensorError (not an OSError) from Rust."""
    import subprocess
    import sys

    from protege.config import from_dict, save_config
    from protege.students.seq2seq.build import resolve_model
    from protege.train import TrainConfig

    resolve_model("protege:tiny-t5")  # built before the disk filled, as by an earlier run
    for split, n in (("train", 16), ("dev", 4)):
        rows = nli_rows(split, n)
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict(TrainConfig, dict(
        model="protege:tiny-t5", task={"format": "label+rationale"}, max_steps=1,
        train_data=str(tmp_path / "train.jsonl"), dev_data=str(tmp_path / "dev.jsonl"),
        output_dir=str(tmp_path / "out"), batch_size=8, eval_batch_size=8, max_target_len=32,
        generation={"max_new_tokens": 4}))  # fmt: skip
    save_config(cfg, tmp_path / "c.yaml")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from protege.cli import main\n"
        "sys.argv = ['protege', 'train', sys.argv[1]]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "cannot write the checkpoint" in done.stderr and "out" in done.stderr
