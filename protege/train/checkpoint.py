"""Checkpoints: model dirs that carry their config, the resumable `last/` state, and the pure
rules that pick the best evaluation and decide early stopping.

Every directory is written into a temp dir and renamed into place, so a kill never leaves a
half-written checkpoint where a finished one is expected.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protege.data.io import write_json
from protege.errors import ProtegeError
from protege.formats import TaskConfig, save_task

META_FILE = "protege_meta.json"
STATE_FILE = "trainer_state.json"


# ---- selection (pure) -------------------------------------------------------------------


def select_best(history: list[dict[str, Any]], key: str, higher_is_better: bool) -> dict | None:
    """The evaluation with the best `key`; ties go to the earlier step; None values ignored."""
    best = None
    for entry in history:
        value = entry.get(key)
        if value is None:
            continue
        if best is None or (value > best[key] if higher_is_better else value < best[key]):
            best = entry
    return best


def evals_since_best(history: list[dict[str, Any]], key: str = "eval_loss") -> int:
    """How many evaluations came after the one with the lowest `key` (HF's patience counter)."""
    best = select_best(history, key, higher_is_better=False)
    if best is None:
        return 0
    return len(history) - 1 - next(i for i, h in enumerate(history) if h is best)


def should_stop(history: list[dict[str, Any]], patience: int) -> bool:
    """Early stopping: `patience` evaluations in a row without a lower eval loss."""
    return evals_since_best(history) >= patience


# ---- writing ----------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers

    import protege

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "protege": protege.__version__,
    }


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temp dir to `dest`, replacing an older one (old removed only after)."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


def save_model_dir(student, task: TaskConfig, meta: dict[str, Any], dest: str | Path) -> Path:
    """An ordinary HF model dir (`student.save`: LoRA merged in) + protege_task.json +
    protege_meta.json, written atomically."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with _room(tmp, dest):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        student.save(student.model, tmp)
        save_task(task, tmp)
        write_json(tmp / META_FILE, meta)
        replace_dir(tmp, dest)
    return dest


@contextmanager
def _room(tmp: Path, dest: Path) -> Iterator[None]:
    """A checkpoint the disk cannot take (full, read-only, a file size limit) is one line
    naming it, never a traceback; its half-written temp dir goes (freeing what it took), and
    the checkpoints already there are left as they were."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _io_error(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ProtegeError(
            f"{dest}: cannot write the checkpoint ({why}); free some space and rerun: the run "
            f"resumes from the last checkpoint written"
        ) from None


def _io_error(e: RuntimeError) -> bool:
    """torch.save's failed write (`PytorchStreamWriter failed writing file ...`)."""
    return "writ" in str(e).lower() or "file" in str(e).lower()


def save_last(accelerator, state: dict[str, Any], dest: Path) -> None:
    """The resumable checkpoint: model, optimizer, scheduler and every process's RNG state
    (accelerate's save_state, called on all processes) plus the loop position, written last."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    with _room(tmp, dest):
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with _room(tmp, dest):
            write_json(tmp / STATE_FILE, state)
            replace_dir(tmp, dest)
    accelerator.wait_for_everyone()


def load_last(accelerator, src: Path) -> dict[str, Any] | None:
    """Restore a `last/` checkpoint into the prepared objects; returns the loop position."""
    state_file = src / STATE_FILE
    if not state_file.exists():
        return None
    accelerator.load_state(str(src))
    return json.loads(state_file.read_text())
