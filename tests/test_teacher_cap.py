"""A spending cap per store that no sequence of runs can pass, and spend by day, model, run."""

from __future__ import annotations

import json

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
