"""`protege predict --ray`: the student over a whole corpus, on a Ray cluster.

Ray Data runs a fixed pool of predictor actors (`map_batches` over the input's blocks, one
block per call); each actor loads the model once (whatever runtime its directory holds:
CTranslate2, ONNX or PyTorch; one GPU each when asked; the directory at the same path on
every node: one machine, or a filesystem they all mount), reads its block through pyarrow or
fsspec, predicts it in the same batches as single-process `protege predict`, and writes the
block's shard atomically (`protege.serve.blocks`). A rerun plans the same blocks and skips
those whose shard exists; a block whose actor died is retried by Ray and its shard is still
written once. `_protege_predict.json` in the output records the model, the mode and the
blocking, and a rerun with other ones is refused (no output mixes two models).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.data.io import clean
from protege.errors import ProtegeError
from protege.serve.blocks import (
    ERRORS_DIR,
    Block,
    list_inputs,
    open_fs,
    plan_blocks,
    read_block,
    shard_bytes,
    write_atomic,
)

MANIFEST = "_protege_predict.json"
INSTALL = "pip install 'protege[ray]'"
FORMATS = ("parquet", "jsonl")


@dataclass
class RayPredictResult:
    """What a `predict_ray` run did."""

    output: str
    n_blocks: int
    n_skipped: int
    """Blocks whose shard a previous run had written."""
    n_rows: int
    """Rows this run wrote (in `n_blocks - n_skipped` shards)."""
    bad_rows: list[str] = field(default_factory=list)
    """`file:line: reason` of every row left out, in all shards."""


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ProtegeError(f"--ray needs Ray Data: {INSTALL}") from None
    return ray


def predict_ray(
    model_dir: str | Path,
    input_uri: str,
    output_uri: str,
    *,
    address: str | None = None,
    workers: int = 1,
    threads: int = 1,
    gpus: float = 0,
    batch_size: int = 32,
    block_rows: int = 32768,
    fmt: str = "parquet",
    with_rationale: bool = False,
    fast: bool = True,
    progress: bool = True,
) -> RayPredictResult:
    """Predict every row of `input_uri` into shards under `output_uri` with `workers` actors.

    Uses the running Ray instance if this process has one, else `address` (`auto`, a head
    node's `HOST:PORT`, or `ray://HOST:PORT`), else starts a local one for the run."""
    from protege.digest import model_fingerprint

    ray = import_ray()
    if fmt not in FORMATS:
        raise ProtegeError(f"unknown output format {fmt!r} ({', '.join(FORMATS)})")
    model_dir = Path(model_dir).resolve()
    fingerprint = model_fingerprint(model_dir)
    block_rows = -(-max(block_rows, 1) // batch_size) * batch_size  # whole batches per block
    in_fs, in_path = open_fs(input_uri)
    out_fs, out_path = open_fs(output_uri)
    try:
        files = list_inputs(in_fs, in_path)
        meta = {"model": str(model_dir), "fingerprint": fingerprint,
                "rationale": with_rationale, "fast": fast, "batch_size": batch_size,
                "block_rows": block_rows, "format": fmt,
                "inputs": {rel: in_fs.get_file_info(p).size for p, rel in files}}  # fmt: skip
        _check_manifest(out_fs, out_path, meta, output_uri)
        blocks = [b for p, rel in files for b in plan_blocks(in_fs, p, rel, block_rows)]
        done = {i.base_name for i in _listing(out_fs, out_path)}
    except OSError as e:  # pyarrow's messages name the path
        raise ProtegeError(str(e).strip().splitlines()[0]) from None
    todo = [b for b in blocks if f"{b.name}.{fmt}" not in done]
    started = _connect(ray, address, workers * threads, gpus * workers)
    n_rows = 0
    try:
        if todo:
            n_rows = _run(ray, todo, model_dir, fingerprint, in_fs, out_fs, out_path,
                 dict(batch_size=batch_size, threads=threads, device="cuda" if gpus else "cpu",
                      fmt=fmt, with_rationale=with_rationale, fast=fast),
                 workers, threads, gpus, progress)  # fmt: skip
    finally:
        if started:
            ray.shutdown()
    for info in _listing(out_fs, out_path):  # a killed attempt's temp file; its block is done
        if info.base_name.startswith(".") and ".tmp-" in info.base_name:
            out_fs.delete_file(info.path)
    bad = _bad_rows(out_fs, out_path, blocks)
    return RayPredictResult(output_uri, len(blocks), len(blocks) - len(todo), n_rows, bad)


def _listing(fs: Any, path: str) -> list[Any]:
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def _check_manifest(fs: Any, out: str, meta: dict, uri: str) -> None:
    """Write the run's manifest, or refuse when the output was started another way."""
    import pyarrow.fs as pafs

    path = f"{out}/{MANIFEST}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        if any(not i.base_name.startswith((".", "_")) for i in _listing(fs, out)):
            raise ProtegeError(f"{uri}: holds other files; choose an empty or new output")
        fs.create_dir(out, recursive=True)
        write_atomic(fs, path, json.dumps(meta, indent=1).encode())
        return
    with fs.open_input_stream(path) as f:
        old = json.loads(f.read())
    for key, what in (("fingerprint", "the model"), ("model", "the model directory"),
                      ("rationale", "--rationale"), ("fast", "--fast/--generate"),
                      ("format", "--output-format"), ("block_rows", "--block-rows"),
                      ("batch_size", "--batch-size")):  # fmt: skip
        if old.get(key) != meta[key]:
            raise ProtegeError(
                f"{uri}: was started with another {what} ({old.get(key)!r}, now "
                f"{meta[key]!r}); rerun the same way, or choose another output"
            )
    for rel, size in old["inputs"].items():
        if rel in meta["inputs"] and meta["inputs"][rel] != size:
            raise ProtegeError(
                f"{uri}: the input {rel} changed since this output was started ({size} bytes, "
                f"now {meta['inputs'][rel]}); choose another output"
            )


def _connect(ray: Any, address: str | None, cpus: int, gpus: float) -> bool:
    """Join the running instance, or `address`, or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address not in (None, "auto", "local"):
        _probe(address)
    if address is None:
        kw |= {"num_cpus": max(cpus, os.cpu_count() or 1), "include_dashboard": False}
        if gpus:
            kw["num_gpus"] = gpus
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ProtegeError(f"cannot reach {where}: {first}") from None
    return True


def _probe(address: str) -> None:
    """Fail in one line, at once, when nothing answers at `address` (Ray itself waits long:
    half a minute for `ray://`, minutes for a head node's HOST:PORT)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ProtegeError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ProtegeError(f"cannot reach the Ray cluster at {address}: {why}") from None


def _run(ray, todo, model_dir, fingerprint, in_fs, out_fs, out_path, opts, workers, threads,
         gpus, progress) -> int:  # fmt: skip
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm import tqdm

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts blocks
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ds = ray.data.from_items([{"block": b.to_json()} for b in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        BlockPredictor,
        fn_constructor_kwargs=dict(
            model_dir=str(model_dir),
            fingerprint=fingerprint,
            in_fs=in_fs,
            out_fs=out_fs,
            out_path=out_path,
            **opts,
        ),  # fmt: skip
        batch_size=1,
        compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=threads,
        num_gpus=gpus or None,
    )  # Ray Data's pool replaces a dead actor and retries its block (max_restarts=-1)
    bar = tqdm(total=len(todo), unit="block", desc="predict", disable=not progress)
    n = 0
    try:
        for row in ds.iter_rows():
            n += int(row["rows"])
            bar.update(1)
        return n
    except Exception as e:  # a task's error arrives wrapped in Ray's exception types
        cause = getattr(e, "cause", None) or e.__cause__
        if isinstance(cause, ProtegeError):
            raise ProtegeError(str(cause)) from None
        raise
    finally:
        bar.close()


def local_model(model_dir: str, fingerprint: str) -> str:
    """The model directory as this worker sees it: the driver's path, which every node must
    see (one machine, or a filesystem all nodes mount), holding the same model."""
    import socket

    from protege.digest import model_fingerprint

    if not Path(model_dir).is_dir() or model_fingerprint(model_dir) != fingerprint:
        raise ProtegeError(
            f"{model_dir}: not on the Ray node {socket.gethostname()} (or another model is "
            "there); put the model directory on a filesystem every node mounts, at this path"
        )
    return model_dir


class BlockPredictor:
    """A Ray Data actor: one model, loaded once; predicts and writes one block per call."""

    def __init__(self, *, model_dir: str, fingerprint: str, in_fs: Any,
                 out_fs: Any, out_path: str, batch_size: int, threads: int, device: str,
                 fmt: str, with_rationale: bool, fast: bool) -> None:  # fmt: skip
        from protege.serve.predictor import Predictor

        local = local_model(model_dir, fingerprint)
        self.predictor = Predictor.load(local, device=device, threads=threads,
                                        batch_size=batch_size)  # fmt: skip
        self.in_fs, self.out_fs, self.out_path = in_fs, out_fs, out_path
        self.fmt, self.with_rationale, self.fast = fmt, with_rationale, fast

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        done = [self.run(Block.from_json(str(b))) for b in batch["block"]]
        return {"rows": np.array(done, dtype=np.int64)}

    def run(self, block: Block) -> int:
        """Predict and write one block; the rows written."""
        import pyarrow.fs as pafs

        shard = f"{self.out_path}/{block.name}.{self.fmt}"
        if self.out_fs.get_file_info(shard).type != pafs.FileType.NotFound:
            return _count(self.out_fs, shard, self.fmt)  # a retry; the first attempt finished
        rows, bad = predict_block(self.predictor, self.in_fs, block, self.with_rationale,
                                  self.fast)  # fmt: skip
        errors = f"{self.out_path}/{ERRORS_DIR}/{block.name}.jsonl"
        if bad:
            self.out_fs.create_dir(f"{self.out_path}/{ERRORS_DIR}", recursive=True)
            text = "".join(json.dumps({"error": b}, ensure_ascii=False) + "\n" for b in bad)
            write_atomic(self.out_fs, errors, text.encode("utf-8"))
        try:
            data = shard_bytes(rows, self.fmt)
        except ProtegeError as e:
            raise ProtegeError(f"{block.path} (block from line {block.first}): {e}") from None
        write_atomic(self.out_fs, shard, data)
        return len(rows)


def predict_block(predictor: Any, fs: Any, block: Block, with_rationale: bool,
                  fast: bool) -> tuple[list[dict], list[str]]:  # fmt: skip
    """(output rows, `file:line: reason` of each bad row) for one block: a row that cannot be
    read or rendered is left out and reported; the others are predicted in the batches that
    single-process predict makes."""
    good, sources, bad = [], [], []
    for record, reason in read_block(fs, block):
        where = f"{block.path}:{record['_line']}"
        if reason is None:
            try:
                sources.append(predictor.source(record, source=block.path))
                good.append(record)
                continue
            except ProtegeError as e:
                reason = str(e).removeprefix(f"{where}: ")
        bad.append(f"{where}: {reason}")
    try:
        preds = predictor.predict(sources, with_rationale=with_rationale, fast=fast)
    except Exception:  # one row breaks the model call: predict the rows one by one
        preds = []
        for record, source in zip(good, sources, strict=True):
            try:
                preds += predictor.predict([source], with_rationale=with_rationale, fast=fast)
            except Exception as e:
                preds.append(None)
                bad.append(f"{block.path}:{record['_line']}: {type(e).__name__}: {e}")
    rows = [{**clean(r), "prediction": p} for r, p in zip(good, preds, strict=True) if p]
    return rows, bad


def _count(fs: Any, path: str, fmt: str) -> int:
    """The rows of a written shard."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    with fs.open_input_stream(path) as f:
        return f.read().count(b"\n")


def _bad_rows(fs: Any, out: str, blocks: list[Block]) -> list[str]:
    """The bad rows reported for the run's blocks (this run's and earlier runs'), in order."""
    listed = {i.base_name for i in _listing(fs, f"{out}/{ERRORS_DIR}")}
    bad = []
    for b in blocks:
        if f"{b.name}.jsonl" in listed:
            with fs.open_input_stream(f"{out}/{ERRORS_DIR}/{b.name}.jsonl") as f:
                bad += [json.loads(line)["error"] for line in f.read().decode().splitlines()]
    return bad
