"""`protege serve` speaks OpenAI's chat completions: tested with the official `openai` SDK as the
application (sync and async clients, streaming, `parse` with a Pydantic model, the SDK's own
exception types), and with the very requests the `label` recipe sent to a teacher."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel
from serve_util import Server, nli_rows, trained_model

from protege.formats import TaskConfig
from protege.generate.recipes import Template, get_recipe
from protege.serve.predictor import Predictor

LABELS = TaskConfig().labels


def prompt(row: dict, with_rationale: bool = False) -> list[dict[str, str]]:
    """The `label` recipe's request for a row, as an application sends it to its teacher."""
    text = TaskConfig().input_template.format(**row)
    return Template(get_recipe("label").path).messages(
        {"input": text, "labels": LABELS, "with_rationale": with_rationale}
    )


@pytest.fixture(scope="module")
def server(request):
    predictor = Predictor.load(trained_model(request.config, "label+rationale"))
    with Server(predictor, served_name="nli-student", api_key="sk-student") as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-student", max_retries=0)


def test_the_sdk_gets_labels_usage_and_the_students_confidence(server, client):
    rows = nli_rows("dev", 6)
    for row in rows:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1-mini", messages=prompt(row), temperature=0.2, seed=123,
            max_completion_tokens=400, user="app-user", metadata={"team": "a"},
        )  # fmt: skip
        answer = raw.parse()
        assert answer.choices[0].message.content in LABELS
        assert answer.model == "nli-student" and answer.object == "chat.completion"
        assert answer.usage.prompt_tokens > 5 and answer.usage.completion_tokens >= 1
        assert 0 < float(raw.headers["x-protege-confidence"]) <= 1
        assert raw.headers["x-protege-route"] == "student"
    assert [m.id for m in client.models.list().data] == ["nli-student"]
    assert server.metrics.sample("protege_chat_requests_total", route="student") == len(rows)


def test_async_clients_and_streaming_give_the_same_content(server):
    async def go():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-student") as c:
            rows = nli_rows("dev", 8)
            plain = await asyncio.gather(*(
                c.chat.completions.create(model="m", messages=prompt(r)) for r in rows))  # fmt: skip
            streamed = []
            for r in rows:
                stream = await c.chat.completions.create(
                    model="m", messages=prompt(r), stream=True,
                    stream_options={"include_usage": True})  # fmt: skip
                parts, usage = [], None
                async for chunk in stream:
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                    usage = chunk.usage or usage
                streamed.append("".join(parts))
                assert usage is not None and usage.total_tokens > 0
            return [p.choices[0].message.content for p in plain], streamed

    plain, streamed = asyncio.run(go())
    assert plain == streamed and all(x in LABELS for x in plain)


def test_parse_with_a_pydantic_model_and_a_rationale_when_the_schema_asks(client):
    class Verdict(BaseModel):
        label: Literal["entailment", "neutral", "contradiction"]

    class Explained(BaseModel):
        label: Literal["entailment", "neutral", "contradiction"]
        rationale: str

    row = nli_rows("dev", 1)[0]
    done = client.chat.completions.parse(model="m", messages=prompt(row), response_format=Verdict)
    assert done.choices[0].message.parsed.label in LABELS
    explained = client.chat.completions.parse(
        model="m", messages=prompt(row), response_format=Explained)  # fmt: skip
    parsed = explained.choices[0].message.parsed
    assert parsed.label in LABELS and parsed.rationale  # this student writes rationales


def test_logprobs_give_the_label_probabilities(client):
    answer = client.chat.completions.create(
        model="m", messages=prompt(nli_rows("dev", 1)[0]), logprobs=True, top_logprobs=3)  # fmt: skip
    (token,) = answer.choices[0].logprobs.content
    assert token.token == answer.choices[0].message.content
    assert sorted(t.token for t in token.top_logprobs) == sorted(LABELS)
    assert token.logprob == max(t.logprob for t in token.top_logprobs)


def test_errors_are_the_sdks_own_exception_types(server, client):
    messages = prompt(nli_rows("dev", 1)[0])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="m", messages=messages, n=2)
    with pytest.raises(openai.BadRequestError, match="does not call tools"):
        client.chat.completions.create(model="m", messages=messages, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {}}}])  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument"):
        client.chat.completions.create(model="m", messages=messages, extra_body={"bogus": 1})
    with pytest.raises(openai.BadRequestError, match="expected the `label` prompt") as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "invalid_prompt" and e.value.param == "messages"
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_the_requests_the_label_recipe_sent_are_answered_with_valid_labels(
    fake_openai, tmp_path, client
):
    from protege.data.samples import sample_path
    from protege.generate import GenerateConfig, run_generate
    from protege.teacher.config import TeacherConfig
    from protege.teacher.store import TeacherStore

    teacher = TeacherConfig(kind="openai", model="fake-model", base_url=fake_openai.base_url)
    run_generate(GenerateConfig(recipe="label", input=str(sample_path("nli", "dev")), limit=10,
                                output=str(tmp_path / "labels.jsonl"), teacher=teacher,
                                progress=False))  # fmt: skip
    with TeacherStore() as store:
        stored = [json.loads(r[0]) for r in store.db.execute("SELECT request FROM responses")]
    assert len(stored) == 10
    for request in stored:
        sent = request["sent"]
        answer = client.chat.completions.create(
            model=request["model"], messages=request["messages"], **sent
        )
        label = json.loads(answer.choices[0].message.content)["label"]
        assert label in LABELS


def test_a_summarization_student_answers_the_summarize_prompt_with_its_confidence(tmp_path):
    from protege.formats import save_task
    from protege.students.seq2seq.build import build_random_student

    build_random_student("t5", tmp_path / "m")
    save_task(TaskConfig(type="summarization", input_template="{article}"), tmp_path / "m")
    article = "The council met on Monday. It voted to build a new bridge over the river."
    messages = Template(get_recipe("summarize").path).messages({"article": article})
    with Server(Predictor.load(tmp_path / "m")) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)
        answer = raw.parse()
        assert isinstance(answer.choices[0].message.content, str)
        assert 0 < float(raw.headers["x-protege-confidence"]) <= 1  # exp(mean token log-prob)
        short = client.chat.completions.create(model="m", messages=messages, max_tokens=2)
        assert answer.usage.completion_tokens > 2  # random weights write on to their budget
        assert short.choices[0].finish_reason == "length"
        assert short.usage.completion_tokens <= 2
        with pytest.raises(openai.BadRequestError, match="`summarize` prompt"):
            client.chat.completions.create(model="m", messages=prompt(nli_rows("dev", 1)[0]))
