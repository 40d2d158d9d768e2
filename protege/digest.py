"""What identifies a model directory's contents, cheaply: configs and tokenizer files hashed
whole, each weight file by its name, size and a hash of its first and last MiB.

A checkpoint retrained or swapped in changes its weights' bytes at both ends (a safetensors
file starts with its header, then the first tensors' data), even where the size and the
modification time stay the same; touching or copying a file changes neither. Hashing every
byte of a multi-gigabyte student would cost more than the work it guards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EDGE = 1 << 20
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".ckpt")


def file_digest(path: Path, whole: bool = False) -> str:
    """sha256 of the file, or of its size, first and last MiB (`whole=False`, for weights)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if whole or size <= 2 * EDGE:
            for block in iter(lambda: f.read(EDGE), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """One hex digest for every file directly in `model_dir` (sub-directories are not part
    of a loadable model: checkpoints' own `last/` and the like)."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        if path.is_file():
            h.update(path.name.encode() + b"\0")
            h.update(file_digest(path, whole=path.suffix not in WEIGHTS).encode())
    return h.hexdigest()[:16]
