"""API keys kept in a JSON file readable only by its owner (mode 600), as a fallback to env vars."""

from __future__ import annotations

import json
import os

from protege.errors import ConfigError
from protege.paths import keys_path


def load_keys() -> dict[str, str]:
    path = keys_path()
    if not path.exists():
        return {}
    try:
        keys = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg})") from e
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ConfigError(f'{path}: expected a JSON object of names to keys, {{"NAME": "key"}}')
    return keys


def set_key(name: str, value: str) -> None:
    """Store one key; the file is created with mode 600 before any secret is written to it."""
    path = keys_path()
    keys = load_keys()
    keys[name] = value
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def get_key(env_var: str) -> str | None:
    """The key from `env_var`, else the keys file entry of that name."""
    return os.environ.get(env_var) or load_keys().get(env_var)
