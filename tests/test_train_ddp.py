"""The same `protege train` command runs unchanged under `accelerate launch` (DDP, gloo on
CPU) and writes the same outputs as a single-process run.

Note: `accelerate launch --cpu` starts ONE process whatever --num_processes says; two CPU
processes need `--multi_gpu` (torchrun underneath), and protege then selects CPU DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import tiny_config

from protege.config import save_config

BIN = Path(sys.executable).parent


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_run_writes_the_same_outputs(tmp_path, tmp_path_factory):
    # Single process, 2 micro-batches per step == 2 processes, 1 micro-batch each per step.
    cfg = tiny_config(tmp_path, epochs=2, evals_per_epoch=1, grad_accum=2)
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    env = {
        **os.environ,
        "PROTEGE_HOME": str(tmp_path_factory.getbasetemp() / "protege_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    cmd = [str(BIN / "protege"), "train", str(path), f"output_dir={single}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    launch = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",  # with no GPU, protege asks accelerate for CPU DDP (gloo)
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "protege",
        "train",
        str(path),
        f"output_dir={ddp}",
        "grad_accum=1",
    ]
    res = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert files(single) - {"train_config.yaml"} == files(ddp) - {"train_config.yaml"}
    (a,), (b,) = (json.loads((d / "results.json").read_text()) for d in (single, ddp))
    assert (a["id"], a["steps"], a["data"]) == (b["id"], b["steps"], b["data"])
    ha, hb = ((d / a["history"]).read_text().splitlines() for d in (single, ddp))
    assert [json.loads(x)["step"] for x in ha] == [json.loads(x)["step"] for x in hb] == [1, 2]


@pytest.mark.slow
def test_default_minilm_student_trains_under_ddp(tmp_path, tmp_path_factory):
    """The default student (EncoderDecoderModel from MiniLM) under 2-process DDP: an unused
    encoder pooler made DDP fail ("Expected to have finished reduction in the prior
    iteration")."""
    cfg = tiny_config(
        tmp_path, model="protege:minilm-encdec", max_steps=2, evals_per_epoch=1, max_dev_rows=2
    )
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    env = {
        **os.environ,
        "PROTEGE_HOME": str(tmp_path_factory.getbasetemp() / "protege_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    launch = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "protege",
        "train",
        str(path),
        f"output_dir={tmp_path / 'ddp'}",
    ]
    res = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (result,) = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert result["steps"] == 2


def test_a_finished_run_closes_its_process_group(tmp_path):
    """Left to the interpreter's exit, gloo's threads sometimes abort a process after all its
    work is done (SIGABRT, "terminate called without an active exception"): CI saw it once in
    the two-process pipeline run. A finished run meets at a barrier and destroys the group."""
    import torch.distributed as dist

    from protege.train.trainer import end_processes

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert dist.is_initialized()
        end_processes()
        assert not dist.is_initialized()
        end_processes()  # nothing to close: a single-process run calls it too
    finally:
        if dist.is_initialized():  # a failure here must not leave a group to later tests
            dist.destroy_process_group()
