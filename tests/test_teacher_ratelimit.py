"""Limits learned from the server: the x-ratelimit headers read, requests paced to them (the
configured rpm/tpm stay upper bounds), against a replica that enforces its limits."""

from __future__ import annotations

import pytest

from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.teacher.config import TeacherConfig
from protege.teacher.ratelimit import SAFETY, Pacer, ServerLimits, parse_duration
from protege.testing.fake_openai import FakeOpenAI
from protege.testing.replica_limits import duration


def test_durations_as_the_api_writes_them():
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3s") == 3723
    assert parse_duration("7") == 7 and parse_duration("soon") is None
    assert [duration(x) for x in (0.02, 1.5, 360)] == ["20ms", "1.5s", "6m0s"]
    limits = ServerLimits.from_headers({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
    })  # fmt: skip
    assert (limits.limit_requests, limits.remaining_requests) == (500, 499)
    assert limits.reset_requests_s == pytest.approx(0.12) and limits.limit_tokens == 30000


async def _pacer_after(headers, rpm=None, tpm=None) -> Pacer:
    pacer = Pacer(rpm, tpm)
    pacer.observe(headers)
    return pacer


def test_configured_limits_stay_upper_bounds():
    import asyncio

    stated = {"x-ratelimit-limit-requests": "6000", "x-ratelimit-limit-tokens": "100000"}
    p = asyncio.run(_pacer_after(stated))
    assert p.requests.per_minute == 6000 * SAFETY and p.tokens.per_minute == 100000 * SAFETY
    p = asyncio.run(_pacer_after(stated, rpm=600))
    assert p.requests.per_minute == 600  # the configured limit is lower: it stands
    p = asyncio.run(_pacer_after({}, rpm=600))
    assert p.requests.per_minute == 600 and p.tokens is None and p.known.is_set()


def _cfg(server, tmp_path, n, **teacher) -> GenerateConfig:
    t = dict(kind="openai", model="fake-model", base_url=server.base_url, concurrency=64,
             backoff_s=0.05)  # fmt: skip
    t.update(teacher)
    return GenerateConfig(recipe="explain", input=str(sample_path("nli", "train")), limit=n,
                          output=str(tmp_path / "out.jsonl"), teacher=TeacherConfig(**t),
                          progress=False)  # fmt: skip


def test_a_rate_limited_server_is_paced_without_a_storm_of_429s(tmp_path):
    # 1,800 requests a minute (30/s); 64 workers would send 64 at once without the headers
    with FakeOpenAI(latency=0.02, rpm=1800) as server:
        result = run_generate(_cfg(server, tmp_path, 90))
        assert result.n_written == 90 and result.n_failed == 0
        assert server.limits.limited <= 2  # one clock tick apart at most, never a storm
        times = sorted(e["time"] for e in server.log if e["fault"] is None)
        rate = (len(times) - 30) / (times[-1] - times[30])  # after the first second's burst
        assert 0.8 * 30 <= rate <= 1.05 * 30


def test_a_tokens_limit_is_paced_too(tmp_path):
    with FakeOpenAI(latency=0.01, tpm=60 * 4000) as server:  # 4,000 tokens a second
        result = run_generate(_cfg(server, tmp_path, 40, max_tokens=400))
        assert result.n_written == 40 and server.limits.limited <= 2


def test_stated_limits_are_remembered_so_the_next_job_sends_without_a_probe(tmp_path):
    from protege.teacher.store import TeacherStore

    with FakeOpenAI(latency=0.3, rpm=1800, api_key="sk-proj-limits-test-0001") as server:
        first = _cfg(server, tmp_path, 40, api_key_env="LIMITS_TEST_KEY")
        env = {"LIMITS_TEST_KEY": "sk-proj-limits-test-0001"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert run_generate(first).n_written == 40
            n_first = len(server.log)
            second = _cfg(server, tmp_path, 40, api_key_env="LIMITS_TEST_KEY")
            second.input = str(sample_path("nli", "dev"))
            second.output = str(tmp_path / "dev.jsonl")
            assert run_generate(second).n_written == 40
        a = sorted(e["time"] for e in server.log[:n_first])
        b = sorted(e["time"] for e in server.log[n_first:])
        assert a[1] - a[0] >= 0.3  # the first job's probe: one answer before the rest
        assert b[1] - b[0] < 0.1  # the second job knew the limits: no probe
        assert server.limits.limited <= 2
    with TeacherStore() as store:
        rows = store.db.execute("SELECT * FROM server_limits").fetchall()
    assert len(rows) == 1 and rows[0][2] == 1800 and "sk-proj" not in repr(rows)


def test_an_answer_without_limit_headers_keeps_the_limits_learned():
    import asyncio

    async def go() -> Pacer:
        pacer = Pacer(None, None)
        pacer.observe({"x-ratelimit-limit-requests": "600"})
        pacer.observe({"content-type": "application/json"})  # e.g. a gateway's own error
        return pacer

    p = asyncio.run(go())
    assert p.observed and p.limits.limit_requests == 600  # what the next job is told
    assert p.requests.per_minute == 600 * SAFETY


def test_a_stated_limit_below_the_floor_is_not_believed_and_said(tmp_path):
    """An endpoint stating 0.01 requests a minute (and none left for 100 minutes) would pace
    the job at one request every 100 minutes, silently; it is ignored, with a line."""
    import os
    import subprocess
    import sys

    with FakeOpenAI() as server:
        server.limits.stated = {
            "x-ratelimit-limit-requests": "0.01", "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "100m", "x-ratelimit-limit-tokens": "0.5",
        }  # fmt: skip
        cmd = [sys.executable, "-m", "protege", "generate", "--recipe", "explain", "--input",
               str(sample_path("nli", "dev")), "--output", str(tmp_path / "o.jsonl"),
               "--teacher", "openai", "--model", "fake-model", "--base-url", server.base_url,
               "--limit", "8"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stderr.split())
    assert "states x-ratelimit-limit-requests: 0.01 a minute, below 1: not believed" in out
    assert "states x-ratelimit-limit-tokens: 0.5 a minute, below 100: not believed" in out
    assert len(open(tmp_path / "o.jsonl").readlines()) == 8
