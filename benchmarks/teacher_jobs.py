"""What both teacher benchmarks run (`teacher_throughput.py`, `teacher_parts.py`): the fake
OpenAI-compatible server in its own process, the input records, the `explain` job through
protege, and what the server's log says of the client's sending rate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

CONCURRENCY = 64
LABELS = ["entailment", "neutral", "contradiction"]


def start_server(latency: float, *flags: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "protege.testing.fake_openai", "--latency", str(latency), *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def write_records(path: Path, n: int, start: int = 0) -> None:
    with open(path, "w") as f:
        for i in range(start, start + n):
            premise = f"Record {i}: the committee met in city {i % 97} and approved plan {i}."
            hypothesis = f"Plan {i} was approved in city {i % 97}."
            row = {"uid": f"r{i}", "premise": premise, "hypothesis": hypothesis,
                   "label": LABELS[i % 3]}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def run_protege(data: Path, out: Path, base_url: str, concurrency: int = CONCURRENCY, **teacher):
    import openai  # noqa: F401  (about 1 s of imports, paid once per process, not per request)
    import rich.progress  # noqa: F401  (the progress bar and aiohttp: the same)

    import protege.teacher.client  # noqa: F401
    from protege.generate import GenerateConfig, run_generate
    from protege.teacher.config import TeacherConfig
    from protege.teacher.prices import pricing

    # The price table loads once per process too; load it before the clock starts.
    pricing(TeacherConfig(kind="openai", model="fake-model", base_url=base_url))

    cfg = GenerateConfig(
        recipe="explain",
        input=str(data),
        output=str(out),
        progress=False,
        teacher=TeacherConfig(
            kind="openai",
            model="fake-model",
            base_url=base_url,
            concurrency=concurrency,
            **teacher,
        ),
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = run_generate(cfg)
    return result, time.perf_counter() - start, time.process_time() - cpu


def log_times(base_url: str) -> list[float]:
    """When the replica received each chat request so far (its log), in order."""
    import urllib.request

    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/_log") as r:
        return sorted(e["time"] for e in json.load(r) if "time" in e)


def steady_rate(times: list[float]) -> float | None:
    """Requests/s the replica received from the probe's answer to the last request: the
    client's sending rate once a job is under way, without its fixed per-job costs (reading
    and rendering the input, the one probe request whose answer states the server's limits,
    writing the output)."""
    if len(times) < 3 or times[-1] <= times[1]:
        return None
    return (len(times) - 2) / (times[-1] - times[1])
