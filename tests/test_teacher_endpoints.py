"""Answers are keyed by the endpoint that gave them (issue 19, item 1), and an endpoint that
cannot be reached stops the job at once (item 2). Against the OpenAI replica, through the SDK."""

from __future__ import annotations

import json
import socket
import sqlite3
import time

import pytest
from click.testing import CliRunner

from protege.cli import main
from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.teacher.config import TeacherConfig
from protege.teacher.endpoint_ids import ANY, endpoint_id, endpoint_key, key_digest
from protege.teacher.endpoints import lookup
from protege.teacher.failures import TeacherFatal
from protege.teacher.migrations import MIGRATIONS
from protege.teacher.store import TeacherStore, request_key
from protege.testing.fake_openai import FakeOpenAI


def _cfg(base_url, tmp_path, limit=4, **teacher) -> GenerateConfig:
    return GenerateConfig(
        recipe="explain",
        input=str(sample_path("nli", "dev")),
        output=str(tmp_path / "out.jsonl"),
        teacher=TeacherConfig(
            kind="openai", model="gpt-4.1-mini", base_url=base_url, **{"backoff_s": 0.01, **teacher}
        ),  # fmt: skip
        limit=limit,
        progress=False,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_endpoint_id_is_the_url_and_for_openai_the_account():
    assert endpoint_id("http://LOCALHOST:8000/v1/") == "http://localhost:8000/v1"
    a, b = (
        endpoint_id("https://api.openai.com/v1/", "sk-a"),
        endpoint_id("https://api.openai.com/v1", "sk-b"),
    )
    assert a == f"https://api.openai.com/v1#{key_digest('sk-a')}" and a != b
    assert "sk-a" not in a  # the key itself is never stored
    azure = "https://res.openai.azure.com/openai/v1/"
    assert endpoint_id(azure, "key1") == endpoint_id(azure, "key2")  # its resource: its account
    assert TeacherConfig(kind="local").endpoint_id("local") == "local"
    assert TeacherConfig(kind="replay").endpoint_id(None) is None
    msgs = [{"role": "user", "content": "hi"}]
    p = {"max_tokens": 4}
    assert request_key("m", msgs, p, endpoint=a) == endpoint_key(request_key("m", msgs, p), a)
    assert request_key("m", msgs, p, endpoint=a) != request_key("m", msgs, p, endpoint=b)


def test_a_stubs_answers_are_not_another_endpoints(tmp_path, monkeypatch):
    """The issue's case: a job against a local stub fills the store; the same job aimed at
    api.openai.com (no key) or at a closed port must not come back 'cached' with the stub's
    text. Another endpoint's answers are used only when named, and provenance says whose."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(model="gpt-4.1-mini") as stub:
        first = run_generate(_cfg(stub.base_url, tmp_path))
        assert (first.n_written, first.n_calls) == (4, 4)
        stub_id = endpoint_id(stub.base_url)
        assert {r["provenance"]["endpoint"] for r in _rows(tmp_path / "out.jsonl")} == {stub_id}
    runner = CliRunner()
    args = ["generate", "--recipe", "explain", "--input", str(sample_path("nli", "dev")),
            "--output", str(tmp_path / "o.jsonl"), "--limit", "4", "--teacher", "openai",
            "--model", "gpt-4.1-mini", "progress=false"]  # fmt: skip
    to_openai = runner.invoke(main, args)
    assert to_openai.exit_code == 1, to_openai.output
    assert "no API key for https://api.openai.com/v1" in to_openai.output
    assert not (tmp_path / "o.jsonl").exists()
    closed = f"http://127.0.0.1:{_closed_port()}/v1"
    dry = run_generate(_dry(closed, tmp_path))
    assert dry.n_cached == 0 and dry.answered_elsewhere == {stub_id: 4}
    # named explicitly, the stub's answers are used, and provenance says they are the stub's
    reused = run_generate(_cfg(closed, tmp_path, reuse_answers_from=[stub_id]))
    assert (reused.n_written, reused.n_calls, reused.n_cached) == (4, 0, 4)
    assert {r["provenance"]["endpoint"] for r in _rows(tmp_path / "out.jsonl")} == {stub_id}


def _dry(base_url, tmp_path) -> GenerateConfig:
    cfg = _cfg(base_url, tmp_path)
    cfg.dry_run = True
    return cfg


def test_an_unreachable_endpoint_stops_the_job_at_once(tmp_path):
    """Connection refused on the first requests: one line, at once, not 6 tries per row."""
    closed = f"http://127.0.0.1:{_closed_port()}/v1"
    cfg = _cfg(closed, tmp_path, limit=100, backoff_s=1.0)
    start = time.monotonic()
    with pytest.raises(TeacherFatal, match=r"cannot connect to http://127\.0\.0\.1:\d+/v1") as e:
        run_generate(cfg)
    assert time.monotonic() - start < 10  # before: 6 tries x 100 rows with backoff, minutes
    assert "0 answers stored" in str(e.value) and "\n" not in str(e.value)
    bad_name = "http://no-such-host.invalid/v1"
    with pytest.raises(TeacherFatal, match="cannot connect to http://no-such-host.invalid/v1"):
        run_generate(_cfg(bad_name, tmp_path, limit=100, backoff_s=1.0))


def test_a_fatal_stop_counts_requests_refused_apart_from_those_never_sent(tmp_path):
    """A 404 for every request in flight: those were sent (refused), the rest never were."""
    with FakeOpenAI(model="gpt-4.1-mini") as server:
        cfg = _cfg(server.base_url, tmp_path, limit=30)
        cfg.teacher.model = "no-such-model"
        with pytest.raises(TeacherFatal) as e:
            run_generate(cfg)
        sent = len(server.log)
    refused = int(str(e.value).split(" refused, ")[0].rsplit(" ", 1)[1])
    assert refused == sent == 1  # the first job's probe: nothing more after its 404 (was 16)
    assert f"{30 - sent} not sent" in str(e.value)


def test_the_probe_learns_every_parameter_rule_before_the_others_are_sent(tmp_path):
    """A model that refuses max_tokens, then temperature: only the probe hears each 400 (before,
    the 15 other workers were let go after the first and were all refused the temperature)."""
    with FakeOpenAI() as server:
        cfg = _cfg(server.base_url, tmp_path, limit=30)
        cfg.teacher.model = "gpt-5-mini"
        result = run_generate(cfg)
        refusals = [e["fault"] for e in server.log if e["fault"]]
    assert result.n_written == 30 and cfg.teacher.concurrency == 16
    assert refusals == ["unsupported_parameter", "unsupported_value"]
    prov = _rows(tmp_path / "out.jsonl")[0]["provenance"]
    assert prov["params"] == {"max_completion_tokens": 400, "seed": 123}  # what was sent


def _old_store(path, rows, evidence):
    """A store as protege wrote it before endpoints were kept (the first five migrations)."""
    db = sqlite3.connect(path, isolation_level=None)
    for m in MIGRATIONS[:5]:
        m(db)
    db.execute(f"PRAGMA user_version={5}")
    now = time.time()
    for model, text, source in rows:
        msgs = [{"role": "user", "content": f"prompt for {model}"}]
        params = {"max_tokens": 400}
        req = json.dumps({"model": model, "messages": msgs, "params": params})
        db.execute(
            "INSERT INTO responses (key, model, request, status, text, created_at, updated_at, "
            "source) VALUES (?,?,?,?,?,?,?,?)",
            (request_key(model, msgs, params), model, req, "ok", text, now, now, source),
        )
    for table, endpoint, model in evidence:
        if table == "server_limits":
            db.execute("INSERT INTO server_limits VALUES (?,?,NULL,NULL,?)", (endpoint, model, now))
        else:
            db.execute("INSERT INTO param_rules VALUES (?,?,'max_tokens','drop','',?)",
                       (endpoint, model, now))  # fmt: skip
    db.close()


def test_old_answers_are_found_by_the_endpoint_that_wrote_them_only(teacher_db):
    stub, openai = "http://127.0.0.1:9999/v1", "https://api.openai.com/v1"
    _old_store(
        teacher_db,
        [("stub-model", "stub text", "live"), ("gpt-4.1-mini", "openai text", "live"),
         ("paper-model", "imported text", "import"), ("twice", "whose?", "live")],
        [("server_limits", f"{stub}#{key_digest(None)}", "stub-model"),
         ("param_rules", openai, "gpt-4.1-mini"),
         ("param_rules", stub, "twice"), ("param_rules", openai, "twice")],
    )  # fmt: skip

    def find(model, endpoint, reuse=()):
        msgs = [{"role": "user", "content": f"prompt for {model}"}]
        pk = request_key(model, msgs, {"max_tokens": 400})
        key = endpoint_key(pk, endpoint)
        with TeacherStore() as store:
            got = lookup(store, {key: pk}, endpoint, reuse).get(key)
        return got.text if got else None

    assert find("stub-model", stub) == "stub text"
    assert find("stub-model", endpoint_id(openai, "sk-a")) is None
    account = endpoint_id(openai, "sk-a")
    assert find("gpt-4.1-mini", account) == "openai text"  # its account was never recorded
    assert find("gpt-4.1-mini", stub) is None
    assert find("paper-model", account) is None
    assert find("paper-model", account, ["import"]) == "imported text"
    assert find("twice", stub) is None and find("twice", account) is None  # not attributable
    assert find("twice", stub, [ANY]) == "whose?"
    with TeacherStore() as store:  # the migration ran once, and every answer is still there
        assert store.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 4
        ends = dict(store.db.execute("SELECT model, endpoint FROM responses").fetchall())
    assert ends == {"stub-model": stub, "gpt-4.1-mini": openai, "paper-model": "import",
                    "twice": None}  # fmt: skip
