"""The teacher when things go wrong around it: a full store, a key echoed back in an error, a
store others could read, a URL with a password, a keys file that is not a mapping."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat

import pytest
from click.testing import CliRunner

from protege.cli import main
from protege.data.samples import sample_path
from protege.errors import ConfigError
from protege.generate import GenerateConfig, run_generate
from protege.generate.run import summary_path
from protege.redact import redact
from protege.teacher import rescue
from protege.teacher.chat import ChatClient
from protege.teacher.client import Request, call_all
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget, worst_prompt_tokens
from protege.teacher.keys import load_keys
from protege.teacher.store import Answer, StoreWriteError, TeacherStore, request_key


def _requests(cfg: TeacherConfig, n: int) -> list[Request]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Explain row {i}. " + "context " * 60}]
        out.append(Request(request_key(cfg.model_name, messages, cfg.params()), messages,
                           worst_prompt_tokens(messages)))  # fmt: skip
    return out


def test_full_store_stops_sending_at_once_and_keeps_every_paid_answer(fake_openai, teacher_db):
    """SQLITE_FULL for real: `PRAGMA max_page_count` caps the database a few pages above its
    size, so a write fails with "database or disk is full" exactly as on a full disk."""
    fake_openai.latency = 0.01
    cfg = TeacherConfig(kind="openai", model="fake-model", base_url=fake_openai.base_url,
                        concurrency=4)  # fmt: skip
    requests = _requests(cfg, 480)
    store = TeacherStore()
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages + 3}")

    async def go():
        client = ChatClient(cfg, fake_openai.base_url, None)
        try:
            return await call_all(requests, cfg, client, store, Budget(None))
        finally:
            await client.close()

    with pytest.raises(StoreWriteError) as info:
        asyncio.run(go())
    message = str(info.value)
    assert "database or disk is full" in message and "stopped sending" in message
    assert "rollback" not in message.lower()
    [saved] = rescue.pending(teacher_db)
    assert str(saved) in message and oct(saved.stat().st_mode & 0o777) == "0o600"
    sent = len(fake_openai.log)
    assert 0 < sent < 60, f"{sent} requests sent after the store was full"
    stored = {r[0] for r in store.db.execute("SELECT key FROM responses")}
    kept = {a.key for a, _ in rescue.load(saved)}
    store.close()
    answered = {request_key(cfg.model_name, m, cfg.params()) for m in fake_openai.answered()}
    assert len(answered) == sent and answered == stored | kept and not stored & kept
    # the next time the store opens (with room), the saved answers go in and the file goes
    with TeacherStore() as store:
        assert set(store.get_many(answered)) == answered
        assert all(a.status == "ok" and a.cost_usd >= 0 for a in store.get_many(answered).values())
    assert rescue.pending(teacher_db) == []


def test_saved_answers_go_to_the_next_directory_that_takes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory is a fallback too
    answer = Answer("k", "m", "ok", text="paid for", cost_usd=0.25)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a "directory" below a plain file: nothing can be written there
    saved = rescue.save([(answer, {"model": "m"})], blocked / "teacher.db", [tmp_path / "out"])
    assert saved is not None and saved.parent != blocked
    [(got, req)] = rescue.load(saved)
    assert (got.text, got.cost_usd, req) == ("paid for", 0.25, {"model": "m"})
    (tmp_path / "out").mkdir()
    assert rescue.save([(answer, {})], blocked / "t.db", [tmp_path / "out"]).parent == (
        tmp_path / "out"
    )
    # `protege teacher import FILE` takes it as it was saved
    result = CliRunner().invoke(main, ["teacher", "import", str(saved)])
    assert result.exit_code == 0, result.output
    with TeacherStore() as store:
        assert store.get("k").text == "paid for"


def test_failed_rollback_is_not_raised_over_the_real_error(teacher_db):
    with TeacherStore() as store:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages}")
        big = Answer("k", "m", "ok", text="x" * 200_000)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            store.put(big, {})
        assert not store.db.in_transaction


def test_store_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGE_TEACHER_DB", str(tmp_path / "new" / "teacher.db"))
    with TeacherStore() as store:
        store.put(Answer("k", "m", "ok", text="t"), {})
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(str(store.path) + suffix).st_mode)
            assert mode == 0o600, (suffix, oct(mode))
        assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_key_echoed_in_an_error_is_never_stored_written_or_printed(fake_openai, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    key = "sk-proj-SECRETsecret1234567890abcd"
    monkeypatch.setenv("FAKE_KEY", key)
    fake_openai.faults.extend(["echo-key"])
    cfg = GenerateConfig(
        recipe="explain", input=str(sample_path("nli", "dev")), output=str(tmp_path / "o.jsonl"),
        limit=2, progress=False,
        teacher=TeacherConfig(kind="openai", model="fake-model", base_url=fake_openai.base_url,
                              api_key_env="FAKE_KEY", concurrency=1),
    )  # fmt: skip
    result = run_generate(cfg)
    assert result.n_failed == 1 and "[redacted]" in result.errors[0]
    assert fake_openai.log[0]["auth"] == f"Bearer {key}"  # it really was echoed
    with TeacherStore() as store:
        dump = "\n".join(map(str, store.db.execute("SELECT * FROM responses").fetchall()))
    assert "upstream refused" in dump and key not in dump
    assert key not in summary_path(cfg.output).read_text()
    printed = CliRunner().invoke(
        main, ["generate", "--recipe", "explain", "--input", str(sample_path("nli", "dev")),
               "--output", str(tmp_path / "p.jsonl"), "--teacher", "openai", "--model",
               "fake-model", "--base-url", fake_openai.base_url, "--limit", "3",
               "teacher.api_key_env=FAKE_KEY"],
    )  # fmt: skip
    assert key not in printed.output


def test_redact():
    assert redact("bad key sk-abcdefghijklmnop1234 here") == "bad key [redacted] here"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact("http://bob:hunter2@host/v1") == "http://[redacted]@host/v1"
    assert redact("my key is mysecretvalue", ["mysecretvalue"]) == "my key is [redacted]"
    assert redact("local host", ["local"]) == "local host"  # too short to be a secret


def test_base_url_with_a_password_is_refused_without_echoing_it(tmp_path):
    result = CliRunner().invoke(
        main, ["generate", "--recipe", "explain", "--input", str(sample_path("nli", "dev")),
               "--output", str(tmp_path / "o.jsonl"), "--teacher", "openai",
               "--base-url", "http://bob:hunter2@127.0.0.1:9/v1"],
    )  # fmt: skip
    assert result.exit_code != 0 and "user:password@" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output


def test_keys_file_that_is_not_an_object(monkeypatch, tmp_path):
    from protege.paths import keys_path

    keys_path().write_text(json.dumps(["sk-abc"]))
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_keys()
    keys_path().unlink()


def test_full_store_while_collecting_a_batch_keeps_every_answer_and_submits_nothing_twice(
    teacher_db, tmp_path
):
    """Batch mode: the store fills up (SQLITE_FULL for real) after the batch was submitted;
    collecting it stops at once, every downloaded answer is saved, and the rerun (with room)
    imports them and collects the same batch again: no batch is created twice."""
    from protege.teacher.batch import batch_all
    from protege.testing.fake_openai import FakeOpenAI

    with FakeOpenAI(batch_delay=0.05) as server:
        cfg = TeacherConfig(kind="openai", model="fake-model", base_url=server.base_url,
                            mode="batch", batch_poll_s=0.05, backoff_s=0.01)  # fmt: skip
        requests = _requests(cfg, 30)
        store = TeacherStore()

        def fill_up(line: str) -> None:  # once submitted: no room for one more page
            if "submitted" in line:
                pages = store.db.execute("PRAGMA page_count").fetchone()[0]
                store.db.execute(f"PRAGMA max_page_count={pages}")

        async def go(store, progress=lambda line: None):
            client = ChatClient(cfg, server.base_url, None)
            try:
                return await batch_all(requests, cfg, client, store, Budget(None),
                                       progress=progress, rescue_dirs=[tmp_path])  # fmt: skip
            finally:
                await client.close()

        with pytest.raises(StoreWriteError) as info:
            asyncio.run(go(store, fill_up))
        message = str(info.value)
        assert "database or disk is full" in message and "while collecting batch" in message
        [saved] = rescue.pending(teacher_db)
        assert "30 answers saved to" in message and str(saved) in message
        assert store.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0
        store.close()
        assert len(server.batches.batches) == 1
        with TeacherStore() as store:  # room again: the saved answers go in first
            keys = [r.key for r in requests]
            assert len(store.get_many(keys)) == 30
            report = asyncio.run(go(store))
            assert len(store.get_many(keys)) == 30 and report.failed == 0
        assert len(server.batches.batches) == 1  # collected again, never created again
        assert sorted(server.batches.submitted.values()) == [1] * 30
    assert rescue.pending(teacher_db) == []
