"""Pricing GenAI usage read from OTLP, with the SDK's own calculator and at span rate.

Every price comes from ``paymaster.pricing.CostCalculator`` (configured prices first, then
genai-prices, strict mode honoured), so a span costs here exactly what the SDK would charge for the
same call. Calling it per span would cost microseconds each, so a model's price is reduced once to
exact per-token rates, in femto-dollars (10^-15 USD), derived from the calculator's own quotes for
unit usages and cross-checked on mixed usages. A model whose price is not linear in its token counts
(tiers, a subclassed calculator, a price finer than a femto-dollar per token) is priced call by call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

from paymaster.exceptions import PaymasterError
from paymaster.pricing import CostCalculator, PriceSource
from paymaster.usage import ModelUsage, canonical_provider

__all__ = ["FEMTO", "ModelPrice", "SpanPricer", "femto_ceiling", "femto_to_micros", "semconv_provider"]

log = logging.getLogger("paymaster.sidecar.otlp")

FEMTO = 10**15
"""Femto-dollars per dollar: the unit of per-token rates."""
_MICRO_IN_FEMTO = 10**9
_M = 1_000_000

# ``gen_ai.provider.name`` / ``gen_ai.system`` values of the semantic conventions that name a provider
# differently from the pricing tables.
_SEMCONV_PROVIDERS = {
    "aws.bedrock": "aws",
    "az.ai.inference": "azure",
    "az.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "azure.ai.openai": "azure",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "gcp.vertex_ai": "google",
    "ibm.watsonx.ai": "ibm",
    "mistral_ai": "mistral",
    "x_ai": "xai",
}


def semconv_provider(name: str) -> str | None:
    """The pricing tables' name of a semantic-convention provider name; ``None`` for an empty one."""
    key = name.strip().lower()
    if not key:
        return None
    return _SEMCONV_PROVIDERS.get(key) or canonical_provider(key)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ModelPrice:
    """How one model's usage is priced. Compared and hashed by identity: one instance per model."""

    provider: str
    """Canonical provider ('' when unknown), as recorded in usage reports."""
    model: str
    """The model name, as recorded in usage reports."""
    source: PriceSource
    """``configured``, ``library`` or ``unknown`` (then nothing can be priced)."""
    rates: tuple[int, int, int, int, int] | None
    """Femto-dollars per input, output token, and the extra (often negative) per cache-read,
    cache-write and reasoning token; ``None``: not linear, price each call."""
    reason: str = ""
    """Why the price is unknown."""
    rate_input: int = field(init=False)
    """``rates[0]`` (0 when not linear), as a plain field for column-wise pricing."""
    rate_output: int = field(init=False)
    """``rates[1]`` (0 when not linear)."""

    def __post_init__(self) -> None:
        rates = self.rates or (0, 0)
        object.__setattr__(self, "rate_input", rates[0])
        object.__setattr__(self, "rate_output", rates[1])


