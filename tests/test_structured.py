"""Structured answers and label confidence: the label recipe's JSON schema, a user template's
sidecar schema, answers that break their schema flagged, logprobs and self-consistency."""

from __future__ import annotations

import json
import math

import pytest

from protege.data.samples import sample_path
from protege.generate import GenerateConfig, run_generate
from protege.generate.confidence import label_probability, majority
from protege.generate.schema import label_schema, validate
from protege.teacher.config import TeacherConfig
from protege.teacher.params import ParamRules

LABELS = ["entailment", "neutral", "contradiction"]


def _cfg(server, tmp_path, **kw) -> GenerateConfig:
    teacher = dict(kind="openai", model="fake-model", base_url=server.base_url, backoff_s=0.01)
    teacher.update(kw.pop("teacher", {}))
    return GenerateConfig(recipe=kw.pop("recipe", "label"),
                          input=kw.pop("input", str(sample_path("nli", "dev"))),
                          output=str(tmp_path / "out.jsonl"), teacher=TeacherConfig(**teacher),
                          progress=False, **kw)  # fmt: skip


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_validate_by_hand():
    schema = label_schema(LABELS, with_rationale=True)
    assert schema["required"] == ["rationale", "label"]
    assert validate({"rationale": "r", "label": "neutral"}, schema) is None
    assert validate({"label": "neutral"}, schema) == "answer has no 'rationale'"
    assert validate({"rationale": "r", "label": "maybe"}, schema) == (
        "answer.label 'maybe' is not one of entailment, neutral, contradiction"
    )
    assert validate({"rationale": "r", "label": "neutral", "x": 1}, schema) == (
        "answer has an unexpected 'x'"
    )
    assert validate([1, "a"], {"type": "array", "items": {"type": "integer"}}) == (
        "answer[1] is str, not integer"
    )
    assert validate(True, {"type": "integer"}) == "answer is bool, not integer"


def test_label_probability_and_majority_by_hand():
    pairs = [['{"', -0.1], ["label", -0.1], ['":', 0.0], [' "', -0.2], ["ent", -0.3],
             ["ailment", -0.4], ['"}', 0.0]]  # fmt: skip
    text = "".join(t for t, _ in pairs)
    assert label_probability(json.dumps(pairs), text, "entailment") == pytest.approx(math.exp(-0.7))
    plain = [["neutral", -0.5], ["\n", 0.0], ["because", -1.0]]
    assert label_probability(json.dumps(plain), "neutral\nbecause", "neutral") == pytest.approx(
        math.exp(-0.5)
    )
    assert label_probability(None, text, "entailment") is None
    assert majority(["a", "b", "a", None]) == ("a", 0.5)
    assert majority([None, None]) == (None, 0.0)


def test_schema_is_sent_as_llama_cpp_python_takes_it_for_the_local_teacher():
    fmt = {"type": "json_schema", "json_schema": {"name": "label", "strict": True,
                                                  "schema": {"type": "object"}}}  # fmt: skip
    local = ParamRules.for_config(TeacherConfig(kind="local"), {})
    assert local.apply({"response_format": fmt}) == {
        "response_format": {"type": "json_object", "schema": {"type": "object"}}
    }
    remote = ParamRules.for_config(TeacherConfig(kind="openai"), {})
    assert remote.apply({"response_format": fmt})["response_format"] == fmt


def test_label_recipe_asks_for_an_enum_and_records_the_labels_probability(fake_openai, tmp_path):
    result = run_generate(_cfg(fake_openai, tmp_path, limit=6))
    body = fake_openai.log[0]["body"]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == LABELS
    assert body["logprobs"] is True and body["top_logprobs"] == 1
    rows = _rows(tmp_path / "out.jsonl")
    assert result.n_flagged == 0 and all(r["label"] in LABELS for r in rows)
    for r in rows:  # the probability of the label's own tokens, from the stored logprobs
        assert 0.2 < r["confidence"] <= 1.0
    assert "response_format" in rows[0]["provenance"]["params"]


def test_an_answer_that_breaks_its_schema_is_flagged_never_guessed(fake_openai, tmp_path):
    fake_openai.reply = lambda messages: (
        '{"label": "Entailment"}' if "Hugo" in messages[-1]["content"] else "entailment"
    )
    run_generate(_cfg(fake_openai, tmp_path, input=str(sample_path("nli", "train")), limit=4))
    rows = _rows(tmp_path / "out.jsonl")
    for r in rows:
        if "Hugo" in r["premise"]:  # JSON, but not a label of the set: flagged
            assert r["label"] is None and "is not one of" in r["flagged"]
        else:  # the endpoint ignored the schema and answered a bare label: read as text
            assert r["label"] == "entailment" and "flagged" not in r


