"""The store's file when it is not what it should be: empty, corrupt, read-only, or full with
its rescued answers left somewhere else. One line naming the file, and nothing paid twice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from protege.cli import main
from protege.data.samples import sample_path
from protege.teacher import rescue
from protege.teacher.chat import ChatClient
from protege.teacher.client import Request, call_all
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget, worst_prompt_tokens
from protege.teacher.store import StoreOpenError, StoreWriteError, TeacherStore


@contextmanager
def frozen(*paths: Path):
    """Paths nothing can write to, root included (as on a read-only or full disk): a directory
    that takes no new file, a file that takes no write."""
    if os.geteuid() == 0:
        done = []
        try:
            for p in paths:
                if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode:
                    pytest.skip("this filesystem refuses chattr +i")
                done.append(p)
            yield
        finally:
            for p in done:
                subprocess.run(["chattr", "-i", str(p)], check=True)
    else:
        modes = [p.stat().st_mode for p in paths]
        try:
            for p in paths:
                p.chmod(0o555 if p.is_dir() else 0o444)
            yield
        finally:
            for p, mode in zip(paths, modes, strict=True):
                p.chmod(mode)


def _generate(server, tmp_path, n: int = 3):
    return CliRunner().invoke(main, [
        "generate", "--recipe", "explain", "--input", str(sample_path("nli", "dev")),
        "--output", str(tmp_path / "o.jsonl"), "--teacher", "openai", "--model", "fake-model",
        "--base-url", server.base_url, "--limit", str(n)])  # fmt: skip


def test_an_empty_store_file_is_refused_not_opened_as_a_new_store(fake_openai, teacher_db,
                                                                   tmp_path):  # fmt: skip
    assert _generate(fake_openai, tmp_path).exit_code == 0
    paid = len(fake_openai.log)
    teacher_db.write_bytes(b"")  # truncated: its answers and its cap are gone from the file
    for suffix in ("-wal", "-shm"):
        Path(f"{teacher_db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreOpenError, match=r"teacher.db: the file is empty \(0 bytes\)"):
        TeacherStore()
    result = _generate(fake_openai, tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the file is empty (0 bytes)" in result.output
    assert len(fake_openai.log) == paid  # nothing paid again
    assert teacher_db.stat().st_size == 0  # and the file is left as it was


def test_a_corrupt_store_is_one_line(fake_openai, teacher_db, tmp_path):
    teacher_db.write_bytes(b"this is not a SQLite database, whatever its name " * 100)
    result = _generate(fake_openai, tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "teacher.db: cannot open it (file is not a database)" in result.output
    assert fake_openai.log == []


def test_a_read_only_store_is_one_line(fake_openai, teacher_db, tmp_path):
    TeacherStore().close()
    with frozen(teacher_db, teacher_db.parent):
        result = _generate(fake_openai, tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "teacher.db: cannot open it" in result.output
    assert fake_openai.log == []


def test_answers_a_full_disk_left_beside_the_output_are_imported_by_the_rerun(
    fake_openai, tmp_path, monkeypatch
):
    """The store's disk is full: its directory takes no rescue file either, so the answers go
    beside the output. The rerun finds them there and pays for none of them again."""
    db = tmp_path / "store" / "teacher.db"
    monkeypatch.setenv("PROTEGE_TEACHER_DB", str(db))
    out = tmp_path / "out"
    out.mkdir()
    # lease_s: the first run's leases are this process's, alive: the rerun waits them out
    cfg = TeacherConfig(kind="openai", model="fake-model", base_url=fake_openai.base_url,
                        concurrency=4, lease_s=1.0)  # fmt: skip
    requests = []
    for i in range(40):
        messages = [{"role": "user", "content": f"Explain row {i}. " + "context " * 60}]
        requests.append(Request(f"key-{i}", messages, worst_prompt_tokens(messages)))

    async def go(store):
        client = ChatClient(cfg, fake_openai.base_url, None)
        try:
            return await call_all(requests, cfg, client, store, Budget(None), rescue_dirs=[out])
        finally:
            await client.close()

    store = TeacherStore()
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages + 3}")
    with frozen(db.parent):
        with pytest.raises(StoreWriteError, match="database or disk is full") as info:
            asyncio.run(go(store))
        store.close()
    [saved] = out.glob("*.unwritten.jsonl")
    assert saved.parent == out and str(saved) in str(info.value)
    rescued = len(rescue.load(saved))
    assert rescued > 0
    with TeacherStore() as store:  # room again: the rerun
        asyncio.run(go(store))
        assert len(store.get_many([r.key for r in requests])) == 40
    sent = [json.dumps(e["body"]["messages"]) for e in fake_openai.log]
    assert len(sent) == len(set(sent)) == 40  # every prompt paid once, the rescued ones too
    assert not saved.exists()
