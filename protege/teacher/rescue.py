"""Paid answers the store could not take (disk full, read-only disk): kept in a JSONL file.

When a store write fails, `call_all` stops sending and hands every answer it holds to `save`,
which writes them, as the store's own rows, to the first directory that takes them: beside the
store, then the other directories given (the output's), the working directory and the temp
directory. A full disk rarely lets the first one take it, so the file's name carries the store
(`<store name>.<digest of its path>.<time>-<pid>.unwritten.jsonl`) and the store looks for its
files in all of those places when it opens (the output's directory when a job starts):
a rerun imports them before it sends anything. `protege teacher import FILE` imports such a
file by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from protege.teacher.answer import Answer

SUFFIX = ".unwritten.jsonl"

Item = tuple[Answer, dict[str, Any]]


def save(items: list[Item], store_path: Path, extra_dirs: list[Path] = ()) -> Path | None:
    """Write `items` to `<store name>.<time>-<pid>.unwritten.jsonl` in the first directory that
    takes the whole file (temp file, fsync, rename; mode 600); None if none does."""
    name = f"{_stem(store_path)}.{int(time.time())}-{os.getpid()}{SUFFIX}"
    text = "".join(
        json.dumps({**dataclasses.asdict(a), "request": req}, ensure_ascii=False) + "\n"
        for a, req in items
    ).encode()
    for d in _dirs(store_path, extra_dirs):
        target, tmp = d / name, d / (name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            return target
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return None


def is_rescue_file(path: str | Path) -> bool:
    """Whether `path` is a file `save` wrote (its rows are store rows with their request)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"key", "status", "request"} <= set(first)


def load(path: str | Path) -> list[Item]:
    """The (answer, request) pairs in a file `save` wrote."""
    names = {f.name for f in dataclasses.fields(Answer)}
    items = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            items.append((Answer(**{k: v for k, v in row.items() if k in names}), row["request"]))
    return items


def _stem(store_path: Path) -> str:
    """`<store name>.<digest of its full path>`: whose rescue files these are, wherever they
    lie (two stores named teacher.db share a temp directory)."""
    digest = hashlib.sha256(str(Path(store_path).resolve()).encode()).hexdigest()[:12]
    return f"{store_path.name}.{digest}"


def _dirs(store_path: Path, extra_dirs: list[Path]) -> list[Path]:
    dirs = [store_path.parent, *extra_dirs, Path.cwd(), Path(tempfile.gettempdir())]
    out = []
    for d in dirs:
        try:
            out.append(Path(d).resolve())
        except OSError:  # the working directory was removed
            continue
    return list(dict.fromkeys(out))


def pending(store_path: Path, extra_dirs: list[Path] = ()) -> list[Path]:
    """The files `save` wrote for this store, wherever it wrote them (beside the store,
    `extra_dirs`, the working directory, the temp directory), oldest first."""
    found: set[Path] = set()
    for d in _dirs(store_path, list(extra_dirs)):
        try:
            found |= {p for p in d.glob(f"{_stem(store_path)}.*{SUFFIX}") if p.is_file()}
        except OSError:
            continue
    # files from before names carried the store: only beside the store itself
    old = store_path.parent.glob(f"{store_path.name}.*{SUFFIX}")
    found |= {p for p in old if p.name.count(".") == store_path.name.count(".") + 3}
    return sorted(found, key=lambda p: (p.name.rsplit(".", 3)[-3], str(p)))
