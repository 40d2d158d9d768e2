"""What a teacher call costs, billed the way the API bills it.

Prices come from `genai-prices` (pydantic's maintained table of provider prices) unless the
user's config names the model (`teacher.prices.<model>.input/output/cached_input`, dollars per
1M tokens). The table is looked up for the endpoint's provider (by URL), then as an OpenAI model
(an OpenAI model name behind a proxy is billed by OpenAI). Usage is counted as OpenAI reports it: `prompt_tokens` includes
`prompt_tokens_details.cached_tokens` (billed at the cached rate), and `completion_tokens`
includes `completion_tokens_details.reasoning_tokens` (billed as output). A local or replay
teacher costs nothing; an `openai`-kind model found in neither table has no price (`None`), and
a job with a budget refuses to start on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protege.errors import ConfigError
from protege.teacher.config import TeacherConfig

FREE_KINDS = ("local", "replay")
BATCH_SHARE = 0.5
"""A Batch API answer costs this share of the online price where the table has no batch price
of its own (OpenAI: "50% cost discount"); genai-prices' batch prices are used where listed."""


@dataclass(frozen=True)
class Pricing:
    """A model's price list: `cost(input, cached, output)` in dollars, for one call."""

    model: str
    source: str  # "config", "genai-prices", "free"
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    _lookup: Any = None  # genai-prices' calculation, which knows tiers and cache rates

    def cost(
        self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, batch: bool = False
    ) -> float:
        """Dollars for one call; `batch`: answered through the Batch API."""
        if self.source == "free":
            return 0.0
        cached_tokens = min(cached_tokens, input_tokens)
        if self._lookup is not None:
            return self._lookup(input_tokens, output_tokens, cached_tokens, batch)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        uncached = input_tokens - cached_tokens
        online = (
            uncached * self.input + cached_tokens * cached_rate + output_tokens * self.output
        ) / 1e6
        return online * BATCH_SHARE if batch else online


def _from_config(model: str, entry: dict[str, float]) -> Pricing:
    unknown = set(entry) - {"input", "output", "cached_input"}
    if unknown or not {"input", "output"} <= set(entry):
        raise ConfigError(
            f"teacher.prices.{model}: give input and output (and optionally cached_input), "
            f"dollars per 1M tokens (got {sorted(entry)})"
        )
    return Pricing(model, "config", float(entry["input"]), float(entry["output"]),
                   None if entry.get("cached_input") is None else float(entry["cached_input"]))  # fmt: skip


def _from_genai_prices(model: str, cfg: TeacherConfig) -> Pricing | None:
    from genai_prices import Usage, calc_price

    million = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    # The provider the URL belongs to (OpenAI, Azure, Groq ...); else OpenAI's price for an
    # OpenAI model name served elsewhere (a proxy such as LiteLLM forwarding to OpenAI).
    probe, where = None, {}
    for where in ({"provider_api_url": cfg.endpoint_url}, {"provider_id": "openai"}):
        try:
            probe = calc_price(million, model, **where)
            break
        except LookupError:
            continue
    if probe is None:
        return None
    batch_probe = calc_price(million, model, **where, price_context={"processing": "batch"})
    batch_listed = batch_probe.total_price != probe.total_price

    def lookup(input_tokens: int, output_tokens: int, cached_tokens: int, batch: bool) -> float:
        usage = Usage(
            input_tokens=input_tokens, cache_read_tokens=cached_tokens, output_tokens=output_tokens
        )
        context = {"processing": "batch"} if batch and batch_listed else None
        price = float(calc_price(usage, model, **where, price_context=context).total_price)
        return price * BATCH_SHARE if batch and not batch_listed else price

    price = probe.model_price
    return Pricing(model, "genai-prices", float(probe.input_price), float(probe.output_price),
                   _rate(getattr(price, "cache_read_mtok", None)), lookup)  # fmt: skip


def _rate(value: Any) -> float | None:
    if value is None:
        return None
    return float(getattr(value, "base", value))


def pricing(cfg: TeacherConfig) -> Pricing | None:
    """The price list for `cfg`'s model: config first, then genai-prices; None if unknown."""
    model = cfg.model_name
    if cfg.kind in FREE_KINDS:
        return Pricing(model, "free")
    if model in cfg.prices:
        return _from_config(model, cfg.prices[model])
    return _from_genai_prices(model, cfg)


def unknown_price(cfg: TeacherConfig) -> ConfigError:
    """The one line that says a budget cannot be kept, and how to set the price."""
    m = cfg.model_name
    return ConfigError(
        f"teacher: no price known for model {m!r} at {cfg.endpoint_url}, so a budget "
        f"(--max-cost) cannot be kept; set it in dollars per 1M tokens, e.g. "
        f"`teacher.prices.{m}.input=0.4 teacher.prices.{m}.output=1.6` (0 for a free server)"
    )


def usage_counts(usage: dict[str, Any]) -> tuple[int | None, int | None, int, int]:
    """(prompt, completion, cached, reasoning) tokens from an answer's `usage` block."""
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), cached, reasoning
