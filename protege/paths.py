"""Where protege keeps its user-level state (the teacher store, keys, built models)."""

import os
from pathlib import Path

import platformdirs


def user_dir() -> Path:
    """`$PROTEGE_HOME`, else the user's cache directory. Tests point this at a temp dir."""
    env = os.environ.get("PROTEGE_HOME")
    path = Path(env) if env else Path(platformdirs.user_cache_dir("protege"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def teacher_db_path() -> Path:
    """The SQLite teacher store: `$PROTEGE_TEACHER_DB`, else `<user_dir>/teacher.db`."""
    env = os.environ.get("PROTEGE_TEACHER_DB")
    return Path(env) if env else user_dir() / "teacher.db"


def keys_path() -> Path:
    """API keys file (JSON, mode 600): `<user_dir>/keys.json`."""
    return user_dir() / "keys.json"
