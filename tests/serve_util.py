"""Shared helpers for the serving tests: a tiny T5 student briefly trained on NLI labels.

Random weights generate mostly malformed text, which would make "scoring agrees with greedy
generation wherever generation is valid" vacuous; a few dozen teacher-forced steps on the
shipped NLI sample make greedy generation emit real labels (varied across inputs), so the
property is checked on real outputs and can fail.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from protege.data.samples import sample_path
from protege.formats import TaskConfig, make_examples, save_task


def nli_rows(split: str = "train", n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in sample_path("nli", split).read_text().splitlines()]
    for r in rows:
        r["rationale"] = f"the hypothesis says {r['hypothesis']}"
    return rows[:n] if n else rows


def train_tiny(out: Path, fmt: str = "label+rationale", steps: int = 90, n_rows: int = 32) -> Path:
    """Build protege:tiny-t5-shaped random weights and fit them to `n_rows` NLI targets."""
    import torch

    from protege.students.seq2seq.build import build_random_student, load_student

    torch.manual_seed(0)
    build_random_student("t5", out)
    task = TaskConfig(format=fmt)
    model, tok = load_student(out)
    eos = tok.sep_token_id
    examples = [e for r in nli_rows("train", n_rows) for e in make_examples(task, r)]
    src = tok(
        [e.source for e in examples],
        padding=True,
        truncation=True,
        max_length=96,
        return_tensors="pt",
    )
    targets = []
    for e in examples:
        ids = [i for _, text in e.segments for i in tok(text, add_special_tokens=False).input_ids]
        targets.append(ids[:7] + [eos])  # the label and the rationale's start
    width = max(len(t) for t in targets)
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**src, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    save_task(task, out)
    return out


def trained_model(config, fmt: str = "label+rationale") -> Path:
    """Train once, then reuse across test files and sessions from pytest's cache directory
    (keyed by this file's source, so editing the recipe retrains)."""
    import hashlib

    import torch

    key = hashlib.sha256((Path(__file__).read_text() + torch.__version__).encode()).hexdigest()
    out = config.cache.mkdir("protege-serve") / f"tiny-{fmt.replace('+', '-')}-{key[:12]}"
    if not (out / "protege_task.json").exists():
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(dir=out.parent)) / "model"
        train_tiny(tmp, fmt=fmt)
        if not out.exists():
            tmp.rename(out)
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread; `stop()` is a graceful shutdown (as on SIGTERM)."""

    def __init__(self, predictor, cascade=None, app_factory=None, **kw):
        import uvicorn

        from protege.serve.server import ServeConfig, create_app, uvicorn_config

        self.cfg = ServeConfig(port=free_port(), **kw)
        if app_factory is not None:  # another app with the same guards (the proxy)
            app = app_factory(self.cfg)
        else:
            app = create_app(predictor, self.cfg, cascade)
        self.metrics = app.state.metrics
        config = uvicorn_config(app, self.cfg, timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.cfg.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)

    def __exit__(self, *exc):
        self.stop()
