"""The pure parts of the student's OpenAI-compatible API: reading a teacher prompt back into
the student's input, checking requests as the API does, shaping answers, and choosing the
cascade's threshold."""

from __future__ import annotations

import json

import pytest

from protege.formats import TaskConfig
from protege.generate.recipes import Template, get_recipe
from protege.generate.schema import label_schema, response_format
from protege.serve.calibrate import choose, curve
from protege.serve.chat import (
    ChatError,
    chunks,
    completion,
    label_content,
    logprobs_content,
    parse_request,
    usage,
)
from protege.serve.prompts import MessageReader, PromptMismatch, PromptSpec, resolve_spec
from protege.serve.relay import canonical_params

NLI = TaskConfig()


def label_messages(text: str, with_rationale: bool = False, labels=None):
    tpl = Template(get_recipe("label").path)
    return tpl.messages({"input": text, "labels": labels or NLI.labels,
                         "with_rationale": with_rationale})  # fmt: skip


def test_the_label_prompt_reads_back_into_the_students_input(tmp_path):
    reader = MessageReader(resolve_spec(tmp_path, NLI, None), NLI)
    text = "Premise: A man {sleeps}.\n\nHypothesis: Label: nobody sleeps."
    read = reader.read(label_messages(text))
    assert read.item == text and read.with_rationale is False
    assert reader.read(label_messages(text, with_rationale=True)).with_rationale is True


def test_a_prompt_that_is_not_the_template_is_refused_saying_what_was_expected(tmp_path):
    reader = MessageReader(resolve_spec(tmp_path, NLI, None), NLI)
    with pytest.raises(PromptMismatch, match="`label` prompt: a user message like 'Classify"):
        reader.read([{"role": "user", "content": "What is the capital of France?"}])
    other_labels = label_messages("x", labels=["yes", "no"])
    with pytest.raises(PromptMismatch):  # another label set is another task
        reader.read(other_labels)
    with pytest.raises(PromptMismatch, match="'image_url' part"):
        reader.read([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_a_template_with_record_fields_and_a_system_block_reads_them_back(tmp_path):
    task = TaskConfig(input_template="Premise: {premise}")
    reader = MessageReader(resolve_spec(tmp_path, task, "5w"), task)
    msgs = Template(get_recipe("5w").path).messages({"premise": "Ann sang in Rome."})
    assert reader.read(msgs).item == {"premise": "Ann sang in Rome."}
    with pytest.raises(PromptMismatch):  # the system message is part of the prompt
        reader.read([m for m in msgs if m["role"] == "user"] + [
            {"role": "system", "content": "You are a pirate."}])  # fmt: skip


def test_raw_prompts_take_the_user_message_and_traffic_tasks_default_to_raw(tmp_path):
    task = TaskConfig(input_template="{input}")
    spec = resolve_spec(tmp_path, task, None)
    assert spec.recipe == "raw"
    reader = MessageReader(spec, task)
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "is it "}, {"type": "text",
                                                                              "text": "raining?"}]}]  # fmt: skip
    assert reader.read(msgs).item == "is it raining?"


def test_a_recorded_prompt_wins_over_the_default(tmp_path):
    from protege.serve.prompts import save_prompt

    spec = PromptSpec("mine", "{% block user %}Q: {{ input }} A:{% endblock %}", "{x}", [])
    save_prompt(spec, tmp_path)
    reader = MessageReader(resolve_spec(tmp_path, NLI, None), NLI)
    assert reader.read([{"role": "user", "content": "Q: hello A:"}]).item == "hello"


def test_requests_are_checked_as_the_api_checks_them():
    ok = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert parse_request(ok).stream is False
    cases = {
        "n": ({"n": 2}, "n=1"),
        "tools": ({"tools": [{"type": "function"}]}, "does not call tools"),
        "frobnicate": ({"frobnicate": 1}, "Unrecognized request argument supplied: frobnicate"),
        "top_logprobs": ({"top_logprobs": 3}, "'logprobs' must be true"),
        "temperature": ({"temperature": 3}, "between 0 and 2"),
        "max_completion_tokens": ({"max_completion_tokens": 0}, "integer below minimum"),
        "stream_options": ({"stream_options": {"include_usage": True}}, "only allowed when"),
        "response_format.json_schema.name": ({"response_format": {"type": "json_schema",
                                              "json_schema": {"schema": {}}}}, "Missing"),
    }  # fmt: skip
    for param, (extra, message) in cases.items():
        with pytest.raises(ChatError, match=message) as e:
            parse_request({**ok, **extra})
        assert e.value.status == 400 and e.value.param == param
        assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(ChatError, match="model"):
        parse_request({"messages": ok["messages"]})
    kept = parse_request({**ok, "user": "u1", "metadata": {"a": "b"}, "seed": 1, "n": 1,
                          "max_tokens": 5, "logprobs": True, "top_logprobs": 2})  # fmt: skip
    assert kept.max_tokens == 5 and kept.top_logprobs == 2


