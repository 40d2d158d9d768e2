"""Token estimates and the budget that `--max-cost` enforces (prices: `prices.py`).

The budget reserves each call's worst case before the call is sent (every prompt byte a token,
plus `max_tokens` of answer) and settles to the real usage when the answer arrives, so spend can
never pass the limit even with many calls in flight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MESSAGE_OVERHEAD = 4  # tokens the chat format adds per message (role, separators)
REPLY_OVERHEAD = 3


def prompt_bytes(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].encode()) for m in messages)


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """A typical BPE count (~4 characters a token), for `--dry-run` estimates."""
    chars = sum(len(m["content"]) for m in messages)
    return math.ceil(chars / 4) + MESSAGE_OVERHEAD * len(messages) + REPLY_OVERHEAD


def worst_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """An upper bound: a byte-level BPE never makes more tokens than bytes."""
    return prompt_bytes(messages) + MESSAGE_OVERHEAD * len(messages) + REPLY_OVERHEAD


@dataclass
class Budget:
    """Spend so far plus reservations for calls in flight, never above `limit`."""

    limit: float | None
    spent: float = 0.0
    reserved: float = 0.0
    cap: Any = None
    """The store's spending cap (`spend.StoreCap`): asked for room beyond what it granted."""

    def reserve(self, worst: float) -> bool:
        """Reserve `worst` dollars for one call; False if that could pass the limit or cap."""
        needed = self.spent + self.reserved + worst
        if self.limit is not None and needed > self.limit + 1e-12:
            return False
        if self.cap is not None and not self.cap.allow(needed, self.reserved + worst):
            return False
        self.reserved += worst
        return True

    def settle(self, worst: float, actual: float) -> None:
        """The call finished: release its reservation and book what it really cost."""
        self.reserved -= worst
        self.spent += actual
