"""Never paying twice across processes: leases in the store, and two real `protege generate`
processes on one job against the API replica."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from protege.data.samples import sample_path
from protege.teacher.leases import lease, new_run_id, owner_alive, release, renew
from protege.teacher.store import Answer, TeacherStore


def test_lease_takes_free_keys_skips_answered_and_waits_for_live_owners(teacher_db):
    with TeacherStore() as store:
        store.put(Answer("done", "m", "ok", text="x"), {})
        a = lease(store, ["k1", "k2", "done"], "host-a", ttl_s=60)
        assert (a.mine, a.done, a.busy) == (["k1", "k2"], ["done"], {})
        b = lease(store, ["k1", "k3"], "host-b", ttl_s=60)
        assert b.mine == ["k3"] and set(b.busy) == {"k1"} and b.owners["k1"] == "host-a"
        # storing an answer ends its owner's lease in the same transaction
        store.put_many([(Answer("k1", "m", "ok", text="y"), {})], owner="host-a")
        assert lease(store, ["k1"], "host-b", ttl_s=60).done == ["k1"]
        # an expired lease is taken over; a renewed one is not
        lease(store, ["k4"], "host-a", ttl_s=-1)
        assert lease(store, ["k4"], "host-b", ttl_s=60).mine == ["k4"]
        renew(store, "host-b", ttl_s=60)
        assert set(lease(store, ["k3", "k4"], "host-a", ttl_s=60).busy) == {"k3", "k4"}
        release(store, "host-b")
        assert lease(store, ["k3", "k4"], "host-a", ttl_s=60).mine == ["k3", "k4"]


def test_a_dead_process_on_this_host_loses_its_leases_at_once(teacher_db):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    owner = f"{socket.gethostname()}-{dead}-deadbeef"
    assert not owner_alive(owner) and owner_alive(new_run_id())
    assert owner_alive("other-host-1-x")  # another machine's run: only its expiry tells
    with TeacherStore() as store:
        lease(store, ["k"], owner, ttl_s=3600)
        assert lease(store, ["k"], new_run_id(), ttl_s=60).mine == ["k"]


def _generate(server, output, n: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "protege", "generate", "--recipe", "explain",
        "--input", str(sample_path("nli", "train")), "--limit", str(n), "--output", str(output),
        "--teacher", "openai", "--model", "fake-model", "--base-url", server.base_url,
        "--concurrency", "8",
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def test_two_processes_on_one_job_pay_for_each_prompt_once(fake_openai, tmp_path):
    fake_openai.latency = 0.05
    n = 80
    jobs = [_generate(fake_openai, tmp_path / f"out{i}.jsonl", n) for i in range(2)]
    for job in jobs:
        assert job.wait(120) == 0, job.stdout.read().decode()
    sent = [json.dumps(e["body"]["messages"]) for e in fake_openai.log]
    assert len(sent) == len(set(sent)) == n  # every prompt sent once, by one of the two
    rows = [[json.loads(x) for x in open(tmp_path / f"out{i}.jsonl")] for i in range(2)]
    assert len(rows[0]) == len(rows[1]) == n
    assert [r["rationale"] for r in rows[0]] == [r["rationale"] for r in rows[1]]
    with TeacherStore() as store:
        runs = store.db.execute("SELECT COUNT(DISTINCT run_id) FROM responses").fetchone()[0]
        assert store.db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    assert runs == 2  # both took part


def test_processes_opening_a_new_store_together_migrate_it_once(tmp_path):
    db = tmp_path / "new.db"
    code = f"from protege.teacher.store import TeacherStore; TeacherStore({str(db)!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    with TeacherStore(db) as store:
        from protege.teacher.migrations import MIGRATIONS

        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_wal_switch_retries_a_lock_that_sqlite_gives_up_on_at_once(tmp_path):
    """Two processes switching a new store to WAL together can deadlock on the lock upgrade;
    SQLite then answers one "database is locked" without waiting (its busy handler is skipped:
    a connection with no busy timeout stands in for that here). The store retries it."""
    import sqlite3
    import threading

    db = tmp_path / "new.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    store = TeacherStore.__new__(TeacherStore)
    store.db = sqlite3.connect(db, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store._wal(timeout_s=0.2)  # held all along: the error, after its own deadline
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    store._wal()
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.db.close()
    holder.close()


def test_a_process_paused_past_its_leases_does_not_send_what_it_had_queued(fake_openai,
                                                                           tmp_path):  # fmt: skip
    """SIGSTOP one sender past `lease_s` with a chunk of leased requests queued, let a second
    process answer the whole job, SIGCONT: the first sends none of what it had queued (only
    the one request in flight at the stop can be paid twice)."""
    import signal
    import time

    fake_openai.latency = 0.3
    n = 24

    def generate(name: str) -> subprocess.Popen:
        cmd = [
            sys.executable, "-m", "protege", "generate", "--recipe", "explain", "--input",
            str(sample_path("nli", "train")), "--limit", str(n), "--output",
            str(tmp_path / name), "--teacher", "openai", "--model", "fake-model", "--base-url",
            fake_openai.base_url, "--concurrency", "1", "teacher.lease_s=1",
        ]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    a = generate("a.jsonl")
    deadline = time.monotonic() + 60
    while len(fake_openai.log) < 3:  # its third request in flight, five more queued
        assert time.monotonic() < deadline
        time.sleep(0.005)
    a.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)  # past its leases
        fake_openai.latency = 0.01
        b = generate("b.jsonl")
        assert b.wait(120) == 0, b.stdout.read().decode()
    finally:
        a.send_signal(signal.SIGCONT)
    assert a.wait(120) == 0, a.stdout.read().decode()
    sent = [json.dumps(e["body"]["messages"]) for e in fake_openai.log]
    assert len(set(sent)) == n
    assert len(sent) - n <= 1, f"{len(sent) - n} prompts paid twice"
