"""Input blocks for distributed prediction: plan them, read them, write their shards.

An input (a JSONL, CSV or Parquet file, or a directory of them; a local path or any URL
pyarrow or fsspec knows: s3://, gs://, hf://) is cut into blocks of `block_rows` records,
each file on its own. A block is a byte range of a JSONL/CSV file (starting at a record) or a
row range of a Parquet file, with the line (row) number of its first record, so that a bad row
is reported as `file:line` however the work is spread. Blocks start at a multiple of the batch
size, so a block's batches are exactly those single-process `protege predict` makes.

Each block becomes one output shard named after it (`<file>.part-<k>.parquet`), written under
a hidden temporary name and then moved into place: a shard only exists complete, and its
existence is what a rerun skips on. Bad rows of a block go to `_errors/<shard>.jsonl` (written
before the shard); pyarrow and Ray skip `_` and `.` names when they read the output back.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from protege.errors import ProtegeError

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
ERRORS_DIR = "_errors"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Block:
    """A run of records of one input file."""

    path: str
    """The file, as its filesystem names it."""
    name: str
    """The shard name: the file's path under the input, and the block's index."""
    kind: str
    """`jsonl`, `csv` or `parquet`."""
    start: int
    """First byte (JSONL, CSV) or first row index (Parquet)."""
    end: int
    """One past the last byte, or the last row index."""
    first: int
    """The line number (JSONL, CSV) or row number (Parquet) of the block's first record."""
    header: str = ""
    """CSV only: the header line."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Block:
        return cls(**json.loads(text))


def open_fs(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a local path or a URL: pyarrow's own filesystems first
    (local, s3, gs, hdfs), then any fsspec protocol (hf://, az://, ...)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        from pathlib import Path

        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, ValueError, OSError):
        pass
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError, OSError) as e:
        raise ProtegeError(f"{uri}: no filesystem for this URL ({e})") from e
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def list_inputs(fs: Any, path: str) -> list[tuple[str, str]]:
    """[(file path, name relative to the input)] of the readable files at `path`, sorted."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ProtegeError(f"{path}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [(path, info.base_name)]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    root = path.rstrip("/") + "/"
    files = []
    for f in found:
        rel = f.path[len(root) :] if f.path.startswith(root) else f.base_name
        hidden = any(part.startswith((".", "_")) for part in rel.split("/"))
        if f.type == pafs.FileType.File and not hidden and _kind(f.path):
            files.append((f.path, rel))
    if not files:
        raise ProtegeError(f"{path}: no .jsonl, .csv or .parquet files in this directory")
    return sorted(files, key=lambda x: x[1])


def _kind(path: str) -> str | None:
    dot = path.rfind(".")
    return SUFFIXES.get(path[dot:].lower()) if dot >= 0 else None


def plan_blocks(fs: Any, path: str, rel: str, block_rows: int) -> list[Block]:
    """Cut one file into blocks of `block_rows` records (the last may be shorter)."""
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            n = pq.ParquetFile(f).metadata.num_rows
        return [
            Block(path, _name(rel, k), kind, a, min(a + block_rows, n), a + 1)
            for k, a in enumerate(range(0, n, block_rows))
        ]
    ranges = _text_ranges(fs, path, block_rows, csv_file=kind == "csv")
    header = ranges.pop(0)[2] if kind == "csv" else ""
    return [
        Block(path, _name(rel, k), kind, a, b, line, header)
        for k, (a, b, line) in enumerate(ranges)
    ]


def _name(rel: str, k: int) -> str:
    return f"{rel}.part-{k:05d}"


def _lines(fs: Any, path: str) -> Iterator[bytes]:
    """The file's lines (with their line ends), read in large chunks."""
    with fs.open_input_stream(path) as f:
        rest = b""
        while chunk := f.read(_CHUNK):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line + b"\n"
        if rest:
            yield rest


