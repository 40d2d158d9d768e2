"""Structured answers: the JSON schema a recipe asks for, and checking an answer against it.

A recipe that declares a schema sends it as `response_format: {type: json_schema, json_schema:
{name, strict: true, schema}}` (part of the store key); a server that enforces it (OpenAI's
structured outputs, llama.cpp's grammar) can only answer a valid object. The `label` recipe's
schema makes the label an enum of the label set. A user's template declares one in a sidecar
file next to it: `my_template.j2` + `my_template.schema.json`. An answer that is not valid JSON
or breaks its schema is flagged with the reason, never guessed at.

`validate` covers the part of JSON Schema that structured outputs use: type, enum, const,
properties, required, additionalProperties: false, items, minLength/maxLength,
minimum/maximum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protege.errors import ConfigError

_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


def label_schema(labels: list[str], with_rationale: bool) -> dict[str, Any]:
    """{"label": one of `labels`} (and a "rationale" string first, when asked for one)."""
    props: dict[str, Any] = {}
    if with_rationale:
        props["rationale"] = {"type": "string"}
    props["label"] = {"type": "string", "enum": list(labels)}
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}  # fmt: skip


def response_format(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """OpenAI's structured-output request parameter for `schema`."""
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def sidecar_schema(template: Path) -> dict[str, Any] | None:
    """A user template's output schema (`<name>.schema.json` next to it), or None."""
    path = template.with_name(template.name.split(".")[0] + ".schema.json")
    if not path.exists():
        return None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ConfigError(f"{path}: the output schema must be a JSON object schema (type object)")
    return schema


def validate(value: Any, schema: dict[str, Any], where: str = "answer") -> str | None:
    """The first way `value` breaks `schema`, as one line; None if it fits."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds and not any(_is(value, k) for k in kinds):
        return f"{where} is {type(value).__name__}, not {' or '.join(kinds)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} {value!r} is not one of {', '.join(map(str, schema['enum']))}"
    if "const" in schema and value != schema["const"]:
        return f"{where} is not {schema['const']!r}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{where} is shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where} is longer than {schema['maxLength']} characters"
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where} is below {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where} is above {schema['maximum']}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                return f"{where} has no {name!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{where} has an unexpected {extra[0]!r}"
        for name, sub in props.items():
            if name in value and (problem := validate(value[name], sub, f"{where}.{name}")):
                return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            if problem := validate(item, schema["items"], f"{where}[{i}]"):
                return problem
    return None


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, object))


def parse_json(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the object, None) when `text` is JSON that fits `schema`; (None, why) otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, f"answer is not JSON: {text.strip()[:60]!r}"
    problem = validate(value, schema)
    return (None, problem) if problem else (value, None)


def schema_of_params(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a stored request's `response_format` asked for (OpenAI's json_schema,
    or llama-cpp-python's json_object with a schema), or None."""
    fmt = params.get("response_format") or {}
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    return fmt.get("schema") if fmt.get("type") == "json_object" else None
