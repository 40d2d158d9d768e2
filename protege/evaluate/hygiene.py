"""Split hygiene: test rows that leak into training or selection make every number a lie.

Two checks run before anything is scored: the same uid, or the same normalised input text,
in two splits is reported; and a file given as training or selection data that *is* the test
file (same path, or same bytes) is refused outright. Paper A's rationale runs loaded dev and
test swapped; this is the guard against that class of mistake.
"""

from __future__ import annotations

import os
import re
from itertools import combinations
from pathlib import Path
from typing import Any

from protege.data.io import file_sha256, is_file_source
from protege.errors import ProtegeError
from protege.formats import TaskConfig, render_input

MAX_EXAMPLES = 5
"""Overlapping uids/inputs quoted per pair of splits."""


def normalise_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: near-copies compare equal."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _input_text(task: TaskConfig | None, record: dict[str, Any]) -> str:
    if task is not None:
        try:
            return render_input(task, record)
        except ProtegeError:
            pass
    skip = {"uid", "id", "label", "rationale", "summary", "provenance", "teacher_text"}
    return " ".join(str(v) for k, v in record.items() if not k.startswith("_") and k not in skip)


def check_splits(
    splits: dict[str, list[dict[str, Any]]], task: TaskConfig | None = None
) -> dict[str, Any]:
    """Report rows shared by any two splits, by uid and by normalised input text.

    Returns `{"ok": bool, "pairs": [{"splits", "same_uid", "same_input", "examples"}]}`;
    a pair is listed only when it overlaps."""
    keys = {}
    for name, records in splits.items():
        uids = {str(r["uid"]) for r in records if r.get("uid") is not None}
        inputs = {normalise_text(_input_text(task, r)) for r in records}
        keys[name] = (uids, inputs - {""})
    pairs = []
    for a, b in combinations(splits, 2):
        same_uid = sorted(keys[a][0] & keys[b][0])
        same_input = sorted(keys[a][1] & keys[b][1])
        if same_uid or same_input:
            pairs.append(
                {
                    "splits": [a, b],
                    "same_uid": len(same_uid),
                    "same_input": len(same_input),
                    "examples": (same_uid + [s[:120] for s in same_input])[:MAX_EXAMPLES],
                }
            )
    return {"ok": not pairs, "pairs": pairs}


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two paths are the same file, or two files with identical bytes."""
    a, b = str(a), str(b)
    if not (is_file_source(a) and is_file_source(b)):
        return False  # hub names: the split, not the name, tells them apart
    pa, pb = Path(a), Path(b)
    if not (pa.exists() and pb.exists()):
        return pa.resolve() == pb.resolve()
    if os.path.samefile(pa, pb):
        return True
    return pa.stat().st_size == pb.stat().st_size and file_sha256(pa) == file_sha256(pb)


def refuse_test_use(path: str | Path | None, test_path: str | Path | None, role: str) -> None:
    """Raise `ProtegeError` when `path`, given as `role` data (training, selection), is the
    test file."""
    if path is None or test_path is None:
        return
    if same_file(path, test_path):
        raise ProtegeError(
            f"{path}: the {role} data is the test file {test_path}; "
            f"select and train on other data, test once"
        )