def test_self_consistency_keeps_the_majority_and_its_share(fake_openai, tmp_path):
    cfg = _cfg(fake_openai, tmp_path, limit=5, teacher={"self_consistency": 5, "logprobs": False})
    result = run_generate(cfg)
    assert result.n_requests == 25 and result.n_written == 5
    seeds = sorted({e["body"]["seed"] for e in fake_openai.log})
    assert seeds == [123, 124, 125, 126, 127]
    for r in _rows(tmp_path / "out.jsonl"):
        assert len(r["votes"]) == 5 and r["label"] in LABELS
        assert r["confidence"] == r["votes"].count(r["label"]) / 5
        assert r["votes"].count(r["label"]) == max(r["votes"].count(v) for v in r["votes"])
    # k=1 afterwards reuses the first of the k answers: nothing is sent
    n = len(fake_openai.log)
    run_generate(_cfg(fake_openai, tmp_path, limit=5))
    assert len(fake_openai.log) == n


def test_a_users_template_with_a_sidecar_schema(fake_openai, tmp_path):
    template = tmp_path / "topic.j2"
    template.write_text("{% block user %}Topic of: {{ premise }}{% endblock %}")
    (tmp_path / "topic.schema.json").write_text(json.dumps({
        "type": "object", "additionalProperties": False, "required": ["topic", "score"],
        "properties": {"topic": {"type": "string"}, "score": {"type": "integer"}},
    }))  # fmt: skip
    run_generate(_cfg(fake_openai, tmp_path, recipe=str(template), limit=3))
    assert fake_openai.log[0]["body"]["response_format"]["type"] == "json_schema"
    rows = _rows(tmp_path / "out.jsonl")
    assert all(isinstance(r["score"], int) and r["topic"] for r in rows)
    assert not any("flagged" in r for r in rows)


def test_report_says_the_teacher_was_unusable_instead_of_claiming_a_win():
    from types import SimpleNamespace

    from protege.report.views import verdict

    paired = {"student": "s/best", "n": 120,
              "paired_bootstrap": {"diff": 0.533, "ci_low": 0.44, "ci_high": 0.62, "p_value": 0.0},
              "mcnemar": {"p_value": 0.0}}  # fmt: skip
    speed = {"n_asked": 120, "n_answers": 120, "n_missing": 0, "n_flagged": 120}
    run = SimpleNamespace(summary={"teacher": {"paired": paired, "speed": speed}},
                          metric="accuracy", scale=lambda: 100)  # fmt: skip
    line = verdict(run)
    assert line.startswith("Not measured: 120 of the teacher's 120 zero-shot answers were flagged")
    assert "+53.3" not in line
    speed["n_flagged"] = 10  # a few flagged: the comparison stands
    assert "+53.3 points accuracy" in verdict(run)


def test_training_leaves_out_rows_below_min_confidence(tmp_path):
    from protege.formats import TaskConfig
    from protege.train.data import load_examples

    path = tmp_path / "teacher.jsonl"
    rows = [{"premise": "p", "hypothesis": f"h{i}", "label": "neutral", "confidence": c}
            for i, c in enumerate([0.95, 0.4, 0.7, None])]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = load_examples(str(path), TaskConfig(), min_confidence=0.6)
    assert kept.n_examples == 3 and kept.skipped_low_confidence == 1  # None: kept
    assert load_examples(str(path), TaskConfig()).n_examples == 4


