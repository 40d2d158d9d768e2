"""Benchmark: the cascade against the teacher alone, on the same requests.

A classifier student (by default `protege:tfidf-logreg`: TF-IDF features and logistic
regression, the label student the demo's report picks; trained on the 480 sample NLI training
rows, served as its kind's export, calibrated on the 120 dev rows for the target agreement) in
front of a teacher replica that answers each request's gold label after 800 ms at
gpt-4.1-mini's prices. 2,000 requests (the `label` recipe's prompt for the 120 test rows, each
asked ~17 times with another `seed`, so every request is distinct and none is answered from the
store) by 32 concurrent `openai` SDK clients: once straight to the teacher (the application
today), once through `protege serve --teacher ... --target-agreement 0.95` (the application
after changing its base_url). The server runs on one core, the clients and the replica on the
other. The prompts are built before the clock starts (an application has its messages in hand
before it calls the API). `--student protege:minilm-cls` puts the MiniLM classifier (ONNX
int8) in its place.

    python benchmarks/cascade.py [--requests 2000] [--clients 32] [--target 0.95]

Prints a table and, last, one JSON line: student_share, agreement (cascade answers vs the
teacher's, every request), target_agreement, p50_ms_cascade, p50_ms_teacher_only, cost_ratio
(cascade spend / teacher-only spend), errors. Floors: agreement >= target - 0.01, cost_ratio
<= 0.25, p50_ms_cascade <= 0.1 x p50_ms_teacher_only, errors 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = "gpt-4.1-mini"


def rows(split: str) -> list[dict]:
    from protege.data.samples import sample_path

    return [json.loads(x) for x in sample_path("nli", split).read_text().splitlines()]


def prompt(row: dict) -> list[dict[str, str]]:
    from protege.formats import TaskConfig
    from protege.generate.recipes import Template, get_recipe

    task = TaskConfig()
    return Template(get_recipe("label").path).messages(
        {
            "input": task.input_template.format(**row),
            "labels": task.labels,
            "with_rationale": False,
        }  # fmt: skip
    )


def train_student(work: Path, epochs: int, name: str = "protege:tfidf-logreg") -> Path:
    """The classifier student on the training rows (gold labels: what this teacher answers),
    in its kind's export (ONNX int8 for the MiniLM classifier: the path that is served)."""
    from protege.config import from_dict
    from protege.students import export_student
    from protege.train import run_train
    from protege.train.config import TrainConfig

    cfg = from_dict(TrainConfig, {
        "model": name, "task": {"format": "label"}, "epochs": epochs,
        "train_data": str(work / "train.jsonl"), "dev_data": str(work / "dev.jsonl"),
        "output_dir": str(work / "student"), "lr": 1e-4, "batch_size": 16, "warmup_steps": 10,
        "evals_per_epoch": 1, "max_source_len": 128,
    })  # fmt: skip
    run_train(cfg)
    best = next((work / "student").glob("*/best-accuracy"))
    return export_student(best, None, work / "student-export", "int8")


