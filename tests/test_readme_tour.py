"""Every command of the README's tour, as written, in order, in a fresh directory laid out like
a checkout (issue 19, item 5): against the hub replica (HF_ENDPOINT) and the OpenAI replica
(`python -m protege.testing.fake_openai` on the port the tour names). `protege serve` runs in
the background until it has answered a prediction."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hub_util import ROOT, hub_env

README = ROOT / "README.md"


def tour_commands(text: str) -> list[str]:
    """The shell commands of the tour's code block: continuation lines joined, comments and
    blank lines left out."""
    section = text[text.index("## A tour of the CLI") :]
    block = section[section.index("```bash\n") + 8 :]
    block = block[: block.index("\n```")]
    commands, current = [], ""
    for line in block.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        commands.append(re.sub(r"\s+", " ", current).strip())
        current = ""
    return commands


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _workspace(tmp_path: Path) -> Path:
    """A directory laid out like a checkout (configs, recipes, the package's samples) with the
    project's shared folder beside it, as the tour's paths expect."""
    work = tmp_path / "protege"
    work.mkdir()
    for name in ("configs", "recipes", "protege"):
        (work / name).symlink_to(ROOT / name)
    shared = tmp_path / "shared" / "data" / "anli-r1-emanli"
    shared.mkdir(parents=True)
    rows = [{"uid": f"r{i}", "teacher_prompt": f"Explain why premise {i} entails hypothesis {i}.",
             "rationale": f"Because of reason {i}."} for i in range(12)]  # fmt: skip
    (shared / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_command_of_the_readme_tour_runs_as_written(tmp_path, hub):
    commands = tour_commands(README.read_text())
    assert len(commands) >= 15 and commands[0].startswith("protege samples data/")
    work = _workspace(tmp_path)
    env = hub_env(
        hub, tmp_path, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    env.pop("OPENAI_API_KEY", None)
    openai_port = re.search(r"--base-url http://localhost:(\d+)/v1", README.read_text()).group(1)
    fake = subprocess.Popen(
        [sys.executable, "-m", "protege.testing.fake_openai", "--port", openai_port],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert fake.stdout.readline().startswith("PORT"), "the OpenAI replica did not start"
        for command in commands:
            if command.startswith(("protege serve", "protege proxy")):
                _serve(command, work, env)
                continue
            start = time.monotonic()
            res = subprocess.run(["bash", "-c", command], cwd=work, env=env, text=True,
                                 capture_output=True, timeout=1200)  # fmt: skip
            took = time.monotonic() - start
            print(f"{took:7.1f} s  {command[:100]}")
            assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    finally:
        fake.terminate()
        fake.wait(10)
    # what the tour says it made; the variants report's links reach each variant's report
    report = work / "runs/quick/report/report.html"
    links = re.findall(r"href='([^']+)'", report.read_text())
    assert len(links) == 4 and all((report.parent / link).resolve().is_file() for link in links)
    assert (
        "| classical | protege:tfidf-logreg | classical |" in report.with_suffix(".md").read_text()
    )
    best = json.loads((work / "runs/quick/classifier/best.json").read_text())
    assert Path(work / best["model_dir"]).is_dir()
    labels = [json.loads(x) for x in (work / "test.labels.jsonl").read_text().splitlines()]
    assert len(labels) == 20
    assert all(r["provenance"]["endpoint"] == f"http://localhost:{openai_port}/v1" for r in labels)


def _serve(command: str, work: Path, env: dict[str, str]) -> None:
    """Run `protege serve ...` (or `protege proxy ...`) until it answers one prediction (and,
    through OpenAI's API, the `label` recipe's requests), then stop it (SIGINT)."""
    port = re.search(r"--port (\d+)", command).group(1)
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", 120)
        rows = [json.loads(x) for x in (work / "data/nli/test.jsonl").read_text().splitlines()[:2]]
        if "--teacher" in command:  # the proxy, or the student with the teacher behind it
            _chat(port, rows)
            if command.startswith("protege proxy"):
                return
        body = {"inputs": [{k: r[k] for k in ("premise", "hypothesis")} for r in rows]}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/predict", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            preds = json.loads(r.read())["predictions"]
        assert len(preds) == 2
        assert all(p["label"] in ("entailment", "neutral", "contradiction") for p in preds)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)


def _chat(port: str, rows: list[dict]) -> None:
    """The application's side of the switch: the `label` recipe's requests through the SDK."""
    import openai

    from protege.generate.recipes import Template, get_recipe
    from protege.generate.schema import label_schema, response_format

    labels = ["entailment", "neutral", "contradiction"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-app")
    for r in rows:
        messages = Template(get_recipe("label").path).messages({
            "input": f"Premise: {r['premise']} Hypothesis: {r['hypothesis']}",
            "labels": labels, "with_rationale": False})  # fmt: skip
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1-mini", messages=messages, max_completion_tokens=32,
            response_format=response_format(label_schema(labels, False), "label"))  # fmt: skip
        assert json.loads(raw.parse().choices[0].message.content)["label"] in labels
        assert raw.headers["x-protege-route"] in ("student", "teacher", "cache")
