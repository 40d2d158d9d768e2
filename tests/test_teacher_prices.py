"""Prices: genai-prices' table, the user's overrides, and usage billed the way the API bills it
(cached input at the cached rate, reasoning tokens inside completion_tokens as output)."""

from __future__ import annotations

import pytest

from protege.errors import ConfigError
from protege.teacher.config import TeacherConfig
from protege.teacher.prices import pricing, usage_counts


def test_genai_prices_for_a_current_openai_model_by_hand():
    p = pricing(TeacherConfig(kind="openai", model="gpt-4.1-mini"))
    assert p.source == "genai-prices"
    assert (p.input, p.output, p.cached_input) == (0.4, 1.6, 0.1)
    # 2,000 prompt tokens of which 1,024 cached, 300 completion tokens:
    # 976 * 0.40/1M + 1024 * 0.10/1M + 300 * 1.60/1M = 0.0003904 + 0.0001024 + 0.00048
    assert p.cost(2000, 300, cached_tokens=1024) == pytest.approx(0.0009728)


def test_reasoning_tokens_are_output_and_cached_tokens_part_of_the_prompt():
    usage = {
        "prompt_tokens": 1200, "completion_tokens": 164, "total_tokens": 1364,
        "prompt_tokens_details": {"cached_tokens": 1152, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
    }  # fmt: skip
    assert usage_counts(usage) == (1200, 164, 1152, 64)
    p = pricing(TeacherConfig(kind="openai", model="gpt-5-mini"))  # $0.25 / $0.025 / $2
    # 48 * 0.25 + 1152 * 0.025 + 164 * 2 (the 64 reasoning tokens are inside the 164) per 1M
    assert p.cost(1200, 164, 1152) == pytest.approx((48 * 0.25 + 1152 * 0.025 + 164 * 2) / 1e6)


def test_config_prices_override_and_unknown_models_have_none():
    cfg = TeacherConfig(
        kind="openai", model="gpt-4.1-mini", prices={"gpt-4.1-mini": {"input": 1, "output": 2}}
    )
    p = pricing(cfg)
    assert p.source == "config" and p.cost(1_000_000, 500_000) == pytest.approx(2.0)
    assert p.cost(1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(1.0)  # no cached rate
    local = TeacherConfig(kind="openai", model="llama-3", base_url="http://127.0.0.1:8000/v1")
    assert pricing(local) is None
    assert pricing(TeacherConfig(kind="local")).cost(10**6, 10**6) == 0.0
    assert pricing(TeacherConfig(kind="replay", model="gpt-3.5-turbo-0125")).source == "free"
    with pytest.raises(ConfigError, match="teacher.prices.m: give input and output"):
        pricing(TeacherConfig(kind="openai", model="m", prices={"m": {"in": 1}}))
