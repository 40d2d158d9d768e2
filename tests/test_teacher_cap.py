"""A spending cap per store that no sequence of runs can pass, and spend by day, model, run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from protege.cli import main
from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.teacher.config import TeacherConfig
from protege.teacher.spend import StoreCap, committed, set_cap, spend_by
from protege.teacher.store import Answer, TeacherStore

PRICES = {"fake-model": {"input": 1000.0, "output": 1000.0}}  # ~$0.1-0.5 a call


def _cfg(server, tmp_path, offset: int, n: int, mode="online") -> GenerateConfig:
    return GenerateConfig(
        recipe="explain", input=str(sample_path("nli", "train")), limit=offset + n,
        output=str(tmp_path / f"out{offset}.jsonl"), progress=False,
        teacher=TeacherConfig(kind="openai", model="fake-model", base_url=server.base_url,
                              prices=PRICES, max_tokens=50, mode=mode, batch_poll_s=0.05),
    )  # fmt: skip


def test_claims_by_hand(teacher_db):
    with TeacherStore() as store:
        set_cap(store, 1.0)
        store.put(Answer("a", "m", "ok", text="x", cost_usd=0.3, run_id="gone-1-x"), {})
        a = StoreCap(store, "host-a", ttl_s=60)
        assert a.allow(0.5) and a.granted == 0.55  # what is needed plus 5% of the cap
        b = StoreCap(store, "host-b", ttl_s=60)
        assert not b.allow(0.2)  # 0.3 spent + 0.55 claimed by a: 0.15 left
        assert "cap $1.00 is reached" in b.refused
        assert b.allow(0.15)
        a.close()
        assert committed(store.db) == (0.3, b.granted)


def test_no_sequence_of_runs_passes_the_cap(fake_openai, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["teacher", "cap", "set", "2.5"]).exit_code == 0
    spent = 0.0
    for offset in (0, 10, 20, 30):  # four runs over new prompts, each would spend ~$3
        result = run_generate(_cfg(fake_openai, tmp_path, offset, 10))
        spent += result.cost_usd
        assert spent <= 2.5
    assert result.n_skipped > 0 and "spending cap $2.50 is reached" in " ".join(result.errors)
    with TeacherStore() as store:
        assert sum(r["cost_usd"] for r in spend_by(store, "model")) <= 2.5

    def by(what: str) -> list[dict]:
        return json.loads(runner.invoke(main, ["teacher", "stats", "--by", what, "--json"]).output)

    runs = by("run")
    assert len(runs) >= 2 and all(r["label"].endswith(".jsonl") for r in runs)
    assert sum(r["cost_usd"] for r in runs) <= 2.5
    assert [r["model"] for r in by("model")] == ["fake-model"]
    assert len(by("day")) == 1
    table = runner.invoke(main, ["teacher", "stats"]).output
    assert "spend by run" in table and "cap $2.50" in table


def test_a_batch_out_at_the_endpoint_keeps_its_claim(fake_openai, tmp_path):
    with TeacherStore() as store:
        set_cap(store, 100.0)
    result = run_generate(_cfg(fake_openai, tmp_path, 0, 4, mode="batch"))
    assert result.n_written == 4
    with TeacherStore() as store:  # collected: its claim is gone, its spend is in the store
        assert store.db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert committed(store.db)[0] == result.cost_usd


def test_a_run_paused_past_its_claim_claims_again_before_it_spends(teacher_db):
    """a sends $0.05, is paused past its claim; b claims what is left; a resumes, stores what
    it had in flight and wants to spend within its old grant: it must ask again, and is
    refused. The money a had in flight was never claimable by b."""
    with TeacherStore() as store:
        set_cap(store, 0.30)
        a = StoreCap(store, "host-a-1-x", ttl_s=0.3)
        assert a.allow(0.10, 0.05) and a.granted == pytest.approx(0.115)
        time.sleep(0.4)  # SIGSTOP past the claim's expiry
        b = StoreCap(store, "host-b-1-x", ttl_s=60)
        assert not b.allow(0.25)  # a's $0.05 in flight may be billed whatever a does next
        assert b.allow(0.23)
        store.put(Answer("a1", "m", "ok", text="x", cost_usd=0.05, run_id="host-a-1-x"), {})
        assert not a.allow(0.11, 0.06)  # within its old grant of $0.115, but that is gone
        spent, claims = committed(store.db)
        assert spent + claims <= 0.30 + 1e-9


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_run_killed_with_requests_in_flight_keeps_them_claimed(fake_openai, tmp_path, sig):
    """Kill a run (or Ctrl-C it) with requests in flight: the server bills them, the store
    never hears of them. Their worst case stays claimed: the next run cannot spend it."""
    from protege.teacher.cost import worst_prompt_tokens
    from protege.teacher.prices import Pricing

    with TeacherStore() as store:
        set_cap(store, 3.0)
    fake_openai.latency = 2.0  # the first answer (the pace probe), then 3 in flight
    cmd = [sys.executable, "-m", "protege", "generate", "--recipe", "explain", "--input",
           str(sample_path("nli", "train")), "--limit", "4", "--output", str(tmp_path / "a.jsonl"),
           "--teacher", "openai", "--model", "fake-model", "--base-url", fake_openai.base_url,
           "--concurrency", "4", "teacher.max_tokens=50",
           "teacher.prices.fake-model.input=1000", "teacher.prices.fake-model.output=1000"]  # fmt: skip
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(fake_openai.log) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.send_signal(sig)
    job.wait(30)
    price = Pricing("fake-model", "config", 1000.0, 1000.0)
    with TeacherStore() as store:
        stored = {json.dumps(json.loads(r)["messages"])
                  for (r,) in store.db.execute("SELECT request FROM responses")}  # fmt: skip
        spent, claims = committed(store.db)
    sent = [e["body"]["messages"] for e in fake_openai.log]
    in_flight = sum(price.cost(worst_prompt_tokens(m), 50) for m in sent
                    if json.dumps(m) not in stored)  # fmt: skip
    assert len(stored) < 4 and claims >= in_flight - 1e-9 > 0  # not forgotten at the kill
    fake_openai.latency = 0.0
    result = run_generate(_cfg(fake_openai, tmp_path, 10, 10))
    assert result.cost_usd > 0 and spent + in_flight + result.cost_usd <= 3.0 + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_the_cap_holds_for_random_interleavings_of_runs(teacher_db, seed):
    """Runs that reserve, send (billed at once by the server), store answers, renew, are all
    paused past their claims, are killed with requests in flight, or finish, in a random
    order: what the server billed never passes the cap."""
    import random

    from protege.teacher.cost import Budget

    rng = random.Random(seed)
    ttl, cap_usd, billed, n = 0.05, 1.0, 0.0, 0
    runs: dict[str, dict] = {}
    with TeacherStore() as store:
        set_cap(store, cap_usd)
        for _ in range(300):
            if len(runs) < 3:
                n += 1
                owner = f"host{n}-1-x"  # another host's: only expiry tells it is gone
                runs[owner] = {
                    "budget": Budget(None, cap=StoreCap(store, owner, ttl)),
                    "flight": [],
                }
            owner = rng.choice(sorted(runs))
            run, op = runs[owner], rng.random()
            budget, flight = run["budget"], run["flight"]
            if op < 0.4:
                worst = rng.uniform(0.01, 0.1)
                if budget.reserve(worst):
                    actual = rng.uniform(0.0, worst)
                    billed += actual  # sent: the server bills it, answered or not
                    flight.append((worst, actual))
            elif op < 0.7 and flight:
                worst, actual = flight.pop(0)
                budget.settle(worst, actual)
                store.put(Answer(f"k{rng.random()}", "m", "ok", text="x", cost_usd=actual,
                                 run_id=owner), {})  # fmt: skip
            elif op < 0.8:
                budget.cap.heartbeat()
            elif op < 0.86:
                time.sleep(ttl * 1.5)  # every run paused past its claim
            elif op < 0.93:
                del runs[owner]  # killed: never renews, never closes, its flight billed
            elif not flight:
                budget.cap.close()
                del runs[owner]
            assert billed <= cap_usd + 1e-9
    assert billed > 0.25 * cap_usd  # the runs did spend
