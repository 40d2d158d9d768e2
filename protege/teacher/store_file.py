"""The store's file before SQLite opens it: created private, an empty one refused, and one
line when SQLite cannot open it (not a database, read-only)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from protege.errors import ProtegeError


class StoreOpenError(ProtegeError):
    """The store file cannot be opened as a store (corrupt, empty, read-only)."""


def create_private(path: Path) -> bool:
    """Create the file, private, before SQLite opens it; False if it was there already."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return True
    except FileExistsError:
        return False


def refuse_empty(path: Path, wait_s: float = 5.0) -> None:
    """A store that exists but is empty (0 bytes) is not a new store: it was truncated (a full
    disk, `> teacher.db`), and opening it as new would pay for every answer again and forget
    the cap. Another process that has just created it writes its header within milliseconds:
    that is waited for."""
    deadline = time.monotonic() + wait_s
    while path.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise StoreOpenError(
                f"teacher store {path}: the file is empty (0 bytes), so it is not a new store: "
                "it was truncated or never finished. Restore it from a backup, or remove it to "
                "start a new store (its answers and spending cap are gone)"
            )
        time.sleep(0.05)


def cannot_open(path: Path, error: Exception) -> str:
    """The line for a store file SQLite refuses (`file is not a database`, read-only ...)."""
    fix = "make it writable, or " if "readonly" in str(error) else ""
    return (
        f"teacher store {path}: cannot open it ({error}); {fix}restore it from a backup, or "
        "point $PROTEGE_TEACHER_DB at another store (its paid answers and spending cap are in "
        "this file: do not delete it lightly)"
    )
