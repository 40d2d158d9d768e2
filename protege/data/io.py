"""Reading and writing records: JSONL, CSV, Parquet files, or Hugging Face dataset names.

Every reader returns a list of plain dicts. A malformed line or a missing field raises a
`DataError` naming the file, the line and the field, before anything is paid for. Every
writer is atomic: a temp file in the same directory, then a rename.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protege.errors import DataError

if TYPE_CHECKING:
    from protege.data.hub import HubQuery

FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


def is_file_source(source: str) -> bool:
    return Path(source).suffix.lower() in FILE_SUFFIXES or Path(source).exists()


SLICE = re.compile(r"^(?P<path>.+?)\[(?P<a>-?\d*):(?P<b>-?\d*)\]$")


def split_source(source: str) -> tuple[str, slice | None]:
    """`data.jsonl[:800]` -> ("data.jsonl", slice(None, 800))."""
    m = SLICE.match(source)
    if not m:
        return source, None
    a, b = m.group("a"), m.group("b")
    return m.group("path"), slice(int(a) if a else None, int(b) if b else None)


def read_records(
    source: str | Path, split: str | None = None, hub: HubQuery | None = None
) -> list[dict[str, Any]]:
    """Read all records from a file path or a Hugging Face dataset name (`facebook/anli`, or
    the short `anli`).

    `split` and `hub` are only used for hub names: `split` is `train`, `dev`/`validation`,
    `test`, or the dataset's own split name such as `train_r1`; `hub` can name the dataset's
    split and config and filter rows before they are read (`protege.data.hub.HubQuery`).
    """
    source = str(source)
    if not is_file_source(source):
        from dataclasses import replace

        from protege.data.hub import HubQuery, read_hub

        query = replace(hub, split=split or hub.split) if hub else HubQuery(split or "train")
        return read_hub(source, query)
    path = Path(source)
    if not path.exists():
        raise DataError(source, "no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return list(iter_jsonl(path))
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(source, f"unsupported file type {suffix!r} (use .jsonl, .csv or .parquet)")


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line; a bad line (not UTF-8, not JSON, not an object, a
    lone surrogate) raises `DataError` with its line number."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), f"not UTF-8 (byte {e.start + 1})", line=lineno) from e
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), f"not valid JSON ({e.msg})", line=lineno) from e
            except RecursionError as e:
                raise DataError(str(path), "JSON nested too deeply", line=lineno) from e
            if not isinstance(record, dict):
                raise DataError(str(path), "expected a JSON object", line=lineno)
            if _SURROGATE_ESCAPE.search(line):
                check_unicode(record, str(path), lineno)
            record.setdefault("_line", lineno)
            yield record


# `\ud800`-`\udfff` escapes: a surrogate, valid only as half of a pair (checked by encoding).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_unicode(record: dict[str, Any], source: str, line: int) -> None:
    """Raise `DataError` when a string in `record` holds a lone surrogate (not valid Unicode:
    it cannot be written as UTF-8 nor tokenized)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            source, "a string holds a lone surrogate (not valid Unicode)", line=line
        ) from e


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV with a header line (a UTF-8 byte-order mark is dropped); errors name the line."""
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row:
                    raise DataError(
                        str(path), "more values than header columns", line=reader.line_num
                    )
                row["_line"] = reader.line_num
                rows.append(row)
        except UnicodeDecodeError as e:
            raise DataError(str(path), "not UTF-8", line=reader.line_num + 1) from e
        except csv.Error as e:
            raise DataError(str(path), f"not valid CSV ({e})", line=reader.line_num) from e
    return rows


def rename_fields(records: list[dict[str, Any]], mapping: dict[str, str]) -> list[dict[str, Any]]:
    """Map source field names to the names protege uses: `{protege_name: source_name}`."""
    if not mapping:
        return records
    out = []
    for r in records:
        r = dict(r)
        for ours, theirs in mapping.items():
            if theirs in r:
                r[ours] = r.pop(theirs) if theirs != ours else r[theirs]
        out.append(r)
    return out


def require_fields(records: list[dict[str, Any]], fields: Iterable[str], source: str) -> None:
    """Raise `DataError` on the first record that lacks one of `fields` (or has it empty)."""
    fields = list(fields)
    for i, r in enumerate(records, start=1):
        for f in fields:
            value = r.get(f)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(source, "missing or empty", line=r.get("_line", i), field=f)


def require_labels(
    records: list[dict[str, Any]], field: str, labels: list[str], source: str
) -> None:
    """Raise `DataError` on the first record whose label is not in `labels` (case-insensitive)."""
    allowed = {label.lower() for label in labels}
    for i, r in enumerate(records, start=1):
        value = str(r.get(field, "")).strip().lower()
        if value not in allowed:
            raise DataError(
                source,
                f"unknown label {r.get(field)!r} (expected one of {', '.join(labels)})",
                line=r.get("_line", i),
                field=field,
            )


def clean(record: dict[str, Any]) -> dict[str, Any]:
    """A record without protege's bookkeeping keys (`_line`)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically: temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonl_line(record: dict[str, Any]) -> str:
    """One record as a JSONL line (no newline), without protege's bookkeeping keys."""
    return json.dumps(clean(record), ensure_ascii=False)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any] | str]) -> None:
    """Write records (or lines already made by `jsonl_line`) as JSONL, atomically."""
    text = "".join((r if isinstance(r, str) else jsonl_line(r)) + "\n" for r in records)
    atomic_write_text(path, text)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
