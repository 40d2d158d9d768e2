"""Typed configs: one dataclass per stage, loaded from YAML with `a.b=value` overrides.

A recipe YAML is just those configs written down. Unknown fields and wrong types are errors
that name the field; the resolved config is what gets saved next to every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from protege.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a plain dict, recursing into nested dataclasses."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where + '.' if where else ''}{unknown[0]}: unknown field "
            f"(known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, bool):
        raise ConfigError(
            f"{where}: expected a string, got {value!r} (YAML reads yes/no/on/off as booleans: quote it)"
        )
    if tp is str and isinstance(value, int | float):
        return str(value)
    if tp in (int, str, bool, float) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def require_positive(name: str, value: float | None, zero_ok: bool = False) -> None:
    """Raise ValueError (turned into a ConfigError naming the field) unless `value` is None or
    a finite number > 0 (>= 0 with `zero_ok`): so `lr=nan` or `epochs=-1` stop before any work."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(
            f"{name}: must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}"
        )


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (YAML/JSON-safe)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; `value` is parsed as YAML (so `1e-3`, `[1, 2]`, `true`)."""
    data = json.loads(json.dumps(data or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse {raw!r}: {e}") from e
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, key, ".".join(parts[:i]))]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {key}: {part} is not a mapping or a list")
        if isinstance(node, list):
            node[_list_index(node, parts[-1], key, ".".join(parts[:-1]))] = value
        else:
            node[parts[-1]] = value
    return data


def _list_index(items: list, part: str, key: str, where: str) -> int:
    """A list item named in an override: by position (`variants.0`) or by its `name`
    (`generate.explain-train`)."""
    if part.lstrip("-").isdigit() and -len(items) <= int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and str(item.get("name")) == part:
            return i
    names = [str(x["name"]) for x in items if isinstance(x, dict) and "name" in x]
    known = f"0..{len(items) - 1}" + (f" or {', '.join(names)}" if names else "")
    raise ConfigError(f"override {key}: {where} has no item {part!r} (use {known})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Load `cls` from a YAML file (or defaults) and apply command-line overrides."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, list(overrides)))


def save_config(cfg: Any, path: str | Path) -> None:
    from protege.data.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def fingerprint(*parts: Any) -> str:
    """A stable short hash of plain data (configs, file hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
