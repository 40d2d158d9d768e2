"""The parts of `teacher_throughput.py` beyond today's: 1 s latency at concurrency 512, a
rate-limited replica, the Batch API killed and resumed, two processes on one job."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from teacher_jobs import log_times, run_protege, start_server, steady_rate, write_records


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats") as r:
        return json.loads(r.read())


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait()


def run_latency1s(args, tmp: Path) -> dict:
    """The replica answers in 1 s; 512 requests in flight: the ideal is 512 requests/s. The
    first job meets the endpoint for the first time (its probe waits one answer); the second,
    on other records and the same store, starts from the limits the store remembers."""
    concurrency, latency, n = 512, 1.0, args.n1s
    ideal = concurrency / latency
    server, base_url = start_server(latency)
    out = {}
    try:
        for job, name in enumerate(("first contact", "known endpoint")):
            data = tmp / f"records{job}.jsonl"
            write_records(data, n, start=job * n)
            before = len(log_times(base_url))
            result, seconds, _ = run_protege(data, tmp / f"out{job}.jsonl", base_url, concurrency)
            assert result.n_written == n and result.n_failed == 0, result
            times = log_times(base_url)[before:]
            steady = steady_rate(times)
            ratio = n / seconds / ideal
            print(f"{name}: {n} requests, latency 1 s, concurrency {concurrency}: "
                  f"{n / seconds:.1f} req/s, {ratio:.0%} of ideal {ideal:.0f}"
                  + (" (floor >= 90%)" if not job else ""))  # fmt: skip
            print(f"  steady sending rate {steady:.1f} req/s = {steady / ideal:.0%} of ideal; "
                  f"fixed per-job costs (start-up, {'the probe, ' if not job else ''}the last "
                  f"answers, wrap-up) {seconds - n / steady:.2f} s of {seconds:.2f} s; second "
                  f"request {times[1] - times[0]:.2f} s after the first")  # fmt: skip
            out[job] = (ratio, steady / ideal)
    finally:
        stop(server)
    return {"ratio_of_ideal_1s": round(out[0][0], 3), "floors_met": out[0][0] >= 0.9,
            "steady_ratio_of_ideal_1s": round(out[0][1], 3),
            "ratio_of_ideal_1s_known_endpoint": round(out[1][0], 3)}  # fmt: skip


def run_ratelimit(args, tmp: Path) -> dict:
    """The replica enforces 6,000 rpm and 3M tpm and says so in its headers; protege is told
    neither and runs at concurrency 256."""
    rpm, tpm, n = 6000, 3_000_000, 2000
    data = tmp / "records.jsonl"
    write_records(data, n)
    server, base_url = start_server(0.05, "--rpm", str(rpm), "--tpm", str(tpm))
    try:
        result, seconds, _ = run_protege(data, tmp / "out.jsonl", base_url, 256)
        assert result.n_written == n and result.n_failed == 0, result
        stats = server_stats(base_url)
    finally:
        stop(server)
    achieved = n / seconds * 60
    ratio = achieved / rpm
    share = stats["rate_limited"] / stats["requests"]
    print(f"{n} requests against {rpm} rpm / {tpm} tpm: {achieved:.0f} rpm = {ratio:.0%} of the "
          f"limit (floor >= 90%); {stats['rate_limited']} of {stats['requests']} requests "
          f"answered 429 = {share:.2%} (floor <= 1%)")  # fmt: skip
    return {
        "ratelimited_ratio_of_limit": round(ratio, 3),
        "ratelimited_429_share": round(share, 4),
        "floors_met": ratio >= 0.9 and share <= 0.01,
    }


def _generate(base_url: str, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "protege", "generate", "--recipe", "explain", "--input",
           str(data), "--output", str(out), "--teacher", "openai", "--base-url", base_url, *extra]  # fmt: skip
    return subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def run_batch(args, tmp: Path) -> dict:
    """20,000 requests as batches of 5,000 through the replica's Batch API (gpt-4.1-mini at
    genai-prices' batch price); SIGKILL once while polling; rerun."""
    from protege.teacher.config import TeacherConfig
    from protege.teacher.prices import pricing

    n = args.batch_n
    data = tmp / "records.jsonl"
    write_records(data, n)
    db = Path(os.environ["PROTEGE_TEACHER_DB"])
    server, base_url = start_server(0.0, "--batch-delay", "6")
    flags = ("--model", "gpt-4.1-mini", "teacher.mode=batch", "teacher.batch_poll_s=0.5",
             "teacher.batch_max_requests=5000")  # fmt: skip
    out = tmp / "out.jsonl"
    try:
        start = time.perf_counter()
        job = _generate(base_url, data, out, *flags)
        n_batches = -(-n // 5000)
        while time.perf_counter() - start < 300:
            if db.exists():
                con = sqlite3.connect(db, timeout=30)
                try:
                    recorded = con.execute("SELECT COUNT(remote_id) FROM batches").fetchone()[0]
                except sqlite3.OperationalError:
                    recorded = 0
                con.close()
                if recorded >= n_batches:
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # polling now
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        killed_at = time.perf_counter() - start
        rerun = _generate(base_url, data, out, *flags)
        log, _ = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, log
        seconds = time.perf_counter() - start
        stats = server_stats(base_url)
    finally:
        stop(server)
    rows = sum(1 for _ in open(out))
    price = pricing(TeacherConfig(kind="openai", model="gpt-4.1-mini"))
    con = sqlite3.connect(db)
    usage = con.execute("SELECT input_tokens, output_tokens, cached_tokens, cost_usd "
                        "FROM responses WHERE status='ok'").fetchall()  # fmt: skip
    con.close()
    paid = sum(c for *_, c in usage)
    online = sum(price.cost(i, o, c or 0) for i, o, c, _ in usage)
    ratio = paid / online
    twice = stats["batch_ids_submitted_twice"]
    print(f"{n} requests in {stats['batches']} batches; killed after {killed_at:.1f} s while "
          f"polling, rerun: {rows} rows answered in {seconds:.1f} s; {twice} requests submitted "
          f"twice; cost ${paid:.4f} = {ratio:.0%} of online ${online:.4f}")  # fmt: skip
    return {
        "batch_rows_answered": rows,
        "batch_submitted_twice": twice,
        "batch_cost_ratio": round(ratio, 4),
        "floors_met": rows == n and twice == 0 and abs(ratio - 0.5) < 0.005,
    }


def run_twoproc(args, tmp: Path) -> dict:
    """Two `protege generate` processes started together on one 2,000-prompt job."""
    n = 2000
    data = tmp / "records.jsonl"
    write_records(data, n)
    server, base_url = start_server(0.05)
    try:
        jobs = [_generate(base_url, data, tmp / f"out{i}.jsonl", "--model", "fake-model",
                          "--concurrency", "64") for i in range(2)]  # fmt: skip
        for job in jobs:
            log, _ = job.communicate(timeout=600)
            assert job.returncode == 0, log
        stats = server_stats(base_url)
    finally:
        stop(server)
    rows = [sum(1 for _ in open(tmp / f"out{i}.jsonl")) for i in range(2)]
    twice = stats["answered_more_than_once"]
    print(f"two processes, {n} prompts: {stats['answered']} answers paid, {twice} prompts paid "
          f"twice; each wrote {rows} rows")  # fmt: skip
    return {"two_process_paid_twice": twice, "floors_met": twice == 0 and rows == [n, n]}
