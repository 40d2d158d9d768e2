"""The teacher against a replica of today's OpenAI API (protege.testing.fake_openai), through
the real SDK: parameters each model takes (learned from its 400s and remembered), fatal
answers that stop the job, keys that go only where they belong, usage billed as the API bills."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from protege.cli import main
from protege.data.samples import sample_path
from protege.errors import ConfigError
from protege.generate import GenerateConfig, run_generate
from protege.teacher.config import TeacherConfig
from protege.teacher.failures import TeacherFatal
from protege.teacher.params import default_rules, rule_from_error, wire_params
from protege.teacher.prices import pricing
from protege.teacher.store import Answer, TeacherStore, request_key
from protege.testing.fake_openai import FakeOpenAI


def _cfg(server, tmp_path, model="gpt-4.1-mini", limit=4, **kw) -> GenerateConfig:
    teacher = dict(kind="openai", model=model, base_url=server.base_url, backoff_s=0.01)
    teacher.update(kw.pop("teacher", {}))
    return GenerateConfig(
        recipe=kw.pop("recipe", "explain"),
        input=kw.pop("input", str(sample_path("nli", "dev"))),
        output=str(tmp_path / "out.jsonl"),
        teacher=TeacherConfig(**teacher),
        limit=limit,
        progress=False,
        **kw,
    )


def _rejected(server) -> list[str]:
    return [e["fault"] for e in server.log if e["fault"]]


# -- item 2: parameters the endpoint accepts ----------------------------------------------------
def test_openai_hosts_get_max_completion_tokens_and_reasoning_models_no_temperature():
    canonical = {"max_tokens": 400, "temperature": 0.2, "seed": 123}
    legacy, reasoning = default_rules("gpt-4.1-mini", True), default_rules("o4-mini", True)
    assert wire_params(canonical, legacy) == {
        "max_completion_tokens": 400, "temperature": 0.2, "seed": 123,
    }  # fmt: skip
    assert wire_params(canonical, reasoning) == {"max_completion_tokens": 400, "seed": 123}
    assert default_rules("gpt-5-mini", False) == {}  # vLLM / llama.cpp: max_tokens as is
    assert TeacherConfig(kind="openai").is_openai
    assert TeacherConfig(base_url="https://res.openai.azure.com/openai/v1/").is_openai
    assert not TeacherConfig(base_url="http://localhost:8000/v1").is_openai
    body = {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
            "param": "max_tokens", "code": "unsupported_parameter"}  # fmt: skip
    assert rule_from_error(body, {}) == ("max_tokens", "rename:max_completion_tokens")
    value = {"message": "...", "param": "temperature", "code": "unsupported_value"}
    assert rule_from_error(value, {}) == ("temperature", "drop")
    assert rule_from_error({"code": "string_above_max_length", "param": "messages"}, {}) is None


def test_unknown_reasoning_model_is_learned_from_its_400s_once_and_remembered(tmp_path):
    with FakeOpenAI() as server:
        cfg = _cfg(server, tmp_path, model="gpt-5-mini", teacher={"concurrency": 1})
        result = run_generate(cfg)
        assert (result.n_written, result.n_failed) == (4, 0)
        # the first request: max_tokens rejected, then temperature 0.2 rejected, then answered
        assert _rejected(server) == ["unsupported_parameter", "unsupported_value"]
        assert [e["body"].get("max_tokens") for e in server.log[:2]] == [400, None]
        sent = server.log[-1]["body"]
        assert sent["max_completion_tokens"] == 400 and "temperature" not in sent
        assert "max_tokens" not in sent and sent["seed"] == 123
        assert result.learned == [
            "gpt-5-mini: max_tokens -> rename:max_completion_tokens",
            "gpt-5-mini: temperature -> drop",
        ]
        # a later job (new records) sends the right parameters from its first request
        n = len(server.log)
        run_generate(_cfg(server, tmp_path, model="gpt-5-mini", limit=8))
        assert _rejected(server) == ["unsupported_parameter", "unsupported_value"]
        assert len(server.log) == n + 4
    with TeacherStore() as store:
        rules = store.param_rules(server.base_url, "gpt-5-mini")
        assert rules == {"max_tokens": "rename:max_completion_tokens", "temperature": "drop"}
        (row,) = store.stats()
        assert row["reasoning_tokens"] == 8 * 64  # the replica's reasoning model spends 64


def test_store_key_is_canonical_whatever_name_is_sent(tmp_path):
    messages = [{"role": "user", "content": "Explain why!"}]
    params = {"max_tokens": 400, "temperature": 0.2, "seed": 123}
    # made by protege before parameter names were adapted: stores keep answering it
    made_before = "17e6e4a3562b343fde76a48e622b02ee8aff5258cdd7d449910eb144aa4ccb97"
    assert request_key("gpt-5-mini", messages, params) == made_before
    with FakeOpenAI() as server:
        cfg = _cfg(server, tmp_path, model="gpt-5-mini", limit=2)
        run_generate(cfg)
        assert server.log[-1]["body"]["max_completion_tokens"] == 400
        with TeacherStore() as store:
            rows = store.db.execute("SELECT key, request FROM responses WHERE status='ok'")
            for key, request in rows.fetchall():
                req = json.loads(request)
                assert req["params"] == params  # canonical, part of the key
                assert req["sent"] == {"max_completion_tokens": 400, "seed": 123}
                assert req["endpoint"] == server.base_url  # the answer's endpoint
                assert key == request_key("gpt-5-mini", req["messages"], params,
                                          endpoint=req["endpoint"])  # fmt: skip
            prompt_keys = {k for (k,) in store.db.execute("SELECT prompt_key FROM responses")}
            assert request_key("gpt-5-mini", req["messages"], params) in prompt_keys
        calls = len(server.log)
        assert run_generate(cfg).n_calls == 0 and len(server.log) == calls


def test_an_answer_stored_under_an_old_key_is_reused(tmp_path):
    with FakeOpenAI() as server:
        cfg = _cfg(server, tmp_path, model="gpt-5-mini", limit=1)
        dry = run_generate(GenerateConfig(**{**cfg.__dict__, "dry_run": True}))
        assert dry.n_requests == 1
        # an answer recorded by an older protege for this endpoint, keyed by the canonical
        # request (what it sent then does not matter)
        from protege.generate.recipes import Template, get_recipe
        from protege.generate.run import _context, load_inputs
        from protege.teacher.endpoint_ids import endpoint_id

        recipe = get_recipe("explain")
        template = Template(recipe.path)
        record = load_inputs(cfg, recipe, template)[0]
        messages = template.messages(_context(cfg, template, record))
        params = {"max_tokens": 400, "temperature": 0.2, "seed": 123}
        here = endpoint_id(server.base_url)
        key = request_key("gpt-5-mini", messages, params, endpoint=here)
        with TeacherStore() as store:
            store.put(Answer(key, "gpt-5-mini", "ok", text="recorded before"),
                      {"model": "gpt-5-mini", "messages": messages, "params": params,
                       "endpoint": here})  # fmt: skip
        result = run_generate(cfg)
        assert (result.n_calls, result.n_cached, result.n_written) == (0, 1, 1)
        assert server.log == []


# -- item 3: fatal answers stop the job --------------------------------------------------------
@pytest.mark.parametrize(
    "fault, match",
    [
        ("401", r"refused the API key .*invalid_api_key: Incorrect API key provided"),
        ("403", r"refused access: HTTP 403 unsupported_country_region_territory"),
        ("quota", r"has no credit left for this key: HTTP 429 insufficient_quota"),
    ],
)
def test_fatal_answer_stops_the_job_keeping_what_was_answered(tmp_path, fault, match):
    with FakeOpenAI(faults=["ok", "ok", fault]) as server:
        cfg = _cfg(server, tmp_path, limit=12, teacher={"concurrency": 1, "max_retries": 5})
        with pytest.raises(TeacherFatal, match=match) as err:
            run_generate(cfg)
        assert "stopped: 2 answers stored, 1 refused, 9 not sent" in str(err.value)
        assert "\n" not in str(err.value)
        assert len(server.log) == 3  # no retries of a fatal answer, nothing sent after it
        with TeacherStore() as store:
            (row,) = store.stats()
        assert (row["ok"], row["failed"]) == (2, 0)
        rerun = run_generate(cfg)  # the key works again: only the 10 missing are sent
        assert (rerun.n_calls, rerun.n_cached, rerun.n_written) == (10, 2, 12)


def test_unknown_model_stops_at_once_listing_the_endpoints_models(tmp_path):
    with FakeOpenAI() as server:
        cfg = _cfg(server, tmp_path, model="gpt-3.5-turbo-0125", limit=40,
                   teacher={"concurrency": 4})  # fmt: skip
        result = CliRunner().invoke(main, [
            "generate", "--recipe", "explain", "--input", cfg.input, "--output", cfg.output,
            "--teacher", "openai", "--base-url", server.base_url, "--model", "gpt-3.5-turbo-0125",
            "--limit", "40", "teacher.concurrency=4",
        ])  # fmt: skip
        assert result.exit_code == 1
        line = result.output.strip().splitlines()[-1]  # above it: the progress bar
        assert line.startswith("Error: teacher: ") and line in result.output
        assert "has no model 'gpt-3.5-turbo-0125'" in result.output
        assert "does not exist or you do not have access to it; it serves" in line
        assert "it serves: fake-model, gpt-4.1-mini, gpt-4o-mini, gpt-5-mini" in result.output
        assert len(server.log) <= 4  # the requests already in flight, no more


def test_cli_exits_non_zero_after_a_fatal_answer(tmp_path):
    with FakeOpenAI(api_key="sk-right") as server:
        result = CliRunner().invoke(main, [
            "generate", "--recipe", "explain", "--input", str(sample_path("nli", "dev")),
            "--output", str(tmp_path / "o.jsonl"), "--teacher", "openai", "--model",
            "gpt-4.1-mini", "--base-url", server.base_url, "--limit", "5",
            "teacher.api_key_env=MY_ENDPOINT_KEY",
        ], env={"MY_ENDPOINT_KEY": "sk-wrong-1234"})  # fmt: skip
        assert result.exit_code == 1 and "refused the API key ($MY_ENDPOINT_KEY)" in result.output
        assert "sk-*****1234" in result.output  # the API's own masked key


# -- item 12: keys go only where they belong ---------------------------------------------------
def test_openai_key_is_never_sent_to_another_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("MY_SERVER_KEY", "server-key")
    with FakeOpenAI() as server:
        run_generate(_cfg(server, tmp_path, limit=2))
        assert [e["auth"] for e in server.log] == [None, None]  # no Authorization header at all
        run_generate(_cfg(server, tmp_path, limit=3, teacher={"api_key_env": "MY_SERVER_KEY"}))
        assert server.log[-1]["auth"] == "Bearer server-key"
    with FakeOpenAI(api_key="sk-openai-secret") as server:  # the user names it explicitly
        result = run_generate(_cfg(server, tmp_path, teacher={"api_key_env": "OPENAI_API_KEY"}))
        assert result.n_written == 4 and server.log[-1]["auth"] == "Bearer sk-openai-secret"
    assert TeacherConfig(kind="openai").key_env == "OPENAI_API_KEY"
    azure = TeacherConfig(kind="openai", base_url="https://res.openai.azure.com/openai/v1/")
    assert azure.key_env == "AZURE_OPENAI_API_KEY"
    assert TeacherConfig(kind="openai", base_url="http://127.0.0.1:8000/v1").key_env is None


def test_a_named_key_variable_that_is_unset_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("MISSING_KEY", raising=False)
    with FakeOpenAI() as server:
        with pytest.raises(
            ConfigError, match=r"no API key for http://127.0.0.1:\d+/v1; set \$MISSING_KEY"
        ):
            run_generate(_cfg(server, tmp_path, teacher={"api_key_env": "MISSING_KEY"}))
        assert server.log == []


# -- item 4: cost ------------------------------------------------------------------------------
def test_budget_on_a_model_without_a_price_refuses_before_any_call(tmp_path):
    with FakeOpenAI(model="my-llama") as server:
        cfg = _cfg(server, tmp_path, model="my-llama", max_cost=1.0)
        with pytest.raises(ConfigError, match=r"no price known for model 'my-llama' .*"
                           r"teacher.prices.my-llama.input="):  # fmt: skip
            run_generate(cfg)
        assert server.log == []
        dry = run_generate(GenerateConfig(**{**cfg.__dict__, "dry_run": True}))
        assert dry.est_cost_usd is None and dry.n_requests == 4
        priced = _cfg(server, tmp_path, model="my-llama", max_cost=1.0,
                      teacher={"prices": {"my-llama": {"input": 0, "output": 0}}})  # fmt: skip
        assert run_generate(priced).n_written == 4


def test_cached_and_reasoning_tokens_are_billed_as_the_api_bills_them(tmp_path):
    long_system = "You are a careful annotator. " * 200  # ~5,800 characters: a cacheable prefix
    template = tmp_path / "t.j2"
    template.write_text("{% block system %}" + long_system + "{% endblock %}"
                        "{% block user %}{{ premise }}{% endblock %}")  # fmt: skip
    with FakeOpenAI() as server:
        cfg = _cfg(server, tmp_path, model="gpt-5-mini", recipe=str(template),
                   teacher={"concurrency": 1})  # fmt: skip
        run_generate(cfg)
    price = pricing(cfg.teacher)
    with TeacherStore() as store:
        rows = store.db.execute(
            "SELECT input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd "
            "FROM responses ORDER BY created_at"
        ).fetchall()
    assert rows[0][2] == 0 and all(r[2] > 0 for r in rows[1:])  # later prompts hit the cache
    for tin, tout, cached, reasoning, cost in rows:
        assert reasoning == 64 and tout > reasoning  # reasoning is inside completion_tokens
        expected = ((tin - cached) * 0.25 + cached * 0.025 + tout * 2.0) / 1e6  # gpt-5-mini
        assert cost == pytest.approx(expected) == price.cost(tin, tout, cached)


# -- the replica itself ------------------------------------------------------------------------
def test_replica_speaks_todays_api_through_the_sdk():
    import openai

    with FakeOpenAI(api_key="sk-test") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        for name in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens",
                     "x-ratelimit-reset-requests", "x-request-id", "openai-processing-ms"):  # fmt: skip
            assert raw.headers.get(name), name
        usage = raw.parse().usage
        assert usage.completion_tokens_details.reasoning_tokens == 0
        assert usage.prompt_tokens_details.cached_tokens == 0
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="o4-mini", messages=[], max_tokens=5)
        assert e.value.body == {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter",
        }  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="o4-mini", messages=[], temperature=0.2)
        assert e.value.code == "unsupported_value" and "Only the default (1)" in e.value.message
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=[])
        assert e.value.code == "model_not_found"
        assert "The model `gpt-3.5-turbo` does not exist" in e.value.message
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=server.base_url, api_key="sk-bad-key-9999").models.list()
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=server.base_url, api_key="sk-bad-key-9999",
                          max_retries=0).chat.completions.create(model="o4-mini", messages=[])  # fmt: skip
        assert e.value.code == "invalid_api_key"
        assert "gpt-5-mini" in [m.id for m in client.models.list()]
        server.faults.extend(["quota", "429:0", "500", "503"])
        for error, code in [(openai.RateLimitError, "insufficient_quota"),
                            (openai.RateLimitError, "rate_limit_exceeded"),
                            (openai.InternalServerError, None), (openai.InternalServerError, None)]:  # fmt: skip
            with pytest.raises(error) as e:
                client.chat.completions.create(model="gpt-4.1-mini", messages=[])
            assert e.value.code == code and e.value.body["message"]
