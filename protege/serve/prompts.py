"""Reading the student's input back out of the chat request an application sends its teacher.

An application that calls the teacher sends the prompt a recipe's template renders (the
`label` recipe: "Classify the following input. Answer with exactly one of these labels: ...").
The student was trained on what went into that template (`{{ input }}`, or record fields such
as `{{ article }}`), so serving it in the teacher's place means inverting the template: each
block is rendered with a marker for every variable, the text between markers becomes a
literal, and each marker a capture group. A request that does not fit gets one line saying
what was expected.

Which template: the one a model trained through `protege run` recorded (`PROMPT_FILE`, the
recipe's teacher prompt for the task), `--prompt-template NAME_OR_PATH`, or for a model with
neither the task's own (`label` for classification, `summarize` for summarization). A task
trained on captured traffic (`protege traffic export` without a template: input `{input}`)
takes the user message itself (`raw`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.errors import ConfigError
from protege.formats import TaskConfig

PROMPT_FILE = "protege_prompt.json"
RAW = "raw"
_MARK = re.compile(r"\x00(\w+)\x00")


@dataclass
class PromptSpec:
    """The teacher prompt a student answers in the teacher's place."""

    recipe: str = RAW
    """A shipped recipe's name, a template's file name, or `raw` (the user message itself)."""
    template: str = ""
    """The Jinja source (recorded whole, so the model dir does not depend on the file)."""
    input_template: str = "{input}"
    """How a record became `{{ input }}` in the template."""
    labels: list[str] = field(default_factory=list)
    """The label set the template lists."""

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "template": self.template,
                "input_template": self.input_template, "labels": list(self.labels)}  # fmt: skip


def spec_from_generate(cfg: dict[str, Any]) -> PromptSpec:
    """The prompt of a `generate` job's config mapping (a recipe's teacher step)."""
    from protege.generate.recipes import get_recipe

    recipe = get_recipe(cfg.get("recipe", "label"))
    return PromptSpec(
        recipe=recipe.name,
        template=recipe.path.read_text(encoding="utf-8"),
        input_template=cfg.get("input_template") or "Premise: {premise} Hypothesis: {hypothesis}",
        labels=list(cfg.get("labels") or []),
    )


def save_prompt(spec: PromptSpec, model_dir: str | Path) -> None:
    from protege.data.io import write_json

    write_json(Path(model_dir) / PROMPT_FILE, spec.to_dict())


def resolve_spec(model_dir: str | Path, task: TaskConfig, name_or_path: str | None) -> PromptSpec:
    """`--prompt-template` (a recipe name, a `.j2` file or `raw`), else what the model dir
    recorded, else the task's own teacher prompt."""
    if name_or_path == RAW:
        return PromptSpec()
    if name_or_path:
        from protege.generate.recipes import get_recipe

        recipe = get_recipe(name_or_path)
        return PromptSpec(recipe.name, recipe.path.read_text(encoding="utf-8"),
                          task.input_template, list(task.labels))  # fmt: skip
    recorded = Path(model_dir) / PROMPT_FILE
    if recorded.exists():
        try:
            data = json.loads(recorded.read_text(encoding="utf-8"))
            return PromptSpec(**data)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{recorded}: not a prompt record ({e}); remove it or pass "
                              "--prompt-template") from e  # fmt: skip
    if task.input_template.strip() == "{input}":
        return PromptSpec()
    default = "label" if task.type == "classification" else "summarize"
    return resolve_spec(model_dir, task, default)


class PromptMismatch(ValueError):
    """The request's messages are not the prompt this student answers."""


@dataclass
class ReadPrompt:
    """What a request asks the student."""

    item: str | dict[str, Any]
    """The student's input: a rendered input string, or record fields."""
    with_rationale: bool = False
    """The prompt asks for a reason after the label (the `label` recipe's `with_rationale`)."""


