"""Students of every kind behind one interface (`students.base.Student`); `REGISTRY` names the
kinds, one package each.

`load_student(name, task, kind)` resolves a hub name, a local dir or a `protege:` name, decides
the kind (an explicit `kind`, else the model's config: `is_encoder_decoder` -> seq2seq, an
`...ForSequenceClassification` architecture -> classifier, `...ForCausalLM` -> causal) and
loads it with that kind's module. Nothing else in protege needs to know which kind it holds.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Literal

from protege.errors import ConfigError
from protege.formats import TaskConfig
from protege.students.base import Student, StudentOptions

Kind = Literal["auto", "seq2seq", "causal", "classifier", "classical"]
REGISTRY: dict[str, str] = {
    "seq2seq": "protege.students.seq2seq:Seq2SeqStudent",
    "causal": "protege.students.causal:CausalStudent",
    "classifier": "protege.students.classifier:ClassifierStudent",
    "classical": "protege.students.classical:ClassicalStudent",
}
"""kind -> its class ("module:Class"), imported only when that kind is used."""
KINDS = tuple(REGISTRY)


def kind_class(kind: str) -> type[Student]:
    """The class of a student kind, by name."""
    if kind not in REGISTRY:
        raise ConfigError(f"student kind {kind!r}: expected one of {', '.join(KINDS)} or auto")
    module, name = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def student_class(name: str | Path, kind: str = "auto") -> type[Student]:
    """The class of the student `name` is (an explicit `kind`, else what it says it is)."""
    return kind_class(detect_kind(name, kind)[1])


def resolve(name: str | Path) -> tuple[str, str | None]:
    """(path or hub name for from_pretrained, the kind a `protege:` name implies or None)."""
    from protege.students.builtins import BUILTINS

    name = str(name)
    if name in BUILTINS:
        kind, build = BUILTINS[name]
        return str(build()), kind
    if name.startswith("protege:"):
        return name, "seq2seq"  # seq2seq.build makes it (with its seed) when loading
    return name, None


def kind_from_config(config: dict) -> str | None:
    """The kind a model's config.json says it is, or None when it does not say."""
    if config.get("protege_kind") in REGISTRY:  # a kind without a transformers config
        return config["protege_kind"]
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    for arch in config.get("architectures") or []:
        if arch.endswith("ForSequenceClassification"):
            return "classifier"
        if arch.endswith(("ForConditionalGeneration", "EncoderDecoderModel")):
            return "seq2seq"
        if arch.endswith("ForCausalLM"):
            return "causal"
    return None


def fits_itself(name: str | Path, kind: str = "auto") -> bool:
    """Whether `name` is a student of a self-fitting kind (no epochs, no learning rate), as far
    as is known without building, downloading or loading anything: an explicit kind, a
    built-in name, or a local dir's config."""
    from protege.students.builtins import BUILTINS

    if kind == "auto" and str(name) in BUILTINS:
        kind = BUILTINS[str(name)][0]
    elif kind == "auto":
        local = Path(name) / "config.json"
        config = json.loads(local.read_text()) if local.is_file() else {}
        kind = kind_from_config(config) or "seq2seq"
    return kind_class(kind).fits_itself


def read_config(path: str) -> dict | None:
    """config.json of a local dir, or of a hub model already in the cache (None if neither)."""
    local = Path(path) / "config.json"
    if local.exists():
        return json.loads(local.read_text())
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path).to_dict()
    except (OSError, ValueError):
        return None


def detect_kind(name: str | Path, kind: str = "auto") -> tuple[str, str]:
    """(resolved path, kind) for a model name and an optional explicit kind."""
    path, implied = resolve(name)
    if kind != "auto":
        kind_class(kind)  # validates the name
        return path, kind
    if implied:
        return path, implied
    config = read_config(path)
    if config is None:
        return path, "seq2seq"  # today's default; its loader says clearly what is missing
    found = kind_from_config(config)
    if found is None:
        archs = ", ".join(config.get("architectures") or []) or "none"
        raise ConfigError(
            f"{name}: cannot tell the student kind from its config (architectures: {archs}); "
            f"set student.kind to one of {', '.join(KINDS)}"
        )
    return path, found


def load_student(
    name: str | Path,
    task: TaskConfig | None = None,
    kind: str = "auto",
    options: StudentOptions | None = None,
    seed: int | None = None,
) -> Student:
    """A `Student` of the right kind for `name`, checked against `task`; `seed`: what a
    `protege:` seq2seq student's random parameters are drawn from."""
    path, kind = detect_kind(name, kind)
    cls = kind_class(kind)
    if task is not None:
        cls.check_task(task)
    return cls.load(path, task, options or StudentOptions(), seed)


def export_info(model_dir: str | Path) -> dict | None:
    """What an export dir's marker file records (its quantization among it), or None where the
    dir is not an export."""
    for kind in KINDS:
        for marker in kind_class(kind).runtimes():
            if (Path(model_dir) / marker).exists():
                return json.loads((Path(model_dir) / marker).read_text())
    return None


def open_runtime(model_dir: str | Path, task: TaskConfig, device: str = "cpu", threads=None):
    """What `serve.predictor.Predictor` runs a model dir with: an export's runtime where the
    dir is one (each kind names the marker files of its exports), else the saved student's
    own backend (its kind read from its config)."""
    model_dir = Path(model_dir)
    for kind in KINDS:
        for marker, opener in kind_class(kind).runtimes().items():
            if (model_dir / marker).exists():
                return opener(model_dir, device=device, threads=threads)
    _, kind = detect_kind(model_dir)
    return kind_class(kind).backend(model_dir, task, device=device, threads=threads)


def export_student(
    model_dir: str | Path, fmt: str | None = None, output=None, quantization: str = "int8"
) -> Path:
    """Export a saved student in its kind's format (`ct2` for seq2seq and causal students,
    `onnx` for classifiers and classical students); `fmt=None` picks the kind's first."""
    _, kind = detect_kind(model_dir)
    exporters = kind_class(kind).exporters()
    fmt = fmt or next(iter(exporters))
    if fmt not in exporters:
        raise ConfigError(
            f"{model_dir}: a {kind} student exports to {', '.join(exporters)}, not {fmt!r}"
        )
    return exporters[fmt](model_dir, output, quantization)


__all__ = [
    "KINDS",
    "Student",
    "StudentOptions",
    "detect_kind",
    "export_info",
    "fits_itself",
    "export_student",
    "load_student",
    "kind_class",
    "open_runtime",
    "student_class",
]
