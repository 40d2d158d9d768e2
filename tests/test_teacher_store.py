"""Teacher store, costs, budget, keys, retry timing: the pure parts, against hand numbers."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from protege.teacher.client import backoff
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget, estimate_prompt_tokens, worst_prompt_tokens
from protege.teacher.keys import get_key, set_key
from protege.teacher.migrations import MIGRATIONS
from protege.teacher.ratelimit import retry_after
from protege.teacher.store import Answer, TeacherStore, request_key

MSG = [{"role": "user", "content": "Explain why."}]


def test_request_key_is_canonical_and_sensitive_to_every_part():
    params = {"temperature": 0.2, "seed": 123, "max_tokens": 400}
    key = request_key("m", MSG, params)
    assert key == request_key("m", MSG, dict(reversed(list(params.items()))))
    assert len(key) == 64
    assert key != request_key("m2", MSG, params)
    assert key != request_key("m", [{"role": "user", "content": "Explain why!"}], params)
    assert key != request_key("m", MSG, {**params, "seed": 124})


def test_teacher_params_follow_paper_a_defaults():
    cfg = TeacherConfig(kind="openai")
    assert cfg.model_name == "gpt-4.1-mini"  # gpt-3.5-turbo-0125 was shut down 2026-10-23
    assert cfg.params() == {"max_tokens": 400, "temperature": 0.2, "seed": 123}
    assert TeacherConfig(seed=None, temperature=None).params() == {"max_tokens": 400}
    assert TeacherConfig().model_name == "smollm2-135m-instruct"


def test_store_migrates_once_uses_wal_and_keeps_ok_answers(teacher_db):
    with TeacherStore() as store:
        assert store.path == teacher_db
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        req = {"model": "m", "messages": MSG, "params": {}}
        store.put(Answer("k1", "m", "failed", error="HTTP 500", attempts=3), req)
        store.put(Answer("k1", "m", "ok", text="yes", input_tokens=10, output_tokens=5,
                         cost_usd=0.5, latency_s=1.0), req)  # fmt: skip
        # a later failure of the same request never replaces a good answer
        store.put(Answer("k1", "m", "failed", error="timeout"), req)
        store.put(Answer("k2", "m", "failed", error="HTTP 429"), req)
    with TeacherStore() as store:  # reopening runs no migration twice
        got = store.get_many(["k1", "k2", "nope"])
        assert set(got) == {"k1", "k2"}
        assert (got["k1"].status, got["k1"].text, got["k1"].attempts) == ("ok", "yes", 4)
        assert got["k2"].status == "failed" and got["k2"].error == "HTTP 429"
        (row,) = store.stats()
        assert row["model"] == "m"
        assert (row["calls"], row["ok"], row["failed"]) == (2, 1, 1)
        assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (10, 5, 0.5)
    assert sqlite3.connect(teacher_db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_token_bounds_by_hand():
    messages = [{"role": "user", "content": "é" * 8}]  # 8 chars, 16 UTF-8 bytes
    assert estimate_prompt_tokens(messages) == 2 + 4 + 3
    assert worst_prompt_tokens(messages) == 16 + 4 + 3


def test_budget_reserves_worst_case_and_settles_actual():
    b = Budget(limit=1.0)
    assert b.reserve(0.4) and b.reserve(0.4)
    assert not b.reserve(0.4)  # 0.8 reserved + 0.4 would pass 1.0
    b.settle(0.4, 0.1)
    assert b.reserve(0.4)  # 0.1 spent + 0.8 reserved
    assert b.spent == pytest.approx(0.1) and b.reserved == pytest.approx(0.8)
    assert Budget(limit=None).reserve(1e9)


def test_retry_after_and_backoff():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({}) is None
    assert retry_after({"retry-after": "soon"}) is None
    for attempt in range(8):
        assert 0 <= backoff(attempt, 1.0, None) <= min(60, 2**attempt)
    assert backoff(0, 1.0, 5.0) == 5.0  # Retry-After is a floor


def test_keys_file_is_private():
    set_key("PROTEGE_TEST_KEY", "sk-secret")
    from protege.paths import keys_path

    assert stat.S_IMODE(keys_path().stat().st_mode) == 0o600
    assert get_key("PROTEGE_TEST_KEY") == "sk-secret"
