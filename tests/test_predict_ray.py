"""`protege predict --ray`: a real local Ray instance (2 CPUs, no dashboard, a small object
store) started here; rows equal single-process predict, reruns skip written shards, bad rows
are reported by file and line, and the failures a user meets are one line."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from click.testing import CliRunner
from serve_util import nli_rows, trained_model

from protege.cli import main
from protege.errors import ProtegeError
from protege.serve.distributed import predict_ray

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for this module's tests; its address, for other drivers."""
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20,
                   logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_nli(pytestconfig):
    return trained_model(pytestconfig)


@pytest.fixture(scope="module")
def classifier_onnx(tmp_path_factory):
    """The classifier student (fresh head) exported to ONNX int8: the benchmark's path."""
    from protege.formats import TaskConfig, save_task
    from protege.students import export_student, load_student

    work = tmp_path_factory.mktemp("cls")
    task = TaskConfig(format="label")
    student = load_student("protege:minilm-cls", task)
    student.save(student.model, work / "m")
    save_task(task, work / "m")
    return export_student(work / "m", "onnx", work / "onnx", "int8")


def rows(n: int) -> list[dict]:
    base = nli_rows("dev") + nli_rows("test") + nli_rows("train")
    return [{**base[i], "uid": f"{base[i]['uid']}-{i}"} for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def single_process(model, src: Path, out: Path, *flags: str) -> list[dict]:
    r = CliRunner().invoke(main, ["predict", str(model), str(src), "-o", str(out), *flags])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def shards(out: Path, fmt: str) -> list[dict]:
    """The output's rows, shards in name order (= input order)."""
    if fmt == "jsonl":
        return [
            json.loads(x) for p in sorted(out.glob("*.jsonl")) for x in p.read_text().splitlines()
        ]
    return (
        pads.dataset(sorted(map(str, out.glob("*.parquet"))), format="parquet")
        .to_table()
        .to_pylist()
    )


def test_rows_equal_single_process_and_a_rerun_skips_written_shards(cluster, tiny_nli, tmp_path):
    """A seq2seq student generating rationales, 264 JSONL rows in blocks of 64 over 2 actors;
    then a rerun after a block's shard was lost redoes that block only."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(264))
    want = single_process(
        tiny_nli, src, tmp_path / "single.jsonl", "--rationale", "--batch-size", "16"
    )
    out = tmp_path / "out"
    kw = dict(workers=2, batch_size=16, block_rows=64, fmt="jsonl", with_rationale=True,
              progress=False)  # fmt: skip
    r = predict_ray(tiny_nli, str(src), str(out), **kw)
    assert (r.n_blocks, r.n_skipped, r.n_rows, r.bad_rows) == (5, 0, 264, [])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_protege_predict.json"] + [f"in.jsonl.part-{k:05d}.jsonl" for k in range(5)]
    got = shards(out, "jsonl")
    assert got == want
    assert len({g["prediction"]["label"] for g in got}) >= 2  # real, varied predictions
    assert all(g["prediction"]["rationale"] for g in got)

    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
    # As if killed while writing block 2: its shard never appeared, a temp file was left.
    (out / "in.jsonl.part-00002.jsonl").rename(out / ".in.jsonl.part-00002.jsonl.tmp-dead")
    again = predict_ray(tiny_nli, str(src), str(out), **{**kw, "workers": 1})
    assert (again.n_skipped, again.n_rows) == (4, 64)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
    assert {n for n in after if after[n] != before.get(n)} == {"in.jsonl.part-00002.jsonl"}
    assert not list(out.glob(".*"))  # the dead attempt's temp file is cleared
    assert shards(out, "jsonl") == want
    with pytest.raises(
        ProtegeError, match=r"out: was started with another --batch-size \(16, now 8\)"
    ):
        predict_ray(tiny_nli, str(src), str(out), **{**kw, "batch_size": 8})
    with pytest.raises(ProtegeError, match="another --rationale"):
        predict_ray(tiny_nli, str(src), str(out), **{**kw, "with_rationale": False})


def test_parquet_on_the_onnx_classifier_from_a_driver_joining_the_cluster(
    cluster, classifier_onnx, tmp_path
):
    """`protege predict --ray --address HOST:PORT` in another process, on this instance:
    Parquet in, Parquet out, the rows single-process predict writes."""
    records = rows(300)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in.parquet", row_group_size=50)
    want = single_process(classifier_onnx, tmp_path / "in.parquet", tmp_path / "single.jsonl")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "protege", "predict", str(classifier_onnx),
           str(tmp_path / "in.parquet"), "-o", str(out), "--ray", "--address", cluster,
           "--workers", "2", "--block-rows", "96"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == f"wrote 300 predictions in 4 shards to {out}"
    got = shards(out, "parquet")
    assert got == want
    assert set(got[0]["prediction"]["scores"]) == {"entailment", "neutral", "contradiction"}


def test_a_killed_worker_has_its_block_retried_and_written_once(cluster, tiny_nli, tmp_path):
    """SIGKILL one predictor actor once the first shard is out: Ray restarts it and retries
    its block; every row is written once, as single-process predict writes it."""
    import signal
    import threading
    import time

    src = write_jsonl(tmp_path / "in.jsonl", rows(192))
    want = single_process(tiny_nli, src, tmp_path / "single.jsonl", "--batch-size", "8")
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 300
        while not list(out.glob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in Path("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if proc.name.isdigit() and b"MapBatches(BlockPredictor)" in cmd:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
                return

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    r = predict_ray(tiny_nli, str(src), str(out), workers=2, batch_size=8, block_rows=16,
                    progress=False)  # fmt: skip
    killer.join()
    assert killed, "no predictor actor was found to kill"
    assert (r.n_blocks, r.n_rows) == (12, 192)
    assert shards(out, "parquet") == want
    assert not list(out.glob(".*"))  # the killed attempt's temp file, if any, is not a shard


def test_bad_rows_are_reported_by_file_and_line_and_spare_their_blocks(cluster, tiny_nli, tmp_path):
    """A directory of JSONL and CSV files; each bad row is left out and named, the rest of its
    block is written."""
    data = tmp_path / "data"
    data.mkdir()
    good = rows(90)
    lines = [json.dumps(r) for r in good[:60]]
    lines[4] = "not json {"
    bad_field = dict(good[40])
    del bad_field["hypothesis"]
    lines[40] = json.dumps(bad_field)
    (data / "a.jsonl").write_text("\n".join(lines) + "\n")
    with open(data / "b.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "premise", "hypothesis"])
        for i, r in enumerate(good[60:]):
            w.writerow(
                [r["uid"], r["premise"] + ("\nsecond line" if i == 3 else ""), r["hypothesis"]]
            )
            if i == 10:
                w.writerow(["x", "too", "many", "values"])
    out = tmp_path / "out"
    r = predict_ray(tiny_nli, str(data), str(out), workers=2, batch_size=8, block_rows=16,
                    fmt="jsonl", progress=False)  # fmt: skip
    a, b = str(data / "a.jsonl"), str(data / "b.csv")
    assert r.bad_rows == [
        f"{a}:5: not valid JSON (Expecting value)",
        f"{a}:41: field 'hypothesis': missing (needed by input_template)",
        f"{b}:14: more values than header columns",  # line 14: the 4th row spans two lines
    ]
    got = shards(out, "jsonl")
    assert len(got) == 58 + 30 and r.n_rows == 88
    assert [g["uid"] for g in got[:58]] == [
        x["uid"] for i, x in enumerate(good[:60]) if i not in (4, 40)
    ]
    assert got[58 + 3]["premise"].endswith("\nsecond line")
    assert (out / "_errors" / "a.jsonl.part-00000.jsonl").exists()  # lines 1-16
    assert (out / "_errors" / "a.jsonl.part-00002.jsonl").exists()  # lines 33-48
    # The command: the bad rows on stderr, one closing line, exit 1; the rerun skips all.
    res = CliRunner().invoke(main, ["predict", str(tiny_nli), str(data), "-o", str(out), "--ray",
                                    "--batch-size", "8", "--block-rows", "16",
                                    "--output-format", "jsonl"])  # fmt: skip
    assert res.exit_code == 1
    assert f"bad row: {a}:5: not valid JSON" in res.output
    assert "wrote 0 predictions in 0 shards" in res.output and "6 more were written" in res.output
    assert "3 bad rows left out, listed in" in res.output


def test_unreachable_address_and_missing_ray_are_one_line(tiny_nli, tmp_path):
    import socket

    src = write_jsonl(tmp_path / "in.jsonl", rows(4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    base = [sys.executable, "-m", "protege", "predict", str(tiny_nli), str(src), "-o",
            str(tmp_path / "out"), "--ray"]  # fmt: skip
    p = subprocess.run([*base, "--address", f"ray://127.0.0.1:{port}"], capture_output=True,
                       text=True, env=_env(), timeout=300)  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == (
        f"Error: cannot reach the Ray cluster at ray://127.0.0.1:{port}: Connection refused"
    )
    # Without the package: the import fails as it does where ray is not installed.
    code = "import sys; sys.modules['ray'] = None; from protege.cli import main; main()"
    p = subprocess.run([sys.executable, "-c", code, *base[3:]], capture_output=True, text=True,
                       env=_env(), timeout=120)  # fmt: skip
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        "Error: --ray needs Ray Data: pip install 'protege[ray]'"
    )


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_blocks_cut_at_records_and_keep_line_numbers(tmp_path, suffix):
    """Read block by block, a file gives exactly the records (and `_line`s) that the
    single-process reader gives: a BOM, blank JSONL lines, CSV records spanning lines."""
    from protege.data.io import read_records
    from protege.serve.blocks import open_fs, plan_blocks, read_block

    records = [{"uid": str(i), "text": f"row {i}" + ("\nmore" if i % 4 == 1 else "")}
               for i in range(11)]  # fmt: skip
    path = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        lines = [json.dumps(r) for r in records]
        lines.insert(3, "   ")
        path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # no final newline
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8-sig") as f:
            w = csv.DictWriter(f, ["uid", "text"])
            w.writeheader()
            w.writerows(records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=3)
    fs, p = open_fs(str(path))
    blocks = plan_blocks(fs, p, path.name, 4)
    assert [b.name for b in blocks] == [f"in{suffix}.part-{k:05d}" for k in range(3)]
    got = [r for b in blocks for r, bad in read_block(fs, b) if bad is None]
    want = read_records(path)
    if suffix == ".parquet":
        want = [{**r, "_line": i + 1} for i, r in enumerate(want)]
    assert got == want
