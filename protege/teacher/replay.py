"""The replay teacher: answers only from the store (live answers or `protege teacher import`),
and stops on a prompt it has no answer for, before anything is written."""

from __future__ import annotations

from protege.errors import ProtegeError


def replay_miss(model: str, n_missing: int, n_prompts: int, where: str) -> ProtegeError:
    """The one-line error for prompts the replay teacher cannot answer."""
    return ProtegeError(
        f"replay teacher: no recorded answer from {model} for {n_missing} of {n_prompts} "
        f"prompts (first: {where}); record them with `protege teacher import` (same model and "
        "parameters) or use a live teacher"
    )
