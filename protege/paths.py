"""Where protege keeps its user-level state.

Paid work and secrets never live in a cache directory (cache cleaners delete those):

    teacher store (paid answers)   user data dir     (~/.local/share/protege/teacher.db)
    API keys file                  user config dir   (~/.config/protege/keys.json)
    built models, test models      user cache dir    (~/.cache/protege/; rebuilt on demand)

`$PROTEGE_HOME` puts all three in one directory (tests point it at a temp dir). A store or
keys file left in the cache directory by an older protege is moved on first use, atomically:
the old file is removed only once the new one is complete.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import platformdirs

APP = "protege"


def _dir(kind: str) -> Path:
    env = os.environ.get("PROTEGE_HOME")
    if env:
        path = Path(env)
    else:
        path = Path(
            {
                "cache": platformdirs.user_cache_dir,
                "data": platformdirs.user_data_dir,
                "config": platformdirs.user_config_dir,
            }[kind](APP)
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_dir() -> Path:
    """`$PROTEGE_HOME`, else the user's cache directory: things protege can rebuild."""
    return _dir("cache")


def teacher_db_path() -> Path:
    """The SQLite teacher store: `$PROTEGE_TEACHER_DB`, else `<user data dir>/teacher.db`."""
    env = os.environ.get("PROTEGE_TEACHER_DB")
    if env:
        return Path(env)
    path = _dir("data") / "teacher.db"
    if not os.environ.get("PROTEGE_HOME"):
        move_store(Path(platformdirs.user_cache_dir(APP)) / "teacher.db", path)
    return path


def keys_path() -> Path:
    """API keys file (JSON, mode 600): `<user config dir>/keys.json`."""
    path = _dir("config") / "keys.json"
    if not os.environ.get("PROTEGE_HOME"):
        move_file(Path(platformdirs.user_cache_dir(APP)) / "keys.json", path)
    return path


def move_store(old: Path, new: Path) -> bool:
    """Move a SQLite store (with its WAL) from `old` to `new` if only `old` exists.

    SQLite's backup API copies a consistent snapshot, WAL content included, into a temp file
    beside `new`; the temp file is renamed into place, and only then is `old` removed. A crash
    at any point leaves a complete store at `old`, at `new`, or at both.
    """
    if new.exists() or not old.exists():
        return False
    tmp = new.with_name(new.name + ".moving")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(old)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, new)
    for suffix in ("", "-wal", "-shm"):
        Path(str(old) + suffix).unlink(missing_ok=True)
    return True


def move_file(old: Path, new: Path) -> bool:
    """Move a small private file (created mode 600) if only `old` exists: copy, rename, remove."""
    if new.exists() or not old.exists():
        return False
    tmp = new.with_name(new.name + ".moving")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(old.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, new)
    old.unlink()
    return True