class MessageReader:
    """Reads the student's input back from chat messages (see the module docstring)."""

    def __init__(self, spec: PromptSpec, task: TaskConfig):
        self.spec, self.task = spec, task
        self.variants: list[tuple[bool, dict[str, re.Pattern]]] = []
        if spec.recipe == RAW:
            return
        from protege.generate.recipes import Template

        template = Template.from_source(spec.template, spec.recipe)
        names = sorted(template.record_fields() | ({"input", "verb"} & template.variables))
        seen: set[tuple] = set()
        self.blocks: dict[str, str] = {}
        for with_rationale in (False, True):
            ctx: dict[str, Any] = {n: f"\x00{n}\x00" for n in names}
            ctx.update(labels=spec.labels or task.labels, with_rationale=with_rationale)
            try:
                blocks = {m["role"]: m["content"] for m in template.messages(ctx)}
            except Exception as e:  # noqa: BLE001  a template that cannot render markers
                raise ConfigError(
                    f"prompt template {spec.recipe}: cannot be read back ({e})"
                ) from e
            patterns = {role: _pattern(text) for role, text in blocks.items()}
            key = tuple(sorted((role, p.pattern) for role, p in patterns.items()))
            if key not in seen:
                seen.add(key)
                self.variants.append((with_rationale, patterns))
            self.blocks = self.blocks or {role: _shape(text) for role, text in blocks.items()}

    def expected(self) -> str:
        """One line: what a request must look like."""
        if self.spec.recipe == RAW:
            return "a user message holding the input text"
        shape = "; ".join(f"a {role} message like {text!r}" for role, text in self.blocks.items())
        return f"the `{self.spec.recipe}` prompt: {shape}"

    def read(self, messages: list[dict[str, Any]]) -> ReadPrompt:
        """The student's input, or PromptMismatch saying what was expected."""
        texts = _texts(messages)
        user = next((t for role, t in reversed(texts) if role == "user"), None)
        if user is None:
            raise PromptMismatch("messages: no user message")
        if self.spec.recipe == RAW:
            if not user.strip():
                raise PromptMismatch("messages: the user message is empty")
            return ReadPrompt(user)
        system = next((t for role, t in texts if role in ("system", "developer")), None)
        got = {"user": user, "system": system}
        for with_rationale, patterns in self.variants:
            found: dict[str, str] = {}
            for role, pattern in patterns.items():
                text = got.get(role)
                m = pattern.match(text.strip()) if text is not None else None
                if m is None or any(found.get(k, v) != v for k, v in m.groupdict().items()):
                    break
                found.update(m.groupdict())
            else:
                return ReadPrompt(self._item(found), with_rationale)
        raise PromptMismatch(f"messages: expected {self.expected()}")

    def _item(self, found: dict[str, str]) -> str | dict[str, Any]:
        if "input" in found:
            return found["input"]
        missing = [f for f in self.task.input_fields() if f not in found]
        if missing:
            raise PromptMismatch(
                f"the `{self.spec.recipe}` prompt has no {missing[0]!r}, which this student's "
                f"input ({self.task.input_template!r}) needs"
            )
        return found


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of each message; content parts other than text are refused."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise PromptMismatch(
                        f"messages[{i}].content: a {kind!r} part; this student reads text only"
                    )
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        out.append((str(m.get("role")), content if isinstance(content, str) else ""))
    return out


def _pattern(text: str) -> re.Pattern:
    """A block rendered with markers -> a regex that captures each variable (once; a repeat
    must be the same text)."""
    out, seen = [], set()
    for i, piece in enumerate(_MARK.split(text.strip())):
        if i % 2 == 0:
            out.append(re.escape(piece))
        elif piece in seen:
            out.append(f"(?P={piece})")
        else:
            seen.add(piece)
            out.append(f"(?P<{piece}>.*?)")
    return re.compile("".join(out) + r"\Z", re.S)


def _shape(text: str) -> str:
    shape = _MARK.sub(lambda m: "{" + m.group(1) + "}", text.strip())
    return shape if len(shape) <= 160 else shape[:157] + "..."