class SpanPricer:
    """Model prices reduced to exact rates, cached per (provider, model)."""

    def __init__(self, calculator: CostCalculator) -> None:
        self.calculator = calculator
        self._models: dict[tuple[str, str], ModelPrice] = {}

    def model(self, provider: str, model: str) -> ModelPrice:
        """The price of ``model`` served by ``provider`` (a semantic-convention name or '')."""
        key = (provider, model)
        found = self._models.get(key)
        if found is None:
            found = self._models[key] = self._derive(semconv_provider(provider), model)
        return found

    def cost_femto(
        self, price: ModelPrice, tin: int, tout: int, cache_read: int, cache_write: int, reasoning: int
    ) -> int | None:
        """Exact cost in femto-dollars, ``None`` when unknown. The counts are inclusive (input includes
        cached tokens, output includes reasoning) and consistent."""
        rates = price.rates
        if rates is not None:
            cost = tin * rates[0] + tout * rates[1]
            if cache_read:
                cost += cache_read * rates[2]
            if cache_write:
                cost += cache_write * rates[3]
            if reasoning:
                cost += reasoning * rates[4]
            return cost
        if price.source == "unknown":
            return None
        usage = ModelUsage(
            input_tokens=tin,
            output_tokens=tout,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=reasoning,
        )
        quote = self._quote(usage, price.model, price.provider or None)
        if quote is None or quote[0] is None:
            return None
        return femto_ceiling(quote[0])

    # -- derivation ------------------------------------------------------------------------------
    def _quote(
        self, usage: ModelUsage, model: str, provider: str | None
    ) -> tuple[Decimal | None, PriceSource, str] | None:
        try:
            quote = self.calculator.price(usage, model=model, provider=provider)
        except PaymasterError as exc:  # strict mode: the model is not configured
            return None, "unknown", str(exc)
        return quote.cost_usd, quote.source, quote.reason or ""

    def _derive(self, provider: str | None, model: str) -> ModelPrice:
        ref = self.calculator.resolve(model, provider)
        shown = ref.provider or ""
        units = {
            "input": ModelUsage(input_tokens=_M),
            "output": ModelUsage(output_tokens=_M),
            "cache_read": ModelUsage(input_tokens=_M, cache_read_tokens=_M),
            "cache_write": ModelUsage(input_tokens=_M, cache_write_tokens=_M),
            "reasoning": ModelUsage(output_tokens=_M, reasoning_tokens=_M),
        }
        quotes = {name: self._quote(usage, model, provider) for name, usage in units.items()}
        first = quotes["input"]
        assert first is not None
        if all(q is not None and q[0] is None for q in quotes.values()):
            reason = first[2] or f"no price is known for {ref}"
            log.warning("OTLP spans of %s are not charged: %s", ref, reason)
            return ModelPrice(provider=shown, model=ref.model, source="unknown", rates=None, reason=reason)
        source = next(q[1] for q in quotes.values() if q is not None and q[0] is not None)
        rates = _linear_rates({k: (q[0] if q else None) for k, q in quotes.items()})
        price = ModelPrice(provider=shown, model=ref.model, source=source, rates=rates)
        if rates is not None and not self._linear_holds(price, model, provider):
            price = ModelPrice(provider=shown, model=ref.model, source=source, rates=None)
        return price

    def _linear_holds(self, price: ModelPrice, model: str, provider: str | None) -> bool:
        """The rates reproduce the calculator exactly on mixed usages (a tiered price would not)."""
        for scale in (1, 37):
            usage = ModelUsage(
                input_tokens=7 * _M * scale,
                output_tokens=3 * _M * scale,
                cache_read_tokens=2 * _M * scale,
                cache_write_tokens=_M * scale,
                reasoning_tokens=_M * scale,
            )
            quote = self._quote(usage, model, provider)
            expected = self.cost_femto(
                price, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                usage.cache_write_tokens, usage.reasoning_tokens,
            )  # fmt: skip
            if quote is None or quote[0] is None or expected is None:
                return False
            if quote[0] * FEMTO != expected:
                return False
        zero = self._quote(ModelUsage(), model, provider)
        return zero is not None and zero[0] == 0


def _linear_rates(costs: dict[str, Decimal | None]) -> tuple[int, int, int, int, int] | None:
    """Per-token femto-dollar rates from the costs of a million tokens of each kind; ``None`` when one
    is unknown or not a whole number of femto-dollars per token."""
    if any(cost is None for cost in costs.values()):
        return None
    per = {name: cost * FEMTO / _M for name, cost in costs.items() if cost is not None}
    rates = (
        per["input"],
        per["output"],
        per["cache_read"] - per["input"],
        per["cache_write"] - per["input"],
        per["reasoning"] - per["output"],
    )
    if any(rate != rate.to_integral_value() for rate in rates):
        return None
    return tuple(int(rate) for rate in rates)  # type: ignore[return-value]


def femto_ceiling(cost: Decimal) -> int:
    """An exact USD amount in whole femto-dollars, rounded up."""
    scaled = cost * FEMTO
    whole = int(scaled)
    return whole + 1 if scaled > whole else whole


def femto_to_micros(femto: int) -> int:
    """Whole micro-dollars, rounded up like every amount the ledger is charged."""
    return -(-femto // _MICRO_IN_FEMTO)
