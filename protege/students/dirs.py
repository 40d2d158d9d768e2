"""Directories written whole or not at all: built in a temp dir beside the target, then
renamed, so a half-built model or export never exists and a failed build leaves nothing.

`atomic_dir` builds once and reuses (the built-in students, caches); `export_dir` refuses a
target that exists (an export is never silently replaced)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from protege.errors import ProtegeError


def build_atomically(out: Path, build: Callable[[Path], None]) -> Path:
    """`build(tmp)` into a temp dir beside `out`, then rename it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        if out.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def atomic_dir(out: Path, build: Callable[[Path], None]) -> Path:
    """`out`, built once: a model dir already there (its config or tokenizer) is reused."""
    if (out / "config.json").exists() or (out / "tokenizer_config.json").exists():
        return out
    return build_atomically(out, build)


def export_dir(out: Path, build: Callable[[Path], None]) -> Path:
    """A new export at `out`; one already there is an error, not something replaced."""
    if out.exists():
        raise ProtegeError(f"{out}: already exists (remove it or pass --output)")
    return build_atomically(out, build)
