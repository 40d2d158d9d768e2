"""Prediction past one process: single-process `protege predict` vs `--ray` with 1 and 2 workers.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/predict_scale.py [--rows 20000]

The classifier student (`protege:minilm-cls`, 22.7M parameters, a fresh 3-label head: the
same computation as a trained one) exported to ONNX int8, over `--rows` sample NLI rows (the
shipped 720 repeated, each with its own uid) in one JSONL file. Every path runs the model
with 1 thread: single-process `predict_file`; `predict_ray` on a local Ray instance (started
once, before the timings) with 1 worker, then 2 workers, 1 CPU each, Parquet shards of
`--block-rows`. Each time is the whole run: model load (actor start-up for Ray), reading,
predicting, writing. The Ray outputs are checked row for row against the single-process one.

Floors: `ray_overhead` (ray1 rows/s / single rows/s) >= 0.85; `scaling_2` (ray2 / ray1)
>= 1.6, which needs two free cores: the load average before and after is printed with the
numbers. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

OVERHEAD_FLOOR, SCALING_FLOOR = 0.85, 1.6


def build_classifier(work: Path) -> Path:
    """The classifier student saved as a model dir, and its ONNX int8 export."""
    from protege.formats import TaskConfig, save_task
    from protege.students import export_student, load_student

    task = TaskConfig(format="label")
    student = load_student("protege:minilm-cls", task)
    student.save(student.model, work / "classifier")
    save_task(task, work / "classifier")
    return export_student(work / "classifier", "onnx", work / "classifier-int8", "int8")


def write_rows(path: Path, n: int) -> Path:
    from protege.data.samples import sample_path

    base = [json.loads(line) for split in ("train", "dev", "test")
            for line in sample_path("nli", split).read_text().splitlines()]  # fmt: skip
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = dict(base[i % len(base)])
            r["uid"] = f"{r['uid']}-{i // len(base)}"
            f.write(json.dumps(r) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--block-rows", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    import pyarrow.dataset as pads
    import ray

    from protege.serve.batch import predict_file
    from protege.serve.distributed import predict_ray
    from protege.serve.predictor import Predictor

    work = Path(tempfile.mkdtemp(prefix="predict_scale-"))
    model = build_classifier(work)
    src = write_rows(work / "nli.jsonl", args.rows)
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    predictor = Predictor.load(model, threads=1, batch_size=args.batch_size)
    predict_file(predictor, src, work / "single.jsonl", progress=False, model_dir=model)
    single_s = time.perf_counter() - t0
    del predictor

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, object_store_memory=200 << 20)  # fmt: skip
    times = {}
    for workers in (1, 2):
        out = work / f"ray{workers}"
        t0 = time.perf_counter()
        r = predict_ray(model, str(src), str(out), workers=workers, threads=1,
                        batch_size=args.batch_size, block_rows=args.block_rows,
                        progress=False)  # fmt: skip
        times[workers] = time.perf_counter() - t0
        assert r.n_rows == args.rows and not r.bad_rows, r
    ray.shutdown()
    load_after = os.getloadavg()

    want = [json.loads(line) for line in (work / "single.jsonl").read_text().splitlines()]
    for workers in (1, 2):
        got = pads.dataset(work / f"ray{workers}", format="parquet").to_table().to_pylist()
        same = sorted(got, key=lambda x: x["uid"]) == sorted(want, key=lambda x: x["uid"])
        assert same, f"ray{workers}: rows differ from single-process predict"

    rate = {"single": args.rows / single_s, "ray1": args.rows / times[1],
            "ray2": args.rows / times[2]}  # fmt: skip
    overhead, scaling = rate["ray1"] / rate["single"], rate["ray2"] / rate["ray1"]
    print(f"{args.rows} NLI rows, classifier MiniLM ONNX int8, 1 thread per worker, "
          f"block {args.block_rows} rows, batch {args.batch_size}; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")  # fmt: skip
    print(f"{'path':<28}{'seconds':>9}{'rows/s':>10}")
    for name, label, s in (("single", "single-process predict", single_s),
                           ("ray1", "--ray, 1 worker", times[1]),
                           ("ray2", "--ray, 2 workers", times[2])):  # fmt: skip
        print(f"{label:<28}{s:>9.1f}{rate[name]:>10.1f}")
    print(f"ray_overhead (ray1/single) {overhead:.3f}  floor {OVERHEAD_FLOOR}  "
          f"{'ok' if overhead >= OVERHEAD_FLOOR else 'BELOW'}")  # fmt: skip
    print(f"scaling_2 (ray2/ray1)      {scaling:.3f}  floor {SCALING_FLOOR}  "
          f"{'ok' if scaling >= SCALING_FLOOR else 'BELOW'}")  # fmt: skip
    print("rows equal single-process predict: yes (both Ray runs)")
    print(json.dumps({
        "rows": args.rows,
        "rows_per_s_single": round(rate["single"], 1),
        "rows_per_s_ray1": round(rate["ray1"], 1),
        "rows_per_s_ray2": round(rate["ray2"], 1),
        "ray_overhead": round(overhead, 3),
        "scaling_2": round(scaling, 3),
        "floors_met": overhead >= OVERHEAD_FLOOR and scaling >= SCALING_FLOOR,
        "load_avg_before": round(load_before[0], 2),
        "load_avg_after": round(load_after[0], 2),
        "cpus": os.cpu_count(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
