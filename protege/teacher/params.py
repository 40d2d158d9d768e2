"""Which request parameters an endpoint takes, and learning them from its 400s.

The store key is made of canonical parameters (`max_tokens`, `temperature`, `seed`: see
`TeacherConfig.params`); what goes on the wire is derived from them here:

- OpenAI's own API (api.openai.com, Azure OpenAI) takes `max_completion_tokens` (every current
  chat model accepts it; reasoning models reject `max_tokens`); other endpoints (vLLM,
  llama.cpp, Ollama) keep `max_tokens`.
- Known reasoning models (o-series, gpt-5 and later) accept only the default temperature, so a
  non-default one is not sent.
- A model protege has never heard of teaches it: a 400 whose body says `unsupported_parameter`
  or `unsupported_value` for a parameter it sent becomes a rule (rename or drop), the request is
  retried once with it, and the rule is kept in the store per endpoint and model, so later
  runs send the right thing from the first request.

Rules are `{param: action}` with action `rename:<new name>`, `drop`, or `json_object` (for
`response_format`: llama-cpp-python's server takes a schema as `{type: json_object, schema}`
rather than OpenAI's `{type: json_schema, json_schema: {schema}}`).
"""

from __future__ import annotations

import re
from typing import Any

REASONING_MODELS = re.compile(r"^(o\d|gpt-5|gpt-6)")
"""OpenAI reasoning model families: only the default temperature (1) is accepted."""

_USE_INSTEAD = re.compile(r"[Uu]se '([a-z_]+)' instead")


def default_rules(
    model: str, openai_api: bool, schema_style: str = "json_schema"
) -> dict[str, str]:
    """What protege knows before any answer: parameter names and values per endpoint and model."""
    if not openai_api:
        return {"response_format": "json_object"} if schema_style == "json_object" else {}
    rules = {"max_tokens": "rename:max_completion_tokens"}
    if REASONING_MODELS.match(model):
        rules["temperature"] = "drop"
    return rules


def wire_params(canonical: dict[str, Any], rules: dict[str, str]) -> dict[str, Any]:
    """The parameters to send: canonical ones with the rules applied."""
    out: dict[str, Any] = {}
    for name, value in canonical.items():
        action = rules.get(name, "keep")
        if action == "drop":
            continue
        if action == "json_object" and isinstance(value, dict) and "json_schema" in value:
            value = {"type": "json_object", "schema": value["json_schema"].get("schema", {})}
        if action.startswith("rename:"):
            name = action.split(":", 1)[1]
        out[name] = value
    return out


def rule_from_error(error: dict[str, Any], rules: dict[str, str]) -> tuple[str, str] | None:
    """A (canonical param, action) fix from a 400 error object, or None if it is not about a
    parameter protege sent.

    `unsupported_parameter` for `max_tokens` naming a replacement ("Use 'max_completion_tokens'
    instead") renames it; any other unsupported parameter or value is dropped (the endpoint's
    default applies).
    """
    code, param = error.get("code"), error.get("param")
    if code not in ("unsupported_parameter", "unsupported_value") or not param:
        return None
    canonical = {v.split(":", 1)[1]: k for k, v in rules.items() if v.startswith("rename:")}
    name = canonical.get(param, param)
    if code == "unsupported_parameter":
        m = _USE_INSTEAD.search(error.get("message") or "")
        if m and m.group(1) != param:
            return name, f"rename:{m.group(1)}"
    return name, "drop"


class ParamRules:
    """The rules in force for one endpoint and model: defaults, then what the store learned."""

    def __init__(self, endpoint: str, model: str, openai_api: bool, learned: dict[str, str],
                 schema_style: str = "json_schema"):  # fmt: skip
        self.endpoint, self.model = endpoint, model
        self.rules = {**default_rules(model, openai_api, schema_style), **learned}

    @classmethod
    def for_config(cls, cfg, learned: dict[str, str]) -> ParamRules:
        """The rules for a teacher config (`TeacherConfig`) and what the store learned."""
        return cls(cfg.endpoint_url, cfg.model_name, cfg.is_openai, learned, cfg.schema_style)

    def apply(self, canonical: dict[str, Any]) -> dict[str, Any]:
        return wire_params(canonical, self.rules)

    def learn(self, error: dict[str, Any]) -> tuple[str, str] | None:
        """Add the fix a 400 error object asks for; None if it asks for none (or one known)."""
        fix = rule_from_error(error, self.rules)
        if fix is None or self.rules.get(fix[0]) == fix[1]:
            return None
        self.rules[fix[0]] = fix[1]
        return fix