def _text_ranges(fs: Any, path: str, block_rows: int, csv_file: bool) -> list[tuple]:
    """[(first byte, end byte, first line number)] of each block of a JSONL or CSV file; for
    CSV the first entry is (0, header end, header line). A CSV record may span lines: the
    csv module finds where each ends; blank JSONL lines belong to no record."""
    out: list[tuple] = []
    offset, lineno = 0, 0  # bytes and lines consumed
    start, start_line, count = 0, 1, 0

    def feed() -> Iterator[str]:
        nonlocal offset, lineno
        for raw in _lines(fs, path):
            offset += len(raw)
            lineno += 1
            yield raw.decode("utf-8", errors="replace")

    if csv_file:
        reader = csv.reader(feed())
        header = next(reader, None)
        if header is None:
            return [(0, 0, "")]
        with fs.open_input_stream(path) as f:
            head = f.read(offset).decode("utf-8-sig", errors="replace")
        out.append((0, offset, head))
        start, start_line = offset, lineno + 1
        while True:
            try:
                next(reader)
            except StopIteration:
                break
            except csv.Error:  # a bad record still ends where the reader stopped
                pass
            count += 1
            if count == block_rows:
                out.append((start, offset, start_line))
                start, start_line, count = offset, lineno + 1, 0
    else:
        for line in feed():
            count += bool(line.strip())
            if count == block_rows:
                out.append((start, offset, start_line))
                start, start_line, count = offset, lineno + 1, 0
    if count:
        out.append((start, offset, start_line))
    return out


Row = tuple[dict[str, Any], str | None]
"""A record (with `_line`: its line or row number), and the reason it is bad or None."""


def read_block(fs: Any, block: Block) -> list[Row]:
    """The block's records in order, each with `_line` (its line or row number); a bad one
    (not UTF-8, not JSON, not an object, a ragged CSV row) comes with its reason instead."""
    if block.kind == "parquet":
        return _read_parquet(fs, block)
    with fs.open_input_file(block.path) as f:
        f.seek(block.start)
        data = f.read(block.end - block.start)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if block.kind == "csv":
        return _read_csv(block, [line + b"\n" for line in lines])
    from protege.data.io import check_unicode

    rows: list[Row] = []
    for i, raw in enumerate(lines):
        lineno = block.first + i
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            rows.append(({"_line": lineno}, f"not UTF-8 (byte {e.start + 1})"))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(({"_line": lineno}, f"not valid JSON ({e.msg})"))
            continue
        except RecursionError:
            rows.append(({"_line": lineno}, "JSON nested too deeply"))
            continue
        if not isinstance(record, dict):
            rows.append(({"_line": lineno}, "expected a JSON object"))
            continue
        record.setdefault("_line", lineno)
        try:
            check_unicode(record, block.path, lineno)
        except ProtegeError:
            rows.append(({"_line": lineno}, "a string holds a lone surrogate (not valid Unicode)"))
            continue
        rows.append((record, None))
    return rows


def _read_csv(block: Block, lines: list[bytes]) -> list[Row]:
    header = next(csv.reader([block.header]))
    text = (line.decode("utf-8", errors="surrogateescape") for line in lines)
    reader = csv.DictReader(text, fieldnames=header)
    rows: list[Row] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rows.append(({"_line": block.first - 1 + reader.line_num}, f"not valid CSV ({e})"))
            continue
        lineno = block.first - 1 + reader.line_num
        if None in row:
            rows.append(({"_line": lineno}, "more values than header columns"))
        elif any(isinstance(v, str) and _has_surrogate(v) for v in row.values()):
            rows.append(({"_line": lineno}, "not UTF-8"))
        else:
            row["_line"] = lineno
            rows.append((row, None))
    return rows


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(fs: Any, block: Block) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open_input_file(block.path) as f:
        pf = pq.ParquetFile(f)
        meta, groups, first, at = pf.metadata, [], None, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if at + n > block.start and at < block.end:
                groups.append(g)
                first = at if first is None else first
            at += n
        table = pf.read_row_groups(groups) if groups else pa.table({})
    table = table.slice(block.start - (first or 0), block.end - block.start)
    return [({**r, "_line": block.start + 1 + i}, None) for i, r in enumerate(table.to_pylist())]


def write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write `data` to `path` under a hidden temporary name, then move it into place."""
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def shard_bytes(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """The shard file's contents: JSONL lines, or a Parquet table."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ProtegeError(
            f"cannot write these rows as Parquet ({e}); use --output-format jsonl"
        ) from None
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