def test_answers_take_the_shape_the_teacher_was_asked_for():
    pred = {"label": "neutral", "score": 0.7,
            "scores": {"entailment": 0.2, "neutral": 0.7, "contradiction": 0.1}}  # fmt: skip
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    plain = label_content(pred, parse_request(base), False, NLI.labels)
    assert plain.text == "neutral"
    schema = response_format(label_schema(NLI.labels, False), "label")
    js = label_content(pred, parse_request({**base, "response_format": schema}), False, NLI.labels)
    assert json.loads(js.text) == {"label": "neutral"}
    assert js.text[js.label_span[0] : js.label_span[1]] == "neutral"
    # a Pydantic-style schema with capitalised enum values and a required rationale
    pyd = {"type": "json_schema", "json_schema": {"name": "NLI", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["verdict", "reason"],
        "properties": {"verdict": {"enum": ["Entailment", "Neutral", "Contradiction"],
                                   "type": "string"}, "reason": {"type": "string"}}}}}  # fmt: skip
    req = parse_request({**base, "response_format": pyd})
    with pytest.raises(ChatError, match="writes no rationale"):
        label_content(pred, req, True, NLI.labels)
    out = label_content({**pred, "rationale": "because"}, req, True, NLI.labels)
    assert json.loads(out.text) == {"verdict": "Neutral", "reason": "because"}


def test_logprobs_join_to_the_content_and_carry_the_label_probabilities():
    pred = {"label": "neutral", "score": 0.7,
            "scores": {"entailment": 0.2, "neutral": 0.7, "contradiction": 0.1}}  # fmt: skip
    schema = response_format(label_schema(NLI.labels, False), "label")
    req = parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                         "response_format": schema, "logprobs": True, "top_logprobs": 2})  # fmt: skip
    content = label_content(pred, req, False, NLI.labels)
    tokens = logprobs_content(content, pred, 2)
    assert "".join(t["token"] for t in tokens) == content.text
    (label_tok,) = [t for t in tokens if t["token"] == "neutral"]
    assert label_tok["logprob"] == pytest.approx(-0.356675, abs=1e-6)  # ln 0.7
    assert [t["token"] for t in label_tok["top_logprobs"]] == ["neutral", "entailment"]
    answer = completion("student", content.text, usage(5, 3), tokens)
    events = chunks(answer, include_usage=True)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == content.text and events[-1]["usage"]["total_tokens"] == 8


def test_the_store_key_of_relayed_traffic_is_generates_key():
    body = {"model": "x", "messages": [], "max_completion_tokens": 9, "temperature": 0.2,
            "seed": 123, "stream": True, "user": "u", "logprobs": True, "top_logprobs": 1}  # fmt: skip
    assert canonical_params(body) == {"max_tokens": 9, "temperature": 0.2, "seed": 123}


def test_the_threshold_is_the_lowest_confidence_that_keeps_the_target_agreement():
    conf = [0.99, 0.95, 0.95, 0.9, 0.8, 0.6]
    agree = [True, True, False, True, True, False]
    points = curve(conf, agree)
    # cut-offs high to low: kept 1 (1/1), 3 (2/3), 4 (3/4), 5 (4/5), 6 (4/6)
    assert points == [[0.99, 1 / 6, 1.0], [0.95, 0.5, 2 / 3], [0.9, 4 / 6, 0.75],
                      [0.8, 5 / 6, 0.8], [0.6, 1.0, 4 / 6]]  # fmt: skip
    assert choose(points, 0.8) == (0.8, 5 / 6, 0.8)
    assert choose(points, 0.75) == (0.8, 5 / 6, 0.8)
    assert choose(points, 1.0) == (0.99, 1 / 6, 1.0)
    threshold, coverage, agreement = choose([[0.9, 1.0, 0.5]], 0.97)
    assert threshold > 0.9 and coverage == 0.0 and agreement is None


def test_cascade_and_traffic_flags_fail_in_one_line(tmp_path):
    from click.testing import CliRunner

    from protege.cli import main
    from protege.formats import save_task

    save_task(NLI, tmp_path)
    run = CliRunner().invoke
    res = run(main, ["serve", str(tmp_path), "--teacher", "openai"])
    assert res.exit_code == 2 and "one of --target-agreement or --threshold" in res.output
    res = run(main, ["serve", str(tmp_path), "--shadow", "0.1"])
    assert res.exit_code == 2 and "need --teacher" in res.output
    res = run(main, ["serve", str(tmp_path), "--teacher", "openai", "--target-agreement", "0.9"])
    assert res.exit_code == 1 and "not calibrated; run `protege calibrate" in res.output
    assert "Traceback" not in res.output
    res = run(main, ["traffic", "export", "-o", str(tmp_path / "x.jsonl"), "--since", "soon"])
    assert res.exit_code == 1 and "--since: 'soon' is neither a date" in res.output
    res = run(main, ["calibrate", str(tmp_path), "--data", __file__, "--target-agreement", "2"])
    assert res.exit_code == 2 and "--target-agreement" in res.output
