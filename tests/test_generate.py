"""Recipes, validation before paying, dry runs, budgets and the replay teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from protege.cli import main
from protege.data.samples import sample_path
from protege.errors import DataError, ProtegeError
from protege.generate import GenerateConfig, run_generate
from protege.generate.recipes import parse_label
from protege.teacher.config import TeacherConfig
from protege.teacher.store import TeacherStore

EMANLI = Path(__file__).resolve().parents[1] / "../shared/data/anli-r1-emanli/dev.jsonl"


def _cfg(server, tmp_path, **kw) -> GenerateConfig:
    teacher = dict(kind="openai", model="fake-model", base_url=server.base_url if server else None)
    teacher.update(kw.pop("teacher", {}))
    kw.setdefault("input", str(sample_path("nli", "train")))
    return GenerateConfig(
        output=str(tmp_path / "out.jsonl"), teacher=TeacherConfig(**teacher), progress=False, **kw
    )


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_5w_prompt_is_paper_a_verbatim_and_one_call_per_premise(fake_openai, tmp_path):
    result = run_generate(_cfg(fake_openai, tmp_path, recipe="5w", limit=40))
    premises = {
        json.loads(x)["premise"] for x in open(sample_path("nli", "train")).readlines()[:40]
    }
    assert result.n_requests == result.n_calls == len(premises) < 40
    assert result.reduction == pytest.approx(1 - len(premises) / 40)
    system, user = fake_openai.log[0]["body"]["messages"]
    assert system == {
        "role": "system",
        "content": "You are helping with summarizing core semantic properties.",
    }
    assert user["content"].startswith(
        "Answer the 5 W questions about the following text with max 10 words per question:\n\n"
    )
    assert user["content"].endswith("\n\nWho:\nWhat:\nWhen:\nWhere:\nWhy:")
    rows = _rows(tmp_path / "out.jsonl")
    assert len(rows) == 40
    by_premise = {}
    for r in rows:  # every hypothesis on a premise carries that premise's one answer
        assert by_premise.setdefault(r["premise"], r["rationale"]) == r["rationale"]
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["n_requests"] == len(premises)


@pytest.mark.skipif(not EMANLI.exists(), reason="shared ANLI/EMANLI data not present")
def test_explain_prompt_is_verbatim_and_replay_hits_every_imported_answer(tmp_path):
    head = tmp_path / "anli20.jsonl"
    head.write_text("".join(open(EMANLI).readlines()[:20]))
    result = CliRunner().invoke(main, ["teacher", "import", str(head)])
    assert result.exit_code == 0, result.output
    cfg = _cfg(None, tmp_path, recipe="explain", input=str(head),
               teacher={"kind": "replay", "model": "gpt-3.5-turbo-0125"})  # fmt: skip
    out = run_generate(cfg)
    assert (out.n_cached, out.n_calls, out.n_written) == (20, 0, 20)
    for row in _rows(tmp_path / "out.jsonl"):
        assert row["rationale"] == row["original_rationale"]  # the recorded answer, exactly
        assert row["provenance"]["source"] == "import"
    # the same prompts with other parameters are other requests: replay refuses, naming the file
    cfg.teacher.seed = 7
    with pytest.raises(ProtegeError, match=r"no recorded answer .* 20 of 20 .*anli20.jsonl:1"):
        run_generate(cfg)


def test_replay_miss_fails_clearly_without_calling(tmp_path):
    result = CliRunner().invoke(main, [
        "generate", "--recipe", "explain", "--input", str(sample_path("nli", "dev")),
        "--output", str(tmp_path / "o.jsonl"), "--teacher", "replay", "--limit", "3",
    ])  # fmt: skip
    assert result.exit_code == 1
    assert "replay teacher: no recorded answer" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_label_recipe_flags_answers_outside_the_set(fake_openai, tmp_path):
    def reply(messages):
        text = messages[-1]["content"]
        return "Entailment." if "Hugo" in text else "Probably true\nbecause reasons"

    fake_openai.reply = reply
    cfg = _cfg(fake_openai, tmp_path, recipe="label", output_field="teacher_label", limit=4)
    result = run_generate(cfg)
    prompt = fake_openai.log[0]["body"]["messages"][0]["content"]
    assert "entailment, neutral, contradiction" in prompt and "Premise: " in prompt
    rows = _rows(tmp_path / "out.jsonl")
    assert result.n_flagged == sum("Hugo" not in r["premise"] for r in rows) == 2
    for r in rows:
        if "Hugo" in r["premise"]:
            assert r["teacher_label"] == "entailment" and "flagged" not in r
        else:
            assert r["teacher_label"] is None and "not one of" in r["flagged"]
    assert rows[0]["label"]  # the gold label is kept alongside


def test_parse_label_by_hand():
    labels = ["positive", "negative"]
    assert parse_label("Label: **Negative**", "y", labels).fields == {"y": "negative"}
    p = parse_label("positive\nIt praises the food.", "y", labels)
    assert p.fields == {"y": "positive", "y_rationale": "It praises the food."} and not p.flagged
    assert parse_label("mostly positive", "y", labels).flagged  # never guessed
    assert parse_label("", "y", labels).flagged


def test_reverse_pairs_synthetic_article_with_gold_summary(fake_openai, tmp_path):
    fake_openai.reply = lambda m: "SYNTHETIC ARTICLE about " + m[-1]["content"][-30:]
    cfg = _cfg(fake_openai, tmp_path, recipe="reverse", limit=3,
               input=str(sample_path("summarization", "train")))  # fmt: skip
    run_generate(cfg)
    source = [json.loads(x) for x in open(sample_path("summarization", "train")).readlines()[:3]]
    prompt = fake_openai.log[0]["body"]["messages"][0]["content"]
    assert prompt.startswith("Please write a news article based on the following news summary. '")
    for row, src in zip(_rows(tmp_path / "out.jsonl"), source, strict=True):
        assert row["article"].startswith("SYNTHETIC ARTICLE")
        assert row["summary"] == src["summary"] and row["original_article"] == src["article"]


def test_summarize_and_a_users_own_template(fake_openai, tmp_path):
    data = str(sample_path("summarization", "dev"))
    run_generate(_cfg(fake_openai, tmp_path, recipe="summarize", limit=2, input=data))
    assert "summary" in _rows(tmp_path / "out.jsonl")[0]
    mine = tmp_path / "mine.j2"
    mine.write_text("{% block system %}Be brief.{% endblock %}{% block user %}TL;DR {{ article }}"
                    "{% endblock %}")  # fmt: skip
    run_generate(_cfg(fake_openai, tmp_path, recipe=str(mine), limit=2, input=data))
    assert fake_openai.log[-1]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert _rows(tmp_path / "out.jsonl")[0]["teacher_output"]


@pytest.mark.parametrize(
    "lines, recipe, match",
    [
        (['{"premise": "p", "hypothesis": "h", "label": "neutral"}', '{"premise": '],
         "explain", r"bad.jsonl:2: not valid JSON"),
        (['{"premise": "p", "hypothesis": "h", "label": "neutral"}', '{"premise": "p"}'],
         "explain", r"bad.jsonl:2: field 'hypothesis': missing"),
        (['{"premise": "p", "hypothesis": "h", "label": "neutral"}',
          '{"premise": "p", "hypothesis": "h", "label": "maybe"}'],
         "explain", r"bad.jsonl:2: field 'label': unknown label 'maybe'"),
        (['{"article": "a"}'], "reverse", r"bad.jsonl:1: field 'summary': missing"),
    ],
)  # fmt: skip
def test_bad_input_stops_before_any_call(fake_openai, tmp_path, lines, recipe, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=match):
        run_generate(_cfg(fake_openai, tmp_path, recipe=recipe, input=str(bad)))
    result = CliRunner().invoke(main, [
        "generate", "--recipe", recipe, "--input", str(bad), "--output", str(tmp_path / "o.jsonl"),
        "--teacher", "openai", "--base-url", fake_openai.base_url,
    ])  # fmt: skip
    assert result.exit_code == 1 and result.output.count("\n") == 1  # one clear line
    assert fake_openai.log == []


def test_dry_run_counts_without_calling(fake_openai, tmp_path):
    cfg = _cfg(fake_openai, tmp_path, recipe="5w", limit=20,
               teacher={"model": "gpt-4.1-mini"})  # fmt: skip
    dry = run_generate(GenerateConfig(**{**cfg.__dict__, "dry_run": True}))
    assert fake_openai.log == [] and not (tmp_path / "out.jsonl").exists()
    assert dry.n_requests - dry.n_cached == dry.n_requests > 0
    assert dry.est_output_tokens == 400 * dry.n_requests
    expected = (dry.est_input_tokens * 0.4 + dry.est_output_tokens * 1.6) / 1e6  # genai-prices
    assert dry.est_cost_usd == pytest.approx(expected) and dry.price_source == "genai-prices"
    run_generate(GenerateConfig(**{**cfg.__dict__, "limit": 10}))
    again = run_generate(GenerateConfig(**{**cfg.__dict__, "dry_run": True}))
    assert 0 < again.n_cached < again.n_requests == dry.n_requests
    result = CliRunner().invoke(main, [
        "generate", "--recipe", "5w", "--input", cfg.input, "--output", cfg.output, "--limit",
        "20", "--teacher", "openai", "--base-url", fake_openai.base_url, "--dry-run",
        "teacher.model=gpt-4.1-mini",
    ])  # fmt: skip
    assert result.exit_code == 0 and "est. cost" in result.output
    assert f"{again.n_cached}" in result.output


def test_max_cost_is_never_exceeded(fake_openai, tmp_path):
    prices = {"fake-model": {"input": 1000.0, "output": 1000.0}}  # $ per 1M tokens
    teacher = {"prices": prices, "concurrency": 8, "max_tokens": 50}
    budget = 0.9
    cfg = _cfg(fake_openai, tmp_path, recipe="explain", limit=60, max_cost=budget,
               teacher=teacher)  # fmt: skip
    result = run_generate(cfg)
    assert 0 < result.n_written < 60 and result.n_skipped == 60 - result.n_written
    assert result.cost_usd <= budget
    with TeacherStore() as store:
        (stats,) = store.stats()
    assert stats["cost_usd"] == pytest.approx(result.cost_usd) and stats["cost_usd"] <= budget
    assert len(fake_openai.log) == result.n_calls == result.n_written
    rest = run_generate(GenerateConfig(**{**cfg.__dict__, "max_cost": None}))
    assert rest.n_calls == 60 - result.n_written and rest.n_written == 60


def test_rows_made_while_answers_arrive_are_the_rows_read_back_from_the_store(
    fake_openai, tmp_path
):
    # 5w shares one answer among records with the same premise; 20 of 40 records are cached
    run_generate(_cfg(fake_openai, tmp_path, recipe="5w", limit=20))
    live = run_generate(_cfg(fake_openai, tmp_path, recipe="5w", limit=40))
    made = _rows(live.output)
    again = run_generate(_cfg(fake_openai, tmp_path / "again", recipe="5w", limit=40))
    assert again.n_calls == 0
    stored = _rows(again.output)
    assert len(made) == len(stored) == 40
    cached = [r["provenance"].pop("cached") for r in made]
    assert [r["provenance"].pop("cached") for r in stored] == [True] * 40
    assert made == stored  # every field but `cached`, read from the store or made on arrival
    first20 = {json.loads(x)["premise"] for x in open(sample_path("nli", "train")).readlines()[:20]}
    assert cached == [r["premise"] in first20 for r in made]
