"""What the student reads and writes: inputs, target formats, and parsing of generated text.

A target is a list of segments, each tagged `label` or `rationale`, so the trainer can weight
the two spans of the split loss separately (Paper A) without re-parsing strings:

    label            Entailment
    label+rationale  Entailment | Explanation: the text says ...
    rationale+label  Explanation: the text says ... | Answer: Entailment
    multitask        predict: x -> Entailment      and      explain: x -> the text says ...

`parse_output` is the inverse used by evaluation and serving: a generated string becomes a
label from the closed set (or None: malformed, counted wrong) and a rationale.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from protege.errors import DataError, ProtegeError

Format = Literal["label", "label+rationale", "rationale+label", "multitask"]
FORMATS: tuple[str, ...] = ("label", "label+rationale", "rationale+label", "multitask")
PREDICT_PREFIX = "predict: "
EXPLAIN_PREFIX = "explain: "
TASK_FILE = "protege_task.json"


@dataclass
class TaskConfig:
    """What the student learns: which fields go in and which come out."""

    type: Literal["classification", "summarization"] = "classification"
    """`classification` (a closed label set, optional rationale) or `summarization` (text out)."""
    input_template: str = "Premise: {premise} Hypothesis: {hypothesis}"
    """Python format string over record fields; Paper A's NLI input by default."""
    label_field: str = "label"
    """Classification: the field holding the gold (or teacher) label."""
    labels: list[str] = field(default_factory=lambda: ["entailment", "neutral", "contradiction"])
    """Classification: the closed label set."""
    rationale_field: str = "rationale"
    """The field holding the teacher's rationale."""
    rationale_name: str = "Explanation"
    """Connector before the rationale: `Explanation` (EMANLI) or `Rationale` (SMANLI)."""
    target_field: str = "summary"
    """Summarization: the field holding the output text."""
    format: Format = "label"
    """Target format; see the module docstring."""
    missing_rationale: Literal["error", "skip"] = "error"
    """A row with no rationale where the format needs one: stop with an error, or skip it."""
    input_prefix: str | None = None
    """Text put before every input. None: the student's own task prefix, if its config
    declares one (t5-small: `summarize: ` for summarization); resolved at training and saved
    with the model, so eval, predict and serve prefix inputs alike."""

    def __post_init__(self) -> None:
        if self.type == "classification" and not self.labels:
            raise ValueError("labels: a classification task needs at least one label")
        if self.type == "summarization" and self.format != "label":
            raise ValueError("format: summarization supports only the 'label' format")

    @property
    def needs_rationale(self) -> bool:
        return self.format != "label"

    def input_fields(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.input_template)


@dataclass
class Example:
    """One training pair: `source` text and the target as tagged segments."""

    source: str
    segments: list[tuple[str, str]]
    """[(kind, text)]: kind `label`, `rationale` (the teacher's text: the only span that
    truncation may shorten) or `connector` (` Explanation:`, ` Answer:`; weighted with the
    rationale in the split loss, never cut)."""
    uid: str = ""

    @property
    def target(self) -> str:
        return "".join(text for _, text in self.segments)


@dataclass
class Parsed:
    """A generated string, read back: `label` is None when it does not parse (malformed)."""

    text: str
    label: str | None = None
    rationale: str | None = None


def display_label(label: str) -> str:
    """Paper A writes labels capitalised in targets: `Entailment`."""
    return label[:1].upper() + label[1:]


def model_task_prefix(model_config: Any, task_type: str) -> str:
    """The input prefix a model's config declares for this kind of task (T5's
    `task_specific_params.summarization.prefix`), or "" when it declares none."""
    params = getattr(model_config, "task_specific_params", None) or {}
    key = {"summarization": "summarization"}.get(task_type)
    return str((params.get(key) or {}).get("prefix") or "") if key else ""


def render_input(task: TaskConfig, record: dict[str, Any], source: str = "data") -> str:
    try:
        return (task.input_prefix or "") + task.input_template.format(**record)
    except KeyError as e:
        line = record.get("_line")
        raise DataError(
            source, "missing (needed by input_template)", line=line, field=e.args[0]
        ) from None


def make_examples(task: TaskConfig, record: dict[str, Any], source: str = "data") -> list[Example]:
    """Training pairs for one record (two for `multitask`, else one).

    Returns [] when the rationale is missing and `missing_rationale == "skip"`.
    """
    x = render_input(task, record, source)
    uid = str(record.get("uid", record.get("id", record.get("_line", ""))))
    line = record.get("_line")
    if task.type == "summarization":
        y = record.get(task.target_field)
        if not isinstance(y, str) or not y.strip():
            raise DataError(source, "missing or empty", line=line, field=task.target_field)
        return [Example(x, [("label", y.strip())], uid)]

    raw = record.get(task.label_field)
    label = normalise_label(str(raw) if raw is not None else "", task.labels)
    if label is None:
        raise DataError(
            source,
            f"unknown label {raw!r} (expected one of {', '.join(task.labels)})",
            line=line,
            field=task.label_field,
        )
    lab = display_label(label)
    if task.format == "label":
        return [Example(x, [("label", lab)], uid)]
    rationale = record.get(task.rationale_field)
    if not isinstance(rationale, str) or not rationale.strip():
        if task.missing_rationale == "skip":
            return []
        raise DataError(source, "missing or empty", line=line, field=task.rationale_field)
    rationale = " ".join(rationale.split())
    name = task.rationale_name
    if task.format == "label+rationale":
        segments = [("label", lab), ("connector", f" {name}:"), ("rationale", f" {rationale}")]
        return [Example(x, segments, uid)]
    if task.format == "rationale+label":
        segments = [
            ("connector", f"{name}:"),
            ("rationale", f" {rationale}"),
            ("connector", " Answer:"),
            ("label", f" {lab}"),
        ]
        return [Example(x, segments, uid)]
    return [  # multitask
        Example(PREDICT_PREFIX + x, [("label", lab)], uid),
        Example(EXPLAIN_PREFIX + x, [("rationale", rationale)], uid),
    ]


