"""The embedded teacher for real: llama.cpp's server with SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.teacher.config import TeacherConfig

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="install protege[local] (llama.cpp)"
)
def test_local_teacher_generates_and_caches(tmp_path):
    cfg = GenerateConfig(
        recipe="5w",
        input=str(sample_path("nli", "dev")),
        limit=2,
        output=str(tmp_path / "out.jsonl"),
        teacher=TeacherConfig(kind="local", max_tokens=24),
        progress=False,
    )
    result = run_generate(cfg)
    assert result.n_failed == 0 and result.n_written == 2 and result.n_calls >= 1
    rows = [json.loads(line) for line in open(cfg.output)]
    assert all(r["teacher_text"].strip() for r in rows)
    assert rows[0]["provenance"]["model"] == "smollm2-135m-instruct"
    again = run_generate(cfg)  # answered once: the rerun does not even start the server
    assert again.n_calls == 0 and again.n_cached == result.n_requests


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="install protege[local] (llama.cpp)"
)
def test_the_server_loads_models_without_repacking_exactly_on_amx_cpus():
    """llama.cpp's AMX repacking segfaults on the first answer on Sapphire Rapids (the test above
    failed that way on such a machine); elsewhere repacking stays on."""
    code = (
        "import llama_cpp.llama_cpp as lib\n"
        "from protege.teacher.llama_server import amx_cpu, no_repacking_on_amx\n"
        "before = lib.llama_model_default_params().use_extra_bufts\n"
        "changed = no_repacking_on_amx()\n"
        "after = lib.llama_model_default_params().use_extra_bufts\n"
        "print(amx_cpu(), before, changed, after)\n"
    )
    import llama_cpp.llama_cpp as lib

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    amx = b"AMX_INT8 = 1" in lib.llama_print_system_info()
    assert out.stdout.split() == [str(amx), "True", str(amx), str(not amx)]
