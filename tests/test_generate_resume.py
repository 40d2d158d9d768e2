"""Kill-and-resume: `protege generate` killed with SIGKILL part way, rerun, writes the same file
as an uninterrupted run, and the server answered each prompt once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from protege.data.samples import sample_path

N = 60


def _generate(server, output, db) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "protege", "generate", "--recipe", "explain",
        "--input", str(sample_path("nli", "train")), "--limit", str(N), "--output", str(output),
        "--teacher", "openai", "--model", "fake-model", "--base-url", server.base_url,
        "--concurrency", "4", "teacher.backoff_s=0.01",
    ]  # fmt: skip
    env = dict(os.environ, PROTEGE_TEACHER_DB=str(db))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stable(path) -> list[dict]:
    """Rows without what differs between two separate answers: when and how fast."""
    rows = [json.loads(line) for line in open(path)]
    for r in rows:
        for k in ("time", "latency_s", "cached"):
            r["provenance"].pop(k)
    return rows


def test_sigkill_then_rerun_gives_the_same_output_and_pays_once(fake_openai, tmp_path):
    reference = _generate(fake_openai, tmp_path / "ref.jsonl", tmp_path / "ref.db")
    assert reference.wait(60) == 0, reference.stdout.read().decode()
    fake_openai.log.clear()

    # 25 answers, then the server stops answering; the job is killed while 4 calls hang.
    fake_openai.faults.extend(["ok"] * 25 + ["timeout"] * 4)
    out, db = tmp_path / "out.jsonl", tmp_path / "teacher.db"
    job = _generate(fake_openai, out, db)
    deadline = time.monotonic() + 60
    while len(fake_openai.log) < 29 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the 25 answers reach the store; the 4 hanging calls are in flight
    job.send_signal(signal.SIGKILL)
    job.wait(10)
    assert not out.exists()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM responses WHERE status='ok'").fetchone()[0] == 25
    con.close()

    rerun = _generate(fake_openai, out, db)
    assert rerun.wait(60) == 0, rerun.stdout.read().decode()
    assert _stable(out) == _stable(tmp_path / "ref.jsonl")
    answered = [json.dumps(e["body"]["messages"]) for e in fake_openai.log if e["fault"] is None]
    assert len(answered) == len(set(answered)) == N  # every prompt answered exactly once
    rows = [json.loads(line) for line in open(out)]
    assert sum(r["provenance"]["cached"] for r in rows) == 25
