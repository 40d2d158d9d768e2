"""Serving latency: HF generate vs closed-label scoring vs CTranslate2 int8, vs the teacher.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_latency.py [--n 100] [--seconds 20]

One prediction at a time on ANLI R1 dev inputs (../shared/data/anli-r1-emanli/dev.jsonl),
with `protege:t5-small-random` (T5-small shape, 60M) as a `label` format student, first
trained briefly (`--train-steps`, default 16, on other dev rows) so that its free greedy
generation writes labels. "Same predictions" is checked two ways: (a) against free
`generate` wherever that output parses (the number compared must be > 0, and is printed),
and (b) against HF `generate` constrained to the label set (`prefix_allowed_tokens_fn`),
which always yields a label; a fast path has "the same predictions" only if it agrees with
that on every input. The teacher row is the local llama.cpp server answering the `label` recipe's
prompt through the openai SDK with the pipeline's own sampling parameters. Then
`protege serve` (a subprocess, fastest path) is loaded by 32 concurrent clients for
`--seconds`. The other kinds on their fastest paths (`kinds.py`), among them a classical
student (TF-IDF + logistic regression, fitted through the trainer on the dev rows after the
timed ones, its fit time reported) served from its model dir, and from its ONNX export.
Floors: the fastest path with the same predictions >= 3x faster than generate at p50; the
fastest path >= 50x faster than the local teacher's p50; zero serve errors; the classical
student's p50 <= 1 ms. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "anli-r1-emanli" / "dev.jsonl"
RATIONALE_GEN = "HF generate, label+rationale student"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def timed(paths: dict, items: list, warmup: int = 3) -> tuple[dict, dict]:
    """Latency (ms) and output of each path on each item, the paths interleaved per item so
    that every path sees the same machine load (this machine is shared)."""
    for fn in paths.values():
        for item in items[:warmup]:
            fn(item)
    lat: dict = {name: [] for name in paths}
    out: dict = {name: [] for name in paths}
    for item in items:
        for name, fn in paths.items():
            t0 = time.perf_counter()
            out[name].append(fn(item))
            lat[name].append((time.perf_counter() - t0) * 1000)
    return lat, out


def teacher_latencies(
    records: list[dict], n: int, threads: int
) -> tuple[list[float], int, float, dict]:
    """Local llama.cpp teacher answering the `label` recipe's prompt with the pipeline's own
    sampling parameters (`TeacherConfig().params()`), one call at a time, with the same CPU
    threads as each student runtime."""
    from openai import OpenAI

    from protege.formats import TaskConfig, inference_input
    from protege.generate.recipes import Template, get_recipe, parse_label
    from protege.teacher.config import LOCAL_MODEL, TeacherConfig
    from protege.teacher.local import local_server

    task = TaskConfig()
    params = TeacherConfig().params()
    template = Template(get_recipe("label").path)
    lat, valid, tokens = [], 0, []
    with local_server(n_threads=threads) as base_url:
        client = OpenAI(base_url=base_url, api_key="local", timeout=300)
        for i, r in enumerate(records[: n + 1]):
            msgs = template.messages(
                {"input": inference_input(task, r), "labels": task.labels, "with_rationale": False}
            )
            t0 = time.perf_counter()
            resp = client.chat.completions.create(model=LOCAL_MODEL, messages=msgs, **params)
            if i == 0:
                continue  # warm-up (model load, prompt cache)
            lat.append((time.perf_counter() - t0) * 1000)
            text = resp.choices[0].message.content or ""
            valid += parse_label(text, "label", task.labels).flagged is None
            tokens.append(resp.usage.completion_tokens if resp.usage else 0)
    return lat, valid, statistics.mean(tokens), params


def api_latencies() -> list[float]:
    """Latencies of real (non-local) API calls already in the teacher store, if any."""
    from protege.paths import teacher_db_path
    from protege.teacher.config import LOCAL_MODEL

    if not teacher_db_path().exists():
        return []
    from protege.teacher.store import TeacherStore

    with TeacherStore() as store:
        rows = store.db.execute(
            "SELECT latency_s FROM responses WHERE status='ok' AND source='live' "
            "AND latency_s IS NOT NULL AND model != ?",
            (LOCAL_MODEL,),
        ).fetchall()
    return [r[0] * 1000 for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, records: list[dict], clients: int, seconds: float) -> tuple[int, int]:
    import httpx

    ok = errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal ok, errors
        async with httpx.AsyncClient(timeout=30) as c:
            j = i
            while time.perf_counter() < stop:
                try:
                    r = await c.post(url, json={"inputs": [records[j % len(records)]]})
                    ok += r.status_code == 200
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                j += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return ok, errors


def serve_throughput(model_dir: Path, records, clients: int, seconds: float) -> dict:
    port = free_port()
    cmd = [
        sys.executable, "-m", "protege", "serve", str(model_dir), "--port", str(port),
        "--max-batch-size", "32", "--max-wait-ms", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"protege serve did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/predict"
        t0 = time.perf_counter()
        ok, errors = asyncio.run(load(url, records, clients, seconds))
        elapsed = time.perf_counter() - t0
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        count = next(x for x in metrics.splitlines() if x.startswith("protege_batch_size_count"))
        total = next(x for x in metrics.splitlines() if x.startswith("protege_batch_size_sum"))
        mean_batch = float(total.split()[-1]) / max(1.0, float(count.split()[-1]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return {"ok": ok, "errors": errors, "rps": ok / elapsed, "mean_batch": mean_batch}


FAST = {
    "scoring": "label scoring (PyTorch)",
    "ct2_f32_scoring": "CTranslate2 float32 scoring",
    "ct2_scoring": "CTranslate2 int8 scoring",
}


def brief_training(data: Path, skip: int, steps: int, work: Path) -> tuple[Path, float]:
    """`protege:t5-small-random` trained `steps` steps as a `label` student on dev rows after
    the first `skip` (the timed inputs), so its generation yields labels. (model dir, seconds)"""
    from protege.formats import TaskConfig
    from protege.train.config import GenerationConfig, TrainConfig
    from protege.train.trainer import train_one

    n_train = 8 * steps
    cfg = TrainConfig(
        model="protege:t5-small-random",
        task=TaskConfig(format="label"),
        train_data=f"{data}[{skip}:{skip + n_train}]",
        dev_data=f"{data}[{skip + n_train}:{skip + n_train + 16}]",
        output_dir=str(work / "train"),
        lr=1e-3,
        max_steps=steps,
        batch_size=8,
        warmup_steps=max(1, steps // 8),
        evals_per_epoch=1,
        max_source_len=64,  # training only: a few seconds a step on a 2-core CPU
        mixed_precision="no",
        generation=GenerationConfig(max_new_tokens=8),
    )
    t0 = time.perf_counter()
    train_one(cfg, work / "train", "brief")
    return work / "train" / "best-loss", time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="inputs timed one at a time")
    ap.add_argument("--teacher-n", type=int, default=10, help="local teacher calls timed")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each model runtime")
    ap.add_argument("--train-steps", type=int, default=16, help="brief training of the student")
    ap.add_argument("--data", type=Path, default=DATA, help="ANLI R1 dev rows (JSONL)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from protege.data.io import read_records
    from protege.serve.predictor import Predictor
    from protege.students.seq2seq.ct2 import export_ct2

    records = read_records(args.data)[: args.n]
    work = Path(tempfile.mkdtemp(prefix="protege-serve-bench-"))
    try:
        model_dir, train_s = brief_training(args.data, args.n, args.train_steps, work)
        ct2_dir = export_ct2(model_dir, work / "student-ct2-int8", quantization="int8")
        f32_dir = export_ct2(model_dir, work / "student-ct2-f32", quantization="float32")
        from gen_paths import constrained_generate, rationale_generate, target_lengths
        from kinds import CAUSAL, CLASSICAL, CLASSIFIER, classical_dirs, kind_dirs, kind_paths

        classical, classical_fit_s = classical_dirs(args.data, args.n, work)
        other_kinds, kind_params = kind_paths({**kind_dirs(work), **classical}, args.threads)
        torch_p = Predictor.load(model_dir, threads=args.threads)
        ct2_p = Predictor.load(ct2_dir, threads=args.threads)
        f32_p = Predictor.load(f32_dir, threads=args.threads)
        budget = torch_p.label_budget()
        lengths = target_lengths(records, torch_p.backend.tok)

        paths = {
            RATIONALE_GEN: lambda r: rationale_generate(
                torch_p, torch_p.source(r), lengths[r["uid"]]
            ),
            "HF generate (PyTorch)": lambda r: torch_p.predict([r], fast=False)[0]["label"],
            "HF generate, label-constrained": lambda r: constrained_generate(
                torch_p, [torch_p.source(r)]
            )[0],
            FAST["scoring"]: lambda r: torch_p.predict([r], fast=True)[0]["label"],
            FAST["ct2_f32_scoring"]: lambda r: f32_p.predict([r], fast=True)[0]["label"],
            "CTranslate2 int8 generate": lambda r: ct2_p.predict([r], fast=False)[0]["label"],
            FAST["ct2_scoring"]: lambda r: ct2_p.predict([r], fast=True)[0]["label"],
            **other_kinds,  # the classifier's, causal's and classical students' fastest paths
        }
        rows, out = timed(paths, records)
        preds = {
            "generate": out["HF generate (PyTorch)"],
            "constrained": out["HF generate, label-constrained"],
            **{k: out[v] for k, v in FAST.items()},
        }

        teacher, teacher_valid, teacher_tokens, teacher_params = teacher_latencies(
            records, args.teacher_n, args.threads
        )
        api = api_latencies()
        # "Same predictions": a fast path counts only if it agrees with label-constrained
        # generate on every input (PyTorch scoring is the same model; CT2 int8 is quantized).
        same = {
            k: all(x == y for x, y in zip(preds["constrained"], preds[k], strict=True))
            for k in FAST
        }
        exact = [k for k in FAST if same[k]] or list(FAST)
        fast_key = min(exact, key=lambda k: statistics.median(rows[FAST[k]]))
        fastest_key = min(FAST, key=lambda k: statistics.median(rows[FAST[k]]))
        serve_dir = {"scoring": model_dir, "ct2_f32_scoring": f32_dir, "ct2_scoring": ct2_dir}[
            fastest_key
        ]
        served = serve_throughput(serve_dir, records, args.clients, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def agree(a: str, b: str) -> tuple[int, int]:
        pairs = [(x, y) for x, y in zip(preds[a], preds[b], strict=True) if x is not None]
        return sum(x == y for x, y in pairs), len(pairs)

    fast_name = FAST[fast_key]
    # The reference: HF generate of a Paper A student (label, then its rationale). The
    # label-only student's generate is shown beside it and in the JSON line.
    gen_p50 = statistics.median(rows[RATIONALE_GEN])
    label_gen_p50 = statistics.median(rows["HF generate (PyTorch)"])
    mean_len = statistics.mean(lengths[r["uid"]] for r in records)
    fast_p50 = statistics.median(rows[fast_name])
    best_p50 = statistics.median(rows[FAST[fastest_key]])
    teacher_p50 = statistics.median(teacher)
    agree_free = {k: agree("generate", k) for k in FAST}
    agree_constrained = {k: agree("constrained", k) for k in FAST}
    agree_ct2 = agree("scoring", "ct2_scoring")

    print(f"model protege:t5-small-random (label format) trained {args.train_steps} steps "
          f"({train_s:.0f} s), {len(records)} ANLI R1 dev inputs,")  # fmt: skip
    print(f"one at a time, paths interleaved per input, {args.threads} CPU thread(s) per runtime;")
    print(f"generate, label student: max_new_tokens={budget} (label + eos), greedy;")
    print(f"generate, label+rationale student: each row's real target length "
          f"({mean_len:.1f} tokens on average), greedy")  # fmt: skip
    print(
        f"{'path':36} {'p50 ms':>9} {'p99 ms':>9} {'vs generate':>12}  same labels as constrained"
    )
    for name, lat in rows.items():
        p50 = statistics.median(lat)
        key = next((k for k, v in FAST.items() if v == name), None)
        a = f"  {agree_constrained[key][0]}/{agree_constrained[key][1]}" if key else ""
        print(f"{name:36} {p50:9.2f} {pct(lat, 0.99):9.2f} {gen_p50 / p50:11.1f}x{a}")
    print(f"{'local teacher (llama.cpp SmolLM2)':36} {teacher_p50:9.1f} {pct(teacher, 0.99):9.1f} "
          f"{gen_p50 / teacher_p50:11.3f}x  ({len(teacher)} calls, {teacher_params}, "
          f"{teacher_tokens:.0f} output tokens on average, {teacher_valid} valid labels)")  # fmt: skip
    if api:
        print(f"{'teacher API calls in the store':36} {statistics.median(api):9.1f} "
              f"{pct(api, 0.99):9.1f}   ({len(api)} calls)")  # fmt: skip
    else:
        print("teacher API calls in the store: none recorded")
    print(f"fastest path with the same predictions: {fast_name}; {fast_p50:.2f} ms p50 = "
          f"{gen_p50 / fast_p50:.1f}x faster than a label+rationale student's generate, "
          f"{label_gen_p50 / fast_p50:.1f}x faster than a label-only student's, "
          f"{teacher_p50 / fast_p50:.0f}x faster than the local teacher")  # fmt: skip
    print(f"fastest path overall: {FAST[fastest_key]}; {best_p50:.2f} ms p50 = "
          f"{gen_p50 / best_p50:.1f}x faster than generate, {teacher_p50 / best_p50:.0f}x faster "
          f"than the local teacher")  # fmt: skip
    print("same label as free generate where it parses: "
          + ", ".join(f"{FAST[k]} {v[0]}/{v[1]}" for k, v in agree_free.items())
          + f"; CT2 int8 vs PyTorch scoring: {agree_ct2[0]}/{agree_ct2[1]}")  # fmt: skip
    print(f"protege serve ({FAST[fastest_key]}), "
          f"{args.clients} clients x {args.seconds:g}s: {served['rps']:.1f} req/s, "
          f"{served['errors']} errors, mean micro-batch {served['mean_batch']:.1f}")  # fmt: skip
    kind_p50 = {
        "seq2seq": statistics.median(rows[FAST["ct2_scoring"]]),
        "classifier": statistics.median(rows[CLASSIFIER]),
        "causal": statistics.median(rows[CAUSAL]),
        "classical": statistics.median(rows[CLASSICAL]),
    }
    kind_params["seq2seq"] = torch_p.backend.model.num_parameters()
    print("per kind, fastest path (p50 ms, parameters): " + ", ".join(
        f"{k} {v:.2f} ms, {kind_params[k] / 1e6:.1f}M" for k, v in kind_p50.items()
    ) + f"; classifier vs seq2seq CT2 int8 scoring: "
        f"{kind_p50['seq2seq'] / kind_p50['classifier']:.1f}x")  # fmt: skip
    floors = {
        "free_generate_compared": all(v[1] > 0 for v in agree_free.values()),
        "classifier_4x_seq2seq_ct2_scoring": kind_p50["seq2seq"] / kind_p50["classifier"] >= 4,
        "fast_3x_generate_same_predictions": gen_p50 / fast_p50 >= 3 and same[fast_key],
        "fast_50x_local_teacher": teacher_p50 / best_p50 >= 50,
        "serve_zero_errors": served["errors"] == 0,
        "classical_p50_under_1ms": kind_p50["classical"] <= 1.0,
    }
    print(f"classical (TF-IDF + logistic regression, served from its model dir): fitted in "
          f"{classical_fit_s:.1f} s (its grid of C, each scored on dev), p50 "
          f"{kind_p50['classical']:.3f} ms")  # fmt: skip
    print(f"floors: {floors}")
    result = {
        "generate_p50_ms": round(gen_p50, 3),
        "generate_p99_ms": round(pct(rows[RATIONALE_GEN], 0.99), 3),
        "generate_label_only_p50_ms": round(label_gen_p50, 3),
        "speedup_vs_label_only_generate": round(label_gen_p50 / fast_p50, 2),
        "fast_path": fast_name,
        "fast_p50_ms": round(fast_p50, 3),
        "fast_p99_ms": round(pct(rows[fast_name], 0.99), 3),
        "scoring_p50_ms": round(statistics.median(rows[FAST["scoring"]]), 3),
        "ct2_scoring_p50_ms": round(statistics.median(rows[FAST["ct2_scoring"]]), 3),
        "ct2_f32_scoring_p50_ms": round(statistics.median(rows[FAST["ct2_f32_scoring"]]), 3),
        "ct2_generate_p50_ms": round(statistics.median(rows["CTranslate2 int8 generate"]), 3),
        "teacher_p50_ms": round(teacher_p50, 1),
        "teacher_mean_output_tokens": round(teacher_tokens, 1),
        "api_p50_ms": round(statistics.median(api), 1) if api else None,
        "speedup_vs_generate": round(gen_p50 / fast_p50, 2),
        "best_speedup_vs_teacher": round(teacher_p50 / best_p50, 1),
        "agree_constrained_generate": {k: list(v) for k, v in agree_constrained.items()},
        "agree_free_generate": {k: list(v) for k, v in agree_free.items()},
        "agree_ct2_vs_torch": list(agree_ct2),
        "serve_rps": round(served["rps"], 2),
        "serve_errors": served["errors"],
        "serve_mean_batch": round(served["mean_batch"], 2),
        "classifier_p50_ms": round(kind_p50["classifier"], 3),
        "classifier_p99_ms": round(pct(rows[CLASSIFIER], 0.99), 3),
        "causal_p50_ms": round(kind_p50["causal"], 3),
        "causal_p99_ms": round(pct(rows[CAUSAL], 0.99), 3),
        "seq2seq_ct2_scoring_p50_ms": round(kind_p50["seq2seq"], 3),
        "classical_p50_ms": round(kind_p50["classical"], 3),
        "classical_p99_ms": round(pct(rows[CLASSICAL], 0.99), 3),
        "classical_onnx_p50_ms": round(statistics.median(rows[CLASSICAL + ", ONNX"]), 3),
        "classical_fit_s": round(classical_fit_s, 2),
        "params": kind_params,
        "floors": floors,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
