"""How often two predictors agree: a student and its export (`protege export --check`)."""

from __future__ import annotations

from typing import Any


def match_rate(
    reference, other, inputs: list[dict[str, Any] | str], fast: bool = True
) -> dict[str, Any]:
    """How often two predictors (PyTorch vs its export) give the same label on `inputs`."""
    a = reference.predict(inputs, fast=fast)
    b = other.predict(inputs, fast=fast)
    same = sum(
        x.get("label") == y.get("label") and x.get("text") == y.get("text")
        for x, y in zip(a, b, strict=True)
    )
    return {"n": len(inputs), "matches": same, "match_rate": same / len(inputs) if inputs else None}
