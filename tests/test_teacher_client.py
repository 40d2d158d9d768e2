"""The teacher against a fake OpenAI-compatible server that misbehaves on purpose: what was
sent, what was retried, what was recorded in the store and what was written out."""

from __future__ import annotations

import json

from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.teacher.config import TeacherConfig
from protege.teacher.store import TeacherStore


def _cfg(server, tmp_path, **kw) -> GenerateConfig:
    teacher = dict(kind="openai", model="fake-model", base_url=server.base_url, backoff_s=0.01)
    teacher.update(kw.pop("teacher", {}))
    return GenerateConfig(
        recipe=kw.pop("recipe", "explain"),
        input=kw.pop("input", str(sample_path("nli", "dev"))),
        output=str(tmp_path / "out.jsonl"),
        teacher=TeacherConfig(**teacher),
        progress=False,
        **kw,
    )


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_sends_paper_a_request_and_records_provenance(fake_openai, tmp_path):
    result = run_generate(_cfg(fake_openai, tmp_path, limit=3))
    assert (result.n_calls, result.n_written, result.n_failed) == (3, 3, 0)
    body = fake_openai.log[0]["body"]
    assert body["model"] == "fake-model"
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.2, 123, 400)
    assert body["messages"][0]["content"].startswith("Explain why this text \n\n")
    row = _rows(tmp_path / "out.jsonl")[0]
    assert row["rationale"] == row["teacher_text"] and row["rationale"]
    source = json.loads(open(sample_path("nli", "dev")).readline())
    assert {k: row[k] for k in source} == source  # source fields kept
    prov = row["provenance"]
    assert prov["model"] == "fake-model" and prov["system_fingerprint"] == "fp_fake"
    assert prov["params"] == {"max_tokens": 400, "temperature": 0.2, "seed": 123}
    assert len(prov["template_hash"]) == 16 and prov["cached"] is False


def test_faults_are_retried_and_each_answer_stored_once(fake_openai, tmp_path):
    fake_openai.faults.extend(["429:0.2", "500", "drop", "malformed", "timeout"])
    cfg = _cfg(fake_openai, tmp_path, limit=4, teacher={"timeout_s": 0.5, "concurrency": 1})
    result = run_generate(cfg)
    assert (result.n_written, result.n_failed, result.n_retries) == (4, 0, 5)
    faults = [e["fault"] for e in fake_openai.log]
    assert faults == ["429:0.2", "500", "drop", "malformed", "timeout"] + [None] * 4
    # Retry-After was honoured: the retry came no sooner than 0.2 s after the 429
    assert fake_openai.log[1]["time"] - fake_openai.log[0]["time"] >= 0.2
    # the first prompt was sent six times, then answered; nothing was sent twice after that
    first = fake_openai.log[0]["body"]["messages"]
    assert [e["body"]["messages"] for e in fake_openai.log].count(first) == 6
    with TeacherStore() as store:
        (stats,) = store.stats()
    assert (stats["calls"], stats["ok"], stats["failed"]) == (4, 4, 0)
    assert run_generate(cfg).n_calls == 0  # rerun: all from the store
    assert len(fake_openai.log) == 9


def test_last_try_is_recorded_as_failed_not_written_and_retried_next_run(fake_openai, tmp_path):
    fake_openai.prompt_faults["Hugo Moreau"] = __import__("collections").deque(["500"] * 6)
    cfg = _cfg(fake_openai, tmp_path, input=str(sample_path("nli", "train")), limit=4,
               teacher={"max_retries": 2})  # fmt: skip
    result = run_generate(cfg)
    # rows 1 and 2 are about Hugo Moreau: each of their two prompts fails all 3 tries
    assert (result.n_failed, result.n_written) == (2, 2)
    assert "HTTP 500" in result.errors[0] and "after 3 tries" in result.errors[0]
    written = _rows(tmp_path / "out.jsonl")
    assert all(r["rationale"] for r in written)  # never an empty rationale
    assert all("Hugo Moreau" not in r["premise"] for r in written)
    with TeacherStore() as store:
        (stats,) = store.stats()
    assert stats["failed"] == result.n_failed
    again = run_generate(cfg)  # the server now answers: only the failed prompts are sent
    assert (again.n_calls, again.n_failed, again.n_written) == (result.n_failed, 0, 4)


def test_truncated_answer_is_flagged(fake_openai, tmp_path):
    fake_openai.faults.append("truncated")
    result = run_generate(_cfg(fake_openai, tmp_path, limit=2, teacher={"concurrency": 1}))
    assert result.n_flagged == 1
    rows = _rows(tmp_path / "out.jsonl")
    assert "max_tokens" in rows[0]["flagged"] and "flagged" not in rows[1]


