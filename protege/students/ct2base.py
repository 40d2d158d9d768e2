"""What the CTranslate2 runtimes of the generative kinds share: the library (a clear error when
it is missing), the quantizations it takes, and a model dir's `model_type`."""

from __future__ import annotations

import json
from pathlib import Path

from protege.errors import ProtegeError

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int16", "float16", "bfloat16", "float32")


def _ct2():
    try:
        import ctranslate2
    except ImportError as e:
        raise ProtegeError(
            "CTranslate2 export needs ctranslate2: pip install 'protege[ct2]'"
        ) from e
    return ctranslate2


def model_type(model_dir: str | Path) -> str:
    config = Path(model_dir) / "config.json"
    if not config.exists():
        raise ProtegeError(f"{model_dir}: not a model directory (no config.json)")
    return str(json.loads(config.read_text()).get("model_type", "unknown"))
