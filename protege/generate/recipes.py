"""Augmentation recipes: a Jinja prompt template shipped as a file, plus a parser.

A template has a `user` block and optionally a `system` block; the text between the tags is
the message, byte for byte (Paper A's prompts are verbatim). Templates see the record's
fields, `input` (the record rendered with `input_template`), `labels`, `verb` (the gold label's
verb, for `explain`) and `with_rationale`. A user's own template (a path) works the same way;
its answer is kept as text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from protege.errors import ConfigError
from protege.formats import normalise_label
from protege.generate.schema import label_schema, parse_json, sidecar_schema

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
CONTEXT_VARS = {"input", "labels", "verb", "with_rationale"}


@dataclass
class Parsed:
    """What a recipe reads out of one answer: fields to add, and a flag if it did not parse."""

    fields: dict[str, Any]
    flagged: str | None = None


def parse_text(
    text: str, output_field: str, labels: list[str], schema: dict[str, Any] | None = None
) -> Parsed:
    """Free text (a rationale, an article, a summary): kept whole; an empty answer is flagged.
    With an output schema: the answer must be a JSON object that fits it, whose properties
    become fields; one that does not is flagged with why."""
    if schema is not None:
        value, problem = parse_json(text, schema)
        if value is None:
            return Parsed({output_field: None}, problem)
        return Parsed(dict(value))
    text = text.strip()
    return Parsed({output_field: text}, None if text else "empty answer")


def parse_label(
    text: str, output_field: str, labels: list[str], schema: dict[str, Any] | None = None
) -> Parsed:
    """A JSON answer (structured) must fit the schema: its "label" is the label. A text answer's
    first line must be exactly a label of the set (case and punctuation aside); rest = reason."""
    if schema is not None and text.lstrip().startswith("{"):
        value, problem = parse_json(text, schema)
        if value is None:
            return Parsed({output_field: None}, problem)
        fields: dict[str, Any] = {output_field: value["label"]}
        if value.get("rationale"):
            fields[f"{output_field}_rationale"] = value["rationale"]
        return Parsed(fields)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    for prefix in ("label:", "answer:"):
        if first.lower().startswith(prefix):
            first = first[len(prefix) :].strip()
    label = normalise_label(first.strip("*_` "), labels)
    fields: dict[str, Any] = {output_field: label}
    if len(lines) > 1:
        fields[f"{output_field}_rationale"] = " ".join(lines[1:])
    if label is None:
        return Parsed(fields, f"answer {first[:60]!r} is not one of {', '.join(labels)}")
    return Parsed(fields)


@dataclass(frozen=True)
class Recipe:
    """A prompt template and how to read its answers."""

    name: str
    path: Path
    output_field: str
    parse: Callable[..., Parsed] = parse_text
    needs_label: bool = False
    """The gold label conditions the prompt (`explain`): records must carry a known label."""
    schema: Callable[[list[str], bool], dict[str, Any] | None] = lambda labels, reason: None
    """The JSON schema its answers are asked to fit (labels, with_rationale), or None."""
    confidence: bool = False
    """Its answers are labels whose confidence is worth recording (logprobs, self-consistency)."""


RECIPES: dict[str, Recipe] = {
    "5w": Recipe("5w", TEMPLATE_DIR / "5w.j2", "rationale"),
    "explain": Recipe("explain", TEMPLATE_DIR / "explain.j2", "rationale", needs_label=True),
    "label": Recipe(
        "label",
        TEMPLATE_DIR / "label.j2",
        "label",
        parse=parse_label,
        schema=label_schema,
        confidence=True,
    ),  # fmt: skip
    "reverse": Recipe("reverse", TEMPLATE_DIR / "reverse.j2", "article"),
    "summarize": Recipe("summarize", TEMPLATE_DIR / "summarize.j2", "summary"),
}


def get_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or a user's template file (answers kept as text)."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    if path.suffix and path.exists():
        schema = sidecar_schema(path)
        return Recipe(path.stem, path, "teacher_output", schema=lambda labels, reason: schema)
    raise ConfigError(
        f"recipe: {name_or_path!r} is neither a recipe ({', '.join(RECIPES)}) nor a template file"
    )


class Template:
    """A loaded template: renders records to chat messages."""

    def __init__(self, path: Path, source: str | None = None):
        source = path.read_text(encoding="utf-8") if source is None else source
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            self.template = env.from_string(source)
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"{path}:{e.lineno}: template error: {e.message}") from e
        if "user" not in self.template.blocks:
            raise ConfigError(f"{path}: a template needs a {{% block user %}}...{{% endblock %}}")
        self.hash = hashlib.sha256(source.encode()).hexdigest()[:16]
        self.variables = jinja2.meta.find_undeclared_variables(ast)
        self.path = path

    @classmethod
    def from_source(cls, source: str, name: str) -> Template:
        """A template from its text (one a model directory recorded)."""
        return cls(Path(name), source)

    def record_fields(self) -> set[str]:
        """Record fields the template reads directly."""
        return self.variables - CONTEXT_VARS

    def messages(self, context: dict[str, Any]) -> list[dict[str, str]]:
        ctx = self.template.new_context(context)
        out = []
        for role in ("system", "user"):
            block = self.template.blocks.get(role)
            if block is not None:
                out.append({"role": role, "content": "".join(block(ctx))})
        return out