def test_rpm_limit_spaces_requests(fake_openai, tmp_path):
    # 1200 rpm = 20 per second with a one-second bucket: 40 requests need 1 s of refill between
    # the first acquire and the last (less the first connections' set-up); unlimited, ~50 ms
    result = run_generate(_cfg(fake_openai, tmp_path, limit=40, teacher={"rpm": 1200}))
    assert result.n_written == 40
    times = [e["time"] for e in fake_openai.log]
    assert max(times) - min(times) >= 0.7


def test_openai_kind_without_a_key_says_how_to_set_one(tmp_path, monkeypatch):
    import pytest

    from protege.errors import ConfigError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = GenerateConfig(
        recipe="explain", input=str(sample_path("nli", "dev")), output=str(tmp_path / "o.jsonl"),
        teacher=TeacherConfig(kind="openai"), limit=2, progress=False,
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"no API key for https://api.openai.com/v1; set \$OPENAI_API_KEY"
    ):
        run_generate(cfg)


def test_cli_key_set_and_stats(fake_openai, tmp_path):
    from click.testing import CliRunner

    from protege.cli import main
    from protege.teacher.keys import get_key

    runner = CliRunner()
    result = runner.invoke(main, ["teacher", "key", "set", "MY_KEY"], input="sk-abc\n")
    assert result.exit_code == 0 and get_key("MY_KEY") == "sk-abc"
    run_generate(_cfg(fake_openai, tmp_path, limit=3))
    result = runner.invoke(main, ["teacher", "stats", "--json"])
    (row,) = json.loads(result.output)
    assert (row["model"], row["calls"], row["ok"], row["failed"]) == ("fake-model", 3, 3, 0)
    assert runner.invoke(main, ["teacher", "stats"]).exit_code == 0


def test_client_errors_fail_at_once_without_retries(fake_openai, tmp_path):
    fake_openai.faults.extend(["400", "400"])
    result = run_generate(_cfg(fake_openai, tmp_path, limit=2))
    assert (result.n_failed, result.n_retries, result.n_written) == (2, 0, 0)
    assert "HTTP 400 string_above_max_length" in result.errors[0] and len(fake_openai.log) == 2


def test_csv_input_with_mapped_fields(fake_openai, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("id,text_a,text_b,gold\n1,A man sleeps.,Someone rests.,entailment\n")
    cfg = _cfg(fake_openai, tmp_path, input=str(data),
               fields={"premise": "text_a", "hypothesis": "text_b", "label": "gold"})  # fmt: skip
    assert run_generate(cfg).n_written == 1
    assert (
        "A man sleeps.\n\nentails the following"
        in fake_openai.log[0]["body"]["messages"][0]["content"]
    )


def test_error_bodies_are_read_as_the_sdk_reads_them():
    """The hot path reads error answers itself (the SDK's way): the JSON `error` object where
    there is one, a proxy's HTML or an empty body as text, never an exception."""
    from protege.teacher.failures import FATAL, RETRY, ApiError, classify

    body = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                      "param": None, "code": "insufficient_quota"}}  # fmt: skip
    err = ApiError.from_response(429, json.dumps(body).encode())
    assert (err.status, err.code, err.type, err.param) == (429, "insufficient_quota",
                                                           "insufficient_quota", None)  # fmt: skip
    assert classify(err) == FATAL and "quota" in str(err)
    html = ApiError.from_response(502, b"<html><body>502 Bad Gateway</body></html>")
    assert classify(html) == RETRY and "502 Bad Gateway" in html.message and html.code is None
    assert ApiError.from_response(503, b"").message == "Error code: 503"
    odd = ApiError.from_response(400, b'{"error": "bad thing"}')
    assert "bad thing" in odd.message and odd.code is None


def test_http_proxy_from_the_environment_is_honoured(fake_openai, tmp_path, monkeypatch):
    """$HTTP_PROXY is used as the SDK would use it: the teacher's host here does not exist,
    so every answer came through the proxy (the replica, taking absolute-form requests)."""
    proxy = fake_openai.base_url.rsplit("/v1", 1)[0]
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    cfg = _cfg(fake_openai, tmp_path, limit=3)
    cfg.teacher.base_url = "http://teacher.invalid/v1"
    result = run_generate(cfg)
    assert result.n_calls == result.n_written == 3 and result.n_failed == 0
