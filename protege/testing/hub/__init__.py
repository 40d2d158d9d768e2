"""A Hugging Face Hub replica for the tests: `build(root)` writes its repositories (seconds),
`HubReplica(root, RENAMES).start()` serves them on 127.0.0.1; point `HF_ENDPOINT` at
`.endpoint`. By hand: `python -m protege.testing.hub [--root DIR] [--port N]`."""

from __future__ import annotations

from pathlib import Path

from protege.testing.hub.server import HubReplica

# The hub's redirects for renamed repositories (legacy names without a namespace).
RENAMES = {
    "models/t5-small": "models/google-t5/t5-small",
    "models/bart-base": "models/facebook/bart-base",
    "datasets/anli": "datasets/facebook/anli",
    "datasets/cnn_dailymail": "datasets/abisee/cnn_dailymail",
}


def build(root: str | Path) -> Path:
    """Write every repository of the replica under `root` (models and datasets)."""
    from protege.testing.hub.datasets import build_anli, build_cnn_dailymail
    from protege.testing.hub.models import build_bart, build_t5

    root = Path(root)
    build_anli(root)
    build_cnn_dailymail(root)
    build_t5(root)
    build_t5(root, "protege-test/t5-small-spiece-only", tokenizer_json=False)
    build_bart(root)
    return root


__all__ = ["RENAMES", "HubReplica", "build"]
