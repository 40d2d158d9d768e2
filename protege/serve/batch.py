"""Predict a whole file: batched, with a progress bar, resumable.

Rows go to `OUT.partial` as they are predicted (appended and flushed per batch); the finished
file is renamed to `OUT`, so `OUT` only ever exists complete. `OUT.partial.json` says which
model (directory and fingerprint) and mode (rationale, fast) wrote it: a rerun continues an
existing `OUT.partial` only with the same model and mode, and after checking that its rows are
the input's first rows, so nothing is redone and no file mixes two models. `OUT.lock` (an
fcntl lock held for the whole run) keeps two runs from writing one output. Every row is
validated (rendered with the task's input template) before any model call, so a bad row stops
the run at once with its line number.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protege.data.io import clean, read_records, write_json
from protege.digest import model_fingerprint
from protege.errors import DataError, ProtegeError
from protege.serve.predictor import Predictor


@dataclass
class PredictResult:
    """What a `predict_file` run did."""

    output: Path
    n_rows: int
    n_resumed: int
    n_predicted: int
    n_malformed: int


def default_output(input_path: str | Path) -> Path:
    p = Path(input_path)
    return p.with_name(p.stem + ".predictions.jsonl")


def predict_file(
    predictor: Predictor,
    input_path: str | Path,
    output: str | Path | None = None,
    with_rationale: bool = False,
    fast: bool = True,
    progress: bool = True,
    model_dir: str | Path | None = None,
) -> PredictResult:
    """Write one row per input record: the record's fields plus `prediction`.

    `model_dir` is recorded with the partial output, so that a resumed run uses the same model.
    """
    records = read_records(input_path)
    if not records:
        raise DataError(str(input_path), "no rows to predict")
    sources = [predictor.source(r, source=str(input_path)) for r in records]
    out = Path(output) if output else default_output(input_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProtegeError(
            f"{out.parent}: cannot create the output directory ({e.strerror})"
        ) from e
    with _locked(out):
        if out.exists():
            raise ProtegeError(f"{out}: already exists (choose another --output)")
        partial = out.with_name(out.name + ".partial")
        meta = {"model": str(Path(model_dir).resolve()) if model_dir else None,
                "fingerprint": model_fingerprint(model_dir) if model_dir else None,
                "rationale": with_rationale, "fast": fast}  # fmt: skip
        _check_meta(partial, meta)
        done = _resume(partial, records, with_rationale)
        try:
            write_json(_meta_path(partial), meta)
            return _write(predictor, records, sources, out, partial, done, with_rationale, fast,
                          progress)  # fmt: skip
        except OSError as e:
            where = e.filename or partial
            raise ProtegeError(
                f"{where}: cannot write ({e.strerror}); the rows predicted so far are kept in "
                f"{partial} and a rerun continues from them"
            ) from e


def _write(predictor, records, sources, out, partial, done, with_rationale, fast, progress):
    from tqdm import tqdm

    malformed = 0
    bar = tqdm(total=len(records), initial=done, unit="row", desc="predict", disable=not progress)
    with open(partial, "a", encoding="utf-8") as f:
        for i in range(done, len(records), predictor.batch_size):
            batch = sources[i : i + predictor.batch_size]
            preds = predictor.predict(batch, with_rationale=with_rationale, fast=fast)
            lines = []
            for record, pred in zip(records[i : i + len(batch)], preds, strict=True):
                malformed += predictor.task.type == "classification" and pred["label"] is None
                lines.append(json.dumps({**clean(record), "prediction": pred}, ensure_ascii=False))
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    os.replace(partial, out)
    _meta_path(partial).unlink(missing_ok=True)
    return PredictResult(out, len(records), done, len(records) - done, malformed)


def _meta_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _check_meta(partial: Path, meta: dict) -> None:
    """Refuse to continue a partial output written by another model or in another mode."""
    if not partial.exists():
        return
    try:
        old = json.loads(_meta_path(partial).read_text())
    except (OSError, ValueError):
        raise ProtegeError(
            f"{partial}: no record of the model that wrote it; remove it to start over"
        ) from None
    if old.get("fingerprint") != meta["fingerprint"] or old.get("model") != meta["model"]:
        raise ProtegeError(
            f"{partial}: was written by {old.get('model') or 'another model'} "
            f"(fingerprint {old.get('fingerprint')}), not this one; rerun with that model, or "
            "remove it to start over"
        )
    for flag, on, off in (("rationale", "--rationale", "no --rationale"),
                          ("fast", "--fast", "--generate")):  # fmt: skip
        if old.get(flag) != meta[flag]:
            raise ProtegeError(
                f"{partial}: was written with {on if old.get(flag) else off}; rerun the same "
                "way or remove it"
            )


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold `OUT.lock` for the block: a second run on the same output stops at once."""
    lock = out.with_name(out.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ProtegeError(f"{lock}: cannot write in {out.parent} ({e.strerror})") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProtegeError(
                f"{out}: another `protege predict` is writing it (wait for it, or choose another "
                "--output)"
            ) from None
        yield
        lock.unlink(missing_ok=True)  # still held: a run waiting on this inode sees OUT exist
    finally:
        os.close(fd)


def _resume(partial: Path, records: list[dict], with_rationale: bool) -> int:
    """Rows already in `partial` (a torn last line is dropped); checks they match the input."""
    if not partial.exists():
        return 0
    raw = partial.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):  # interrupted mid-write: drop the torn line
        with open(partial, "wb") as f:
            f.write(complete)
    rows = []
    for n, line in enumerate(complete.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except ValueError as e:  # UnicodeDecodeError is one too
            raise ProtegeError(
                f"{partial}:{n}: not a row predict wrote ({type(e).__name__}); remove it to start "
                "over"
            ) from None
        if not isinstance(rows[-1], dict):
            raise ProtegeError(f"{partial}:{n}: not a row predict wrote; remove it to start over")
    if len(rows) > len(records):
        raise ProtegeError(f"{partial}: has more rows than the input; remove it to start over")
    for n, (row, record) in enumerate(zip(rows, records, strict=False), start=1):
        pred = row.pop("prediction", None)
        if row != clean(record) or not isinstance(pred, dict):
            raise ProtegeError(
                f"{partial}:{n}: does not match the input's row {n}; remove it to start over"
            )
        if ("rationale" in pred) != with_rationale and "label" in pred:
            raise ProtegeError(
                f"{partial}: was written {'with' if not with_rationale else 'without'} "
                "--rationale; rerun the same way or remove it"
            )
    return len(rows)
