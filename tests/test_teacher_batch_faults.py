"""Batch mode when the API, the other processes or the clock misbehave: output lines that are
not what the API promises, a batch the server no longer knows, another endpoint on the rerun,
two processes on one job, a collector that loses the race, a key echoed by a proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from protege.data.samples import sample_path
from protege.errors import ProtegeError
from protege.teacher.batch import BatchRunner, batch_all
from protege.teacher.chat import ChatClient
from protege.teacher.client import Request
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget, worst_prompt_tokens
from protege.teacher.params import ParamRules
from protege.teacher.store import TeacherStore
from protege.testing.fake_openai import FakeOpenAI


def _cfg(server, **kw) -> TeacherConfig:
    t = dict(kind="openai", model="fake-model", base_url=server.base_url, mode="batch",
             batch_poll_s=0.05, backoff_s=0.01)  # fmt: skip
    return TeacherConfig(**{**t, **kw})


def _requests(n: int, tag: str = "") -> list[Request]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Explain row {i}{tag}. " + "context " * 20}]
        out.append(Request(f"key{tag}-{i}", messages, worst_prompt_tokens(messages)))
    return out


def _run(cfg, requests, store=None, key=None, **kw):
    async def go():
        client = ChatClient(cfg, cfg.base_url, key)
        own = store or TeacherStore()
        try:
            return await batch_all(requests, cfg, client, own, Budget(None), **kw)
        finally:
            await client.close()
            if store is None:
                own.close()

    return asyncio.run(go())


def _leased() -> tuple[int, int]:
    with TeacherStore() as store:
        leases = store.db.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
        claims = store.db.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    return leases, claims


@pytest.mark.parametrize("fault", ["garbage-line", "no-custom-id", "no-choices"])
def test_an_output_line_not_as_promised_is_one_failed_try_of_its_request(fault):
    with FakeOpenAI(batch_delay=0.05) as server:
        server.batches.faults.extend([fault])
        report = _run(_cfg(server), _requests(10))
        assert (report.ok, report.failed) == (10, 0)  # the bad line's request went out again
        assert len(server.batches.batches) == 2
        assert sorted(server.batches.submitted.values()) == [1] * 9 + [2]
    assert _leased() == (0, 0)


def test_a_bad_line_every_time_ends_failed_and_releases_everything():
    with FakeOpenAI(batch_delay=0.05) as server:
        server.batches.faults.extend(["garbage-line"] * 10)
        report = _run(_cfg(server, max_retries=2), _requests(6))
        assert (report.ok, report.failed) == (5, 1)
        assert "batch" in next(iter(report.errors.values()))
        assert len(server.batches.batches) == 3  # tried 3 times, then recorded failed
    assert _leased() == (0, 0)
    with TeacherStore() as store:
        assert store.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 6


def _created_then_killed(cfg, requests, run_id: str) -> str:
    """Plan and create the job's batch as a run would, then stop (a killed run): its id."""

    async def go():
        client = ChatClient(cfg, cfg.base_url, None)
        rules = ParamRules(cfg.endpoint_url, "fake-model", False, {})
        with TeacherStore() as store:
            runner = BatchRunner(cfg, client, store, Budget(None), None, rules, run_id,
                                 lambda kind, answer: None)  # fmt: skip
            (bid,) = runner.plan(requests, cfg.params(), {})
            from protege.teacher.batch import _row

            await runner.start({**_row(store, bid), "mine": True})
        await client.close()
        return bid

    return asyncio.run(go())


def test_a_batch_the_server_no_longer_knows_is_sent_again_at_once():
    with FakeOpenAI(batch_delay=0.05) as server:
        cfg = _cfg(server, lease_s=0.5)
        requests = _requests(8)
        _created_then_killed(cfg, requests, "other-host-1-gone")
        [remote] = server.batches.batches
        del server.batches.batches[remote]  # deleted at the endpoint: 404 batch_not_found
        time.sleep(0.6)  # the killed run's lease on the batch has expired
        report = _run(cfg, requests)
        assert (report.ok, report.failed) == (8, 0)
        assert len(server.batches.batches) == 1  # a new batch, the lost one's rows in it
    assert _leased() == (0, 0)
    with TeacherStore() as store:
        assert store.db.execute("SELECT status FROM batches ORDER BY created_at").fetchall() == [
            ("lost",),
            ("collected",),
        ]


def test_a_rerun_with_another_base_url_collects_at_the_endpoint_the_batch_is_at():
    with FakeOpenAI(batch_delay=0.05) as first, FakeOpenAI(batch_delay=0.05) as second:
        requests = _requests(8)
        _created_then_killed(_cfg(first, lease_s=0.5), requests, "other-host-1-gone")
        time.sleep(0.6)
        report = _run(_cfg(second, lease_s=0.5), requests)
        assert (report.ok, report.failed) == (8, 0)
        assert len(first.batches.batches) == 1 and second.batches.batches == {}
        assert sorted(first.batches.submitted.values()) == [1] * 8
    assert _leased() == (0, 0)