def test_report_shows_teacher_accuracy_against_confidence(tmp_path):
    from protege.report.confidence import accuracy_by_confidence, confidence_section
    from protege.report.sections import RunFiles

    rows = [
        {"label": "neutral", "teacher_label": "neutral", "confidence": 0.95},
        {"label": "neutral", "teacher_label": "entailment", "confidence": 0.92},
        {"label": "entailment", "teacher_label": "entailment", "confidence": 0.99},
        {"label": "entailment", "teacher_label": "neutral", "confidence": 0.3},
        {"label": "entailment", "teacher_label": None, "flagged": "x", "confidence": 0.6},
        {"label": "neutral", "teacher_label": "neutral"},  # no confidence: left out
    ]
    bins = accuracy_by_confidence(rows, LABELS, "label", "teacher_label")
    assert [(b["n"], b["correct"]) for b in bins] == [(1, 0), (1, 0), (0, 0), (3, 2)]
    assert bins[-1]["accuracy"] == pytest.approx(2 / 3) and bins[2]["accuracy"] is None
    (tmp_path / "generate").mkdir()
    (tmp_path / "generate" / "teacher-zeroshot.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    run = RunFiles(tmp_path, tmp_path / "report")
    run.task, run.kind = {"label_field": "label", "labels": LABELS}, "classification"
    section = confidence_section(run)
    assert section.tables[0].rows[-1] == ["0.9–1.0", "3", "2", "66.7"]
    assert section.figures and section.figures[0].path.exists()


def test_a_max_tokens_too_small_for_the_label_schema_is_raised(fake_openai, tmp_path, capsys):
    """max_tokens 8 cuts `{"label": "contradiction"}` off (the demo's local teacher wrote
    `{ "label": "neu` and every answer was flagged): raised to what the schema needs, said once."""
    result = run_generate(_cfg(fake_openai, tmp_path, limit=3, teacher={"max_tokens": 8}))
    room = len(json.dumps({"label": "contradiction"})) + 4
    assert [r["body"]["max_tokens"] for r in fake_openai.log] == [room] * 3
    assert result.n_flagged == 0
    assert f"teacher.max_tokens raised from 8 to {room}" in capsys.readouterr().out
    big = run_generate(_cfg(fake_openai, tmp_path, limit=1, teacher={"max_tokens": 64}))
    assert fake_openai.log[-1]["body"]["max_tokens"] == 64 and big.n_flagged == 0


def test_a_label_token_forced_by_a_grammar_gives_no_confidence():
    # llama.cpp's JSON grammar spelt `neutral` as n/eu/tr/al; the model's probability of the
    # piece `n` was ~1e-9: the product was reported as the label's confidence (0.0).
    pairs = [['{"', -0.01], ["label", -0.01], ['":', 0.0], [' "', -0.01], ["n", -20.7],
             ["eu", -0.01], ["tr", -0.01], ["al", -0.01], ['"}', 0.0]]  # fmt: skip
    text = "".join(t for t, _ in pairs)
    assert label_probability(json.dumps(pairs), text, "neutral") is None


def test_self_consistency_at_temperature_zero_is_refused(fake_openai, tmp_path):
    from protege.errors import ConfigError

    cfg = _cfg(fake_openai, tmp_path, limit=3,
               teacher={"self_consistency": 5, "temperature": 0.0})  # fmt: skip
    with pytest.raises(ConfigError, match="temperature 0 agree by construction") as e:
        run_generate(cfg)
    assert "\n" not in str(e.value)
    assert fake_openai.log == []  # refused before anything is sent


def test_the_local_teachers_grammar_confidence_is_reported_unavailable(tmp_path, capsys):
    """Answers of the local teacher under its JSON grammar: their stored logprobs (of forced
    pieces) give no confidence; the job says so in one line."""
    from protege.generate.recipes import Template, get_recipe
    from protege.generate.rows import output_row
    from protege.generate.run import confidence_line, job_params
    from protege.teacher.store import Answer

    cfg = GenerateConfig(recipe="label", output=str(tmp_path / "o.jsonl"),
                         teacher=TeacherConfig(kind="local"))  # fmt: skip
    recipe = get_recipe("label")
    params, schema = job_params(cfg, recipe)
    assert schema is not None
    pairs = [['{"label": "', -0.01], ["ent", -0.2], ["ailment", -0.1], ['"}', 0.0]]
    text = "".join(t for t, _ in pairs)
    answer = Answer("k", "smollm2", "ok", text=text, logprobs=json.dumps(pairs), created_at=1.0)
    record = {"premise": "p", "hypothesis": "h", "label": "entailment"}
    row = output_row(cfg, recipe, Template(recipe.path), "label", record, [answer], False,
                     params, schema)  # fmt: skip
    assert row["label"] == "entailment" and "confidence" not in row
    line = confidence_line([row], "confidence: unavailable: x", 1, cfg.teacher)
    assert line == "confidence: unavailable: x"
    remote = GenerateConfig(recipe="label", output=str(tmp_path / "o.jsonl"),
                            teacher=TeacherConfig(kind="openai"))  # fmt: skip
    row = output_row(remote, recipe, Template(recipe.path), "label", record, [answer], False,
                     params, schema)  # fmt: skip
    assert row["confidence"] == pytest.approx(math.exp(-0.3))  # chosen, not forced: kept


def test_every_labelled_job_says_how_its_confidence_was_computed(fake_openai, tmp_path, capsys):
    result = run_generate(_cfg(fake_openai, tmp_path, limit=4))
    assert result.confidence == "confidence: the probability of the label's tokens, on 4 of 4 rows"
    assert result.confidence in capsys.readouterr().out


def test_min_confidence_says_which_rows_it_cannot_judge(tmp_path, capsys):
    from protege.formats import TaskConfig
    from protege.train.data import load_examples

    path = tmp_path / "teacher.jsonl"
    rows = [{"premise": "p", "hypothesis": f"h{i}", "label": "neutral", "confidence": c}
            for i, c in enumerate([0.95, None, None])]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = load_examples(str(path), TaskConfig(), min_confidence=0.6)
    assert kept.n_examples == 3
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"{path}: min_confidence 0.6: 2 of 3 rows have no teacher confidence (unavailable, "
        "or never computed): kept, not judged"
    ]
