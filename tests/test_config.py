from dataclasses import dataclass, field

import pytest

from protege.config import apply_overrides, fingerprint, from_dict, load_config, to_dict
from protege.errors import ConfigError
from protege.formats import TaskConfig


@dataclass
class Inner:
    lr: float = 1e-3
    splits: list[list[float]] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 1
    inner: Inner = field(default_factory=Inner)
    task: TaskConfig = field(default_factory=TaskConfig)
    limit: int | None = None


def test_nested_and_coercion():
    cfg = from_dict(Outer, {"inner": {"lr": "6e-4", "splits": [[0.25, 0.75]]}, "epochs": 3})
    assert cfg.inner.lr == pytest.approx(6e-4) and cfg.inner.splits == [[0.25, 0.75]]
    assert cfg.epochs == 3 and cfg.limit is None
    assert to_dict(cfg)["inner"]["lr"] == pytest.approx(6e-4)


def test_unknown_field_and_bad_type_are_named():
    with pytest.raises(ConfigError, match=r"inner\.lrr: unknown field"):
        from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"epochs: expected int"):
        from_dict(Outer, {"epochs": "three"})
    with pytest.raises(ConfigError, match=r"task\.format: 'both' is not one of"):
        from_dict(Outer, {"task": {"format": "both"}})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, path, ["inner.lr=2.4e-3", "epochs=5", "task.labels=['yes', 'no']"])
    assert cfg.inner.lr == pytest.approx(2.4e-3) and cfg.epochs == 5
    assert cfg.task.labels == ["yes", "no"]
    with pytest.raises(
        ConfigError, match=r"task.labels\[0\]: expected a string, got True .*quote it"
    ):
        load_config(Outer, path, ["task.labels=[yes, no]"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
