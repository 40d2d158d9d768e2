"""Batch mode against the replica's Files and Batch API, through the real SDK: split to the
limits, half the price, resumed after SIGKILL without submitting twice, expired requests sent
again, refused ones recorded as failed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.teacher.batch_lines import chunks
from protege.teacher.config import TeacherConfig
from protege.teacher.store import TeacherStore
from protege.testing.fake_openai import FakeOpenAI

PRICES = {"fake-model": {"input": 1.0, "output": 2.0}}


def _cfg(server, tmp_path, mode="batch", limit=12, **teacher) -> GenerateConfig:
    t = dict(kind="openai", model="fake-model", base_url=server.base_url, backoff_s=0.01,
             mode=mode, batch_poll_s=0.05, prices=PRICES)  # fmt: skip
    t.update(teacher)
    return GenerateConfig(recipe="explain", input=str(sample_path("nli", "train")),
                          output=str(tmp_path / f"{mode}.jsonl"), limit=limit,
                          teacher=TeacherConfig(**t), progress=False)  # fmt: skip


def test_chunks_respect_request_and_byte_limits():
    lines = [(str(i), b"x" * 10) for i in range(7)]
    assert [len(c) for c in chunks(lines, 3, 1000)] == [3, 3, 1]
    assert [len(c) for c in chunks(lines, 100, 25)] == [2, 2, 2, 1]


def test_batch_job_is_split_answered_and_costs_half_of_online(tmp_path, monkeypatch):
    with FakeOpenAI(batch_delay=0.1) as server:
        batch = run_generate(_cfg(server, tmp_path, batch_max_requests=5))
        assert (batch.n_written, batch.n_failed) == (12, 0)
        assert len(server.batches.batches) == 3  # 12 requests, at most 5 a batch
        assert max(server.batches.submitted.values()) == 1
        rows = [json.loads(line) for line in open(tmp_path / "batch.jsonl")]
        assert all(r["rationale"] for r in rows)
        assert {r["provenance"]["source"] for r in rows} == {"batch"}
        # the same job online, in a fresh store: the same answers at twice the price
        monkeypatch.setenv("PROTEGE_TEACHER_DB", str(tmp_path / "online.db"))
        online = run_generate(_cfg(server, tmp_path, mode="online"))
        assert online.cost_usd == pytest.approx(2 * batch.cost_usd) and batch.cost_usd > 0
        online_rows = [json.loads(line) for line in open(tmp_path / "online.jsonl")]
        assert [r["rationale"] for r in rows] == [r["rationale"] for r in online_rows]
        dry = run_generate(_dry(server, tmp_path))
        assert dry.est_batch_cost_usd == pytest.approx(dry.est_cost_usd / 2)


def _dry(server, tmp_path) -> GenerateConfig:
    cfg = _cfg(server, tmp_path, limit=20)
    cfg.dry_run = True
    return cfg


def test_expired_requests_are_sent_again_and_refused_ones_fail(tmp_path):
    with FakeOpenAI(batch_delay=0.05) as server:
        server.batches.faults.extend(["expired"])
        server.prompt_faults["Hugo Moreau"] = __import__("collections").deque(["400"] * 10)
        result = run_generate(_cfg(server, tmp_path, limit=8))
        # rows 1 and 2 are about Hugo Moreau: refused (400), recorded failed, not resent
        assert (result.n_written, result.n_failed) == (6, 2)
        assert len(server.batches.batches) == 2  # the expired half went out once more
        resent = [k for k, n in server.batches.submitted.items() if n > 1]
        assert len(resent) == 4  # the 4 requests the expired batch never ran
        with TeacherStore() as store:
            statuses = store.db.execute("SELECT DISTINCT status FROM batches").fetchall()
            assert statuses == [("collected",)]
            assert store.db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0


def _generate(server, output, db) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "protege", "generate", "--recipe", "explain",
        "--input", str(sample_path("nli", "train")), "--limit", "30", "--output", str(output),
        "--teacher", "openai", "--model", "fake-model", "--base-url", server.base_url,
        "teacher.mode=batch", "teacher.batch_poll_s=0.1", "teacher.batch_max_requests=10",
    ]  # fmt: skip
    env = dict(os.environ, PROTEGE_TEACHER_DB=str(db))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_while_polling_then_rerun_answers_all_and_submits_nothing_twice(tmp_path):
    db = tmp_path / "teacher.db"
    with FakeOpenAI(batch_delay=3.0) as server:
        job = _generate(server, tmp_path / "out.jsonl", db)
        deadline = time.monotonic() + 60
        while len(server.batches.batches) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the ids are recorded; the job is polling
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        con = sqlite3.connect(db)
        assert con.execute("SELECT COUNT(remote_id) FROM batches").fetchone()[0] == 3
        con.close()
        rerun = _generate(server, tmp_path / "out.jsonl", db)
        assert rerun.wait(60) == 0, rerun.stdout.read().decode()
        assert len(server.batches.batches) == 3  # resumed, nothing created again
        assert sorted(server.batches.submitted.values()) == [1] * 30
        assert len(open(tmp_path / "out.jsonl").readlines()) == 30


def test_a_batch_created_but_not_recorded_is_found_by_its_metadata(tmp_path):
    import asyncio

    import openai

    from protege.teacher.batch import BatchRunner
    from protege.teacher.batch_lines import request_line
    from protege.teacher.chat import ChatClient
    from protege.teacher.client import Request
    from protege.teacher.cost import Budget
    from protege.teacher.params import ParamRules

    with FakeOpenAI(batch_delay=0.05) as server:
        cfg = _cfg(server, tmp_path, limit=5)
        dry = GenerateConfig(**{**cfg.__dict__, "dry_run": True})
        assert run_generate(dry).n_requests == 5
        # plan the job's batch as a run would, then create it remotely and "die" before
        # recording the remote id: the store says new, the endpoint has the batch
        from protege.generate.recipes import RECIPES, Template
        from protege.generate.run import _context, load_inputs
        from protege.teacher.store import request_key

        template = Template(RECIPES["explain"].path)
        records = load_inputs(cfg, RECIPES["explain"], template)
        tcfg = cfg.teacher
        reqs = {}
        for r in records:
            m = template.messages(_context(cfg, template, r))
            here = tcfg.endpoint_id(None)  # the endpoint a run keys its answers by
            reqs.setdefault(request_key("fake-model", m, tcfg.params(), endpoint=here), m)
        requests = [Request(k, m, 100) for k, m in reqs.items()]
        # a run of this host whose process is gone: the rerun drives its batch at once
        pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        dead = f"{__import__('socket').gethostname()}-{pid}-deadbeef"

        async def plan_and_create() -> None:
            client = ChatClient(tcfg, server.base_url, None)
            rules = ParamRules(tcfg.endpoint_url, "fake-model", False, {})
            with TeacherStore() as store:
                runner = BatchRunner(tcfg, client, store, Budget(None), None, rules, dead, print)
                (bid,) = runner.plan(requests, tcfg.params(), {})
                data = b"".join(request_line(k, q) for k, q in runner.requests_of(bid).items())
            await client.close()
            sync = openai.OpenAI(base_url=server.base_url, api_key="x")
            f = sync.files.create(file=("x.jsonl", data), purpose="batch")
            sync.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                completion_window="24h", metadata={"protege_batch": bid})  # fmt: skip

        asyncio.run(plan_and_create())
        result = run_generate(cfg)
        assert result.n_written == 5
        assert len(server.batches.batches) == 1  # adopted, not created again
        assert sorted(server.batches.submitted.values()) == [1] * 5
