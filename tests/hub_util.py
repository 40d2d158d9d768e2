"""Run code against the hub replica the honest way: a fresh interpreter whose HF_ENDPOINT
points at it, with its own HF_HOME (an empty cache) and offline mode off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hub_env(hub, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home / "hf"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def run_py(code: str, env: dict[str, str], timeout: int = 300) -> str:
    """Run `code` in a new interpreter; its stdout, or a failure showing its stderr."""
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


def run_cli(args: list[str], env: dict[str, str], timeout: int = 600, cwd: Path | None = None):
    """`python -m protege ARGS` in a new interpreter (check returncode yourself)."""
    return subprocess.run(
        [sys.executable, "-m", "protege", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
