"""Paid work and secrets live outside the cache directory; an old store there is moved, whole."""

from __future__ import annotations

import sqlite3
import stat

from protege.teacher.store import Answer, TeacherStore


def test_store_and_keys_move_out_of_the_cache_dir_once_and_whole(tmp_path, monkeypatch):
    monkeypatch.delenv("PROTEGE_HOME")
    monkeypatch.delenv("PROTEGE_TEACHER_DB")
    for kind in ("CACHE", "DATA", "CONFIG"):
        monkeypatch.setenv(f"XDG_{kind}_HOME", str(tmp_path / kind.lower()))
    old_dir = tmp_path / "cache" / "protege"
    old_dir.mkdir(parents=True)
    # an older protege's store, its last answer still in the WAL (not checkpointed)
    old = TeacherStore(old_dir / "teacher.db")
    old.db.execute("PRAGMA wal_autocheckpoint=0")
    old.put_many([(Answer(f"k{i}", "m", "ok", text=f"paid {i}"), {}) for i in range(3)])
    assert (old_dir / "teacher.db-wal").stat().st_size > 0
    old.close()
    (old_dir / "keys.json").write_text('{"OPENAI_API_KEY": "sk-x"}')
    (old_dir / "keys.json").chmod(0o600)

    from protege.paths import keys_path, teacher_db_path, user_dir

    new = teacher_db_path()
    assert new == tmp_path / "data" / "protege" / "teacher.db"
    assert not (old_dir / "teacher.db").exists() and not (old_dir / "teacher.db-wal").exists()
    with TeacherStore() as store:
        assert store.path == new
        assert {k: a.text for k, a in store.get_many(["k0", "k1", "k2"]).items()} == {
            "k0": "paid 0", "k1": "paid 1", "k2": "paid 2",
        }  # fmt: skip
    assert sqlite3.connect(new).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = keys_path()
    assert keys == tmp_path / "config" / "protege" / "keys.json"
    assert keys.read_text() == '{"OPENAI_API_KEY": "sk-x"}' and not (old_dir / "keys.json").exists()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert user_dir() == old_dir  # built models stay in the cache: they are rebuilt on demand
    # a second start moves nothing and never overwrites the store in use
    (old_dir / "teacher.db").write_text("a stray file")
    assert teacher_db_path() == new and (old_dir / "teacher.db").exists()


def test_a_move_interrupted_before_the_rename_loses_nothing(tmp_path):
    from protege.paths import move_store

    old, new = tmp_path / "a" / "teacher.db", tmp_path / "b" / "teacher.db"
    old.parent.mkdir()
    new.parent.mkdir()
    with TeacherStore(old) as store:
        store.put(Answer("k", "m", "ok", text="paid"), {})
    (new.parent / "teacher.db.moving").write_text("half a copy from a killed run")
    assert move_store(old, new) and not old.exists()
    with TeacherStore(new) as store:
        assert store.get("k").text == "paid"
    assert not (new.parent / "teacher.db.moving").exists()