async def load(base_url: str, requests: list[tuple[list, int]], clients: int) -> dict:
    """`clients` SDK clients sending `requests` (messages, seed); latencies, answers, routes,
    usage, errors. The messages are built before the clock starts, as an application has its
    prompt in hand before it calls the API."""
    import openai

    queue: asyncio.Queue = asyncio.Queue()
    for i, item in enumerate(requests):
        queue.put_nowait((i, item))
    out = {"latency": [0.0] * len(requests), "content": [None] * len(requests),
           "route": [None] * len(requests), "usage": [None] * len(requests), "errors": []}  # fmt: skip

    async def client() -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-app", max_retries=0,
                                      timeout=60) as c:  # fmt: skip
            while not queue.empty():
                i, (messages, seed) = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    raw = await c.chat.completions.with_raw_response.create(
                        model=MODEL, messages=messages, temperature=0.0, seed=seed,
                        max_completion_tokens=16)  # fmt: skip
                    answer = raw.parse()
                except openai.OpenAIError as e:
                    out["errors"].append(f"{type(e).__name__}: {e}"[:200])
                    continue
                out["latency"][i] = time.perf_counter() - t0
                out["content"][i] = answer.choices[0].message.content
                out["route"][i] = raw.headers.get("x-protege-route", "teacher")
                out["usage"][i] = answer.usage

    await asyncio.gather(*(client() for _ in range(clients)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, teacher_url: str, target: float, log: Path) -> tuple:
    """`protege serve` with the cascade, pinned to the first core; the caller gets the rest."""
    port = free_port()
    cmd = [sys.executable, "-m", "protege", "serve", str(model), "--port", str(port),
           "--threads", "1", "--teacher", "openai", "--model", MODEL, "--base-url", teacher_url,
           "--target-agreement", str(target), "--teacher-option", "concurrency=64"]  # fmt: skip
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = set(cpus[: max(1, len(cpus) // 2)])
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=f,
            preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if len(cpus) > 1 else None,
        )  # fmt: skip
    if len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus) - server_cpus)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--latency", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--student", default="protege:tfidf-logreg",
                        help="the classifier student: a classical one (protege:tfidf-logreg, "
                             "protege:tfidf-lgbm, protege:static-logreg) or "
                             "protege:minilm-cls")  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["PROTEGE_HOME"] = str(work / "home")  # a fresh store: nothing is cached
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for split in ("train", "dev"):
            (work / f"{split}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows(split)))  # fmt: skip
        t0 = time.perf_counter()
        student = train_student(work, args.epochs, args.student)
        train_s = time.perf_counter() - t0
        from protege.serve.calibrate import calibrate

        cal = calibrate(student, rows("dev"), args.target, data="dev")
        from protege.teacher.config import TeacherConfig
        from protege.teacher.prices import pricing
        from protege.testing.fake_openai import FakeOpenAI

        test = rows("test")
        gold = {prompt(r)[-1]["content"]: r["label"] for r in test}
        teacher = FakeOpenAI(latency=args.latency,
                             reply=lambda m: gold[m[-1]["content"]]).start()  # fmt: skip
        messages = [prompt(r) for r in test]
        requests = [(messages[i % len(test)], 1000 + i) for i in range(args.requests)]
        truth = [test[i % len(test)]["label"] for i in range(args.requests)]
        price = pricing(TeacherConfig(kind="openai", model=MODEL, base_url=teacher.base_url))
        try:
            direct = asyncio.run(load(teacher.base_url, requests, args.clients))
            direct_cost = sum(price.cost(u.prompt_tokens, u.completion_tokens)
                              for u in direct["usage"] if u is not None)  # fmt: skip
            proc, url = start_server(student, teacher.base_url, args.target, work / "serve.log")
            try:
                asyncio.run(load(url + "/v1", requests[:64], args.clients))  # warm up
                warm_spend = scrape(url, "protege_teacher_spend_usd_total")
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                cascade = asyncio.run(load(url + "/v1", requests, args.clients))
                wall, cpu1 = time.perf_counter() - t0, cpu_seconds(proc.pid)
                spend = scrape(url, "protege_teacher_spend_usd_total") - warm_spend
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            teacher.stop()

    answered = [i for i, c in enumerate(cascade["content"]) if c is not None]
    student_n = sum(cascade["route"][i] == "student" for i in answered)
    agree = sum(cascade["content"][i] == truth[i] for i in answered) / max(len(answered), 1)
    student_agree = [cascade["content"][i] == truth[i] for i in answered
                     if cascade["route"][i] == "student"]  # fmt: skip
    errors = len(cascade["errors"]) + len(direct["errors"])
    lat_c = [cascade["latency"][i] for i in answered]
    lat_t = [x for x, c in zip(direct["latency"], direct["content"], strict=True) if c is not None]
    result = {
        "student_share": round(student_n / max(len(answered), 1), 4),
        "agreement": round(agree, 4),
        "target_agreement": args.target,
        "p50_ms_cascade": round(pct(lat_c, 0.5), 2),
        "p50_ms_teacher_only": round(pct(lat_t, 0.5), 2),
        "cost_ratio": round(spend / direct_cost, 4) if direct_cost else None,
        "errors": errors,
        "p99_ms_cascade": round(pct(lat_c, 0.99), 2),
        "requests_per_s_cascade": round(args.requests / wall, 1),
        "server_cpu_ms_per_request": None
        if cpu0 is None or cpu1 is None
        else round((cpu1 - cpu0) / args.requests * 1000, 2),
        "server_core_busy": None
        if cpu0 is None or cpu1 is None
        else round((cpu1 - cpu0) / wall, 2),
        "student_agreement": round(statistics.fmean(student_agree), 4) if student_agree else None,
        "threshold": round(cal.threshold, 4),
        "calibration_coverage": round(cal.coverage, 4),
        "calibration_agreement": cal.agreement,
        "spend_cascade_usd": round(spend, 6),
        "spend_teacher_only_usd": round(direct_cost, 6),
        "requests": args.requests,
        "clients": args.clients,
        "train_s": round(train_s, 1),
        "student": args.student,
    }
    result["floors_met"] = bool(
        errors == 0 and result["agreement"] >= args.target - 0.01
        and result["cost_ratio"] is not None and result["cost_ratio"] <= 0.25
        and result["p50_ms_cascade"] <= 0.1 * result["p50_ms_teacher_only"]
    )  # fmt: skip
    print(
        f"student: {args.student}, in its export; trained in {train_s:.0f} s; calibrated on "
        f"120 dev rows: threshold {cal.threshold:.4f} keeps {cal.coverage:.1%} at "
        f"{cal.agreement if cal.agreement is None else round(cal.agreement, 4)} agreement"
    )
    print(
        f"{args.requests} requests, {args.clients} concurrent SDK clients, teacher replica "
        f"{args.latency * 1000:.0f} ms at {MODEL} prices"
    )
    print(f"{'':<22}{'p50 ms':>9}{'p99 ms':>9}{'spend $':>11}{'agreement':>11}{'student':>9}")
    print(f"{'teacher only':<22}{pct(lat_t, 0.5):>9.1f}{pct(lat_t, 0.99):>9.1f}"
          f"{direct_cost:>11.5f}{1.0:>11.3f}{0.0:>9.1%}")  # fmt: skip
    print(f"{'cascade':<22}{pct(lat_c, 0.5):>9.1f}{pct(lat_c, 0.99):>9.1f}{spend:>11.5f}"
          f"{agree:>11.3f}{result['student_share']:>9.1%}")  # fmt: skip
    print(
        f"floors: agreement >= {args.target - 0.01:.2f}, cost_ratio <= 0.25, p50 cascade <= "
        f"0.1 x teacher only, errors 0: {'met' if result['floors_met'] else 'NOT met'}"
    )
    if result["server_cpu_ms_per_request"] is not None:
        print(
            f"server: {result['server_cpu_ms_per_request']} ms of CPU a request, its core "
            f"{result['server_core_busy']:.0%} busy at {result['requests_per_s_cascade']} "
            "requests/s"
        )
    for e in (cascade["errors"] + direct["errors"])[:3]:
        print(f"  error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