def test_the_loser_of_two_collectors_stores_and_counts_nothing():
    with FakeOpenAI(batch_delay=0.05) as server:
        server.prompt_faults["row 3"] = __import__("collections").deque(["400"])
        cfg = _cfg(server)
        bid = _created_then_killed(cfg, _requests(5), "other-host-1-gone")

        async def collect_twice():
            client = ChatClient(cfg, cfg.base_url, None)
            rules = ParamRules(cfg.endpoint_url, "fake-model", False, {})
            with TeacherStore() as store:
                from protege.teacher.batch import _row

                runners = [BatchRunner(cfg, client, store, Budget(None), None, rules, f"r{i}",
                                       lambda kind, answer: None) for i in (1, 2)]  # fmt: skip
                row = _row(store, bid)
                get = client.sdk.batches.retrieve
                while (await get(row["remote_id"], extra_headers=client.headers)).status != (
                    "completed"
                ):
                    await asyncio.sleep(0.05)
                remote = await get(row["remote_id"], extra_headers=client.headers)
                await runners[0].collect(dict(row), remote)
                before = store.db.execute("SELECT * FROM responses ORDER BY key").fetchall()
                assert await runners[1].collect(dict(row), remote) == []
                after = store.db.execute("SELECT * FROM responses ORDER BY key").fetchall()
            await client.close()
            return runners, before, after

        runners, before, after = asyncio.run(collect_twice())
    assert before == after  # the failed row's cost and attempts not counted twice
    assert (runners[0].report.ok, runners[0].report.failed) == (4, 1)
    assert (runners[1].report.ok, runners[1].report.failed, runners[1].report.elsewhere) == (
        0, 1, 4
    )  # fmt: skip


def test_files_and_batches_calls_never_print_the_key_and_retry_a_500_on_list():
    key = "sk-proj-SECRETsecret1234567890abcd"
    with FakeOpenAI(batch_delay=0.05, api_key=key) as server:
        server.batches.api_faults.extend(["list:500", "list:500"])
        report = _run(_cfg(server), _requests(3), key=key)
        assert report.ok == 3  # the list was asked again
        server.batches.api_faults.extend(["list:400"])
        with pytest.raises(ProtegeError, match=r"batch API \(list\): HTTP 400") as info:
            _run(_cfg(server), _requests(3, "b"), key=key)
        assert "\n" not in str(info.value)
        for op in ("upload", "create"):
            server.batches.api_faults.extend(["list:400"][:0] + [f"{op}:echo-key"])
            with pytest.raises(ProtegeError, match="upstream refused") as info:
                _run(_cfg(server), _requests(3, op), key=key)
            assert key not in str(info.value) and "[redacted]" in str(info.value)


def _generate(server, output, db, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "protege", "generate", "--recipe", "explain",
        "--input", str(sample_path("nli", "train")), "--limit", "40", "--output", str(output),
        "--teacher", "openai", "--model", "fake-model", "--base-url", server.base_url,
        "teacher.mode=batch", "teacher.batch_poll_s=0.1", "teacher.batch_max_requests=10",
        *extra,
    ]  # fmt: skip
    env = dict(os.environ, PROTEGE_TEACHER_DB=str(db))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(what, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _recorded(db) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def test_a_second_process_started_while_the_first_uploads_pays_for_nothing(tmp_path):
    db = tmp_path / "teacher.db"
    with FakeOpenAI(batch_delay=0.5) as server:
        server.batches.upload_delay = 2.0  # 4 batches: eight seconds of uploads
        a = _generate(server, tmp_path / "a.jsonl", db)
        _wait_for(lambda: _recorded(db) == 4)  # recorded; the first upload is under way
        b = _generate(server, tmp_path / "b.jsonl", db)
        for job in (a, b):
            assert job.wait(120) == 0, job.stdout.read().decode()
        assert len(server.batches.batches) == 4
        assert sorted(server.batches.submitted.values()) == [1] * 40
    for name in ("a", "b"):  # the second waited for the first's batches and wrote every row
        assert len(open(tmp_path / f"{name}.jsonl").readlines()) == 40


def test_a_driver_paused_past_its_lease_does_not_create_what_was_taken_over(tmp_path):
    """SIGSTOP while uploading, past `lease_s`: a second process takes the batches over and
    creates them; SIGCONT: the first finds it no longer drives them and only waits."""
    db = tmp_path / "teacher.db"
    with FakeOpenAI(batch_delay=0.5) as server:
        server.batches.upload_delay = 2.0
        a = _generate(server, tmp_path / "a.jsonl", db, "teacher.lease_s=1")
        _wait_for(lambda: _recorded(db) == 4)
        time.sleep(0.5)  # inside the first upload
        a.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)  # past its leases
            b = _generate(server, tmp_path / "b.jsonl", db, "teacher.lease_s=1")
            _wait_for(lambda: len(server.batches.batches) == 4)
        finally:
            a.send_signal(signal.SIGCONT)
        for job in (a, b):
            assert job.wait(120) == 0, job.stdout.read().decode()
        assert len(server.batches.batches) == 4
        assert sorted(server.batches.submitted.values()) == [1] * 40


def test_an_online_run_counts_requests_waiting_in_a_batch_apart_from_budget_skips():
    from protege.teacher.client import call_all
    from protege.teacher.leases import new_run_id

    with FakeOpenAI(batch_delay=60.0) as server:
        requests = _requests(4)
        _created_then_killed(_cfg(server), requests, new_run_id())  # out, its driver alive
        online = TeacherConfig(kind="openai", model="fake-model", base_url=server.base_url)

        async def go():
            client = ChatClient(online, server.base_url, None)
            with TeacherStore() as store:
                try:
                    return await call_all(requests, online, client, store, Budget(None))
                finally:
                    await client.close()

        report = asyncio.run(go())
        assert (report.in_batch, report.skipped, report.ok) == (4, 0, 0)
        assert not [e for e in server.log if not e.get("batch")]  # nothing sent online