def inference_input(task: TaskConfig, record: dict[str, Any], source: str = "data") -> str:
    """The encoder input at prediction time (multitask students are asked with `predict:`)."""
    x = render_input(task, record, source)
    return PREDICT_PREFIX + x if task.format == "multitask" else x


def explain_input(task: TaskConfig, record: dict[str, Any], source: str = "data") -> str:
    """Multitask only: the input that asks the student for a rationale."""
    return EXPLAIN_PREFIX + render_input(task, record, source)


def normalise_label(text: str, labels: list[str]) -> str | None:
    """Map text to a label of the set, case- and punctuation-insensitively; None if none fits.

    Spacing around punctuation is ignored on both sides: an uncased WordPiece student writes
    `not_entailment` back as `not _ entailment`, which must still read as that label."""
    if text in labels:  # the common case, once per record when a job is planned
        return text
    t = _squeeze(text.strip().strip(".:;,!\"'").strip().lower())
    for label in labels:
        if t == _squeeze(label.lower()):
            return label
    return None


def _squeeze(text: str) -> str:
    """Drop whitespace next to punctuation (`_` included): `not _ entailment` -> `not_entailment`."""
    return re.sub(r"\s*([^\w\s]|_)\s*", r"\1", " ".join(text.split()))


def parse_output(task: TaskConfig, text: str) -> Parsed:
    """Read a generated string back into (label, rationale). Never guesses a label."""
    text = text.strip()
    if task.type == "summarization":
        return Parsed(text=text)
    name = re.escape(task.rationale_name)
    if task.format == "rationale+label":
        # The last `Answer:`; what follows it is the label (spaces around punctuation allowed).
        m = re.match(r"^(.*)\bAnswer\s*:(.*)$", text, flags=re.I | re.S)
        rationale = re.sub(rf"^\s*{name}\s*:\s*", "", m.group(1) if m else text, flags=re.I).strip()
        label = normalise_label(m.group(2), task.labels) if m else None
        return Parsed(text, label, rationale or None)
    # label, label+rationale, multitask(predict): the label comes first.
    m = re.match(rf"^(.*?)(?:\s*{name}\s*:\s*(.*))?$", text, flags=re.S | re.I)
    head, rest = (m.group(1), m.group(2)) if m else (text, None)
    label = normalise_label(head, task.labels)
    if label is None and task.format != "label+rationale":
        label = normalise_label(text, task.labels)
    return Parsed(text, label, rest.strip() if rest else None)


def save_task(task: TaskConfig, model_dir: str | Path) -> None:
    """Store the task next to a model so eval/predict/serve know how to talk to it."""
    from protege.config import to_dict
    from protege.data.io import write_json

    write_json(Path(model_dir) / TASK_FILE, to_dict(task))


def load_task(model_dir: str | Path) -> TaskConfig:
    from protege.config import from_dict

    path = Path(model_dir) / TASK_FILE
    if not path.exists():
        raise ProtegeError(f"{model_dir}: not a protege model directory (no {TASK_FILE})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtegeError(f"{path}: not valid JSON ({e}); restore it from the training run") from e
    if not isinstance(data, dict):
        raise ProtegeError(f"{path}: expected a JSON object; restore it from the training run")
    return from_dict(TaskConfig, data, str(path))


def recorded_decoding(model_dir: str | Path) -> dict[str, Any]:
    """The generation settings training recorded for a student (`max_new_tokens`, raised so
    generation reaches the label, `num_beams`, ...): `protege_meta.json`'s `decoding`, else
    what its `generation_config.json` states (an export carries only that); {} for neither.
    Dev selection decoded with these, so test, predict, serve and export checks do too."""
    model_dir = Path(model_dir)
    for name, pick in (("protege_meta.json", "decoding"), ("generation_config.json", None)):
        path = model_dir / name
        try:
            data = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ProtegeError(f"{path}: not valid JSON ({e}); restore it from the run") from e
        if not isinstance(data, dict):
            continue
        found = data.get(pick) if pick else data
        if isinstance(found, dict) and found.get("max_new_tokens"):
            return {k: v for k, v in found.items() if v is not None}
    return {}


CHARS_PER_TOKEN_MAX = 32
"""More characters than any tokenizer puts in one token: cutting an input at
`max_tokens * CHARS_PER_TOKEN_MAX` characters leaves what truncation to `max_tokens` keeps."""


def clip_sources(texts: list[str], max_tokens: int) -> list[str]:
    """Inputs cut before tokenizing, so a 50 MB row costs no more than a long one: the tokenizer
    truncates to `max_tokens` anyway, but only after tokenizing the whole text."""
    limit = max_tokens * CHARS_PER_TOKEN_MAX
    return [t[:limit] if len(t) > limit else t for t in texts]
