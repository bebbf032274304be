"""What a model call cost: configured prices first, then the genai-prices library, else unknown.

``CostCalculator`` holds the policy (strict mode, the library fallback, the one-time warning when a
library default is used) and ``price_usage`` is the same policy as a plain function, for callers
that have no agent objects (the sidecar pricing OTLP spans). A cost nobody can determine is
``None`` with source ``unknown`` and a reason, never a zero and never a crash; only strict mode
refuses, with ``PricingNotConfiguredError``.

genai-prices is imported on first use only: ``import paymaster`` never pays for its data tables.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from types import ModuleType
from typing import Any, Literal

from paymaster._metering import PricingMeter, default_meter
from paymaster.config import CostConfig, ModelPricing, PaymasterConfig, get_config
from paymaster.exceptions import PricingNotConfiguredError, UsageReportError
from paymaster.money import ZERO, to_decimal
from paymaster.usage import ModelRef, ModelUsage, parse_model_ref

__all__ = [
    "CostCalculator",
    "PriceQuote",
    "PriceSource",
    "PricingMeter",
    "default_calculator",
    "default_meter",
    "library_snapshot",
    "price_usage",
]

log = logging.getLogger("paymaster.pricing")

PriceSource = Literal["configured", "library", "unknown"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceQuote:
    """The price of one call and where it came from."""

    cost_usd: Decimal | None
    """Exact cost in USD; ``None`` when it could not be determined."""
    source: PriceSource
    """``configured`` (paymaster.toml), ``library`` (genai-prices default) or ``unknown``."""
    provider: str | None
    """Canonical provider that was priced, when known."""
    model: str
    """Model name that was priced."""
    snapshot: str | None = None
    """For library prices: the genai-prices version and data the price came from."""
    reason: str | None = None
    """Why the cost is unknown, in words to act on."""


# The detailed usage of the call being priced, visible to ``CostCalculator.calculate`` while a
# subclass's override runs: the seeds' subclassing example overrides ``calculate(model, prompt,
# completion, provider)``, and its ``super().calculate(...)`` must still price cached tokens and
# images, which that signature cannot carry.
_DETAIL: contextvars.ContextVar[ModelUsage | None] = contextvars.ContextVar("paymaster_usage", default=None)


class CostCalculator:
    """Prices model calls from ``paymaster.toml``, falling back to genai-prices unless strict.

    Subclass and override ``calculate`` to adjust prices (a volume discount, a negotiated rate);
    inject the subclass with ``PricingMeter(calculator=...)``. Every call the meter prices goes
    through ``calculate``, so the override applies to cached, reasoning and image usage too.
    """

    def __init__(
        self, config: PaymasterConfig | CostConfig | None = None, *, use_library: bool = True
    ) -> None:
        if config is None:
            config = get_config()
        if isinstance(config, PaymasterConfig):
            self.cost, self.file = config.cost, config.display_name
        else:
            self.cost, self.file = config, "paymaster.toml"
        self.use_library = use_library
        self._refs: dict[tuple[str, str | None], ModelRef] = {}
        self._found: dict[ModelRef, tuple[ModelRef, ModelPricing] | None] = {}
        self._overridden = type(self).calculate is not CostCalculator.calculate

    @property
    def strict(self) -> bool:
        """True when every model must be priced in the configuration."""
        return self.cost.strict

    def preload(self) -> None:
        """Load the pricing library now if this calculator may use it (not strict, library on).

        ``import paymaster`` leaves genai-prices unloaded, so the first call priced from the library
        pays for loading it (about a third of a second on a small machine). A long-running process
        calls this at start-up instead; the sidecar's OTLP receiver does.
        """
        if self.use_library and not self.strict:
            _library()

    # ------------------------------------------------------------------ public API
    def calculate(
        self, model_name: str, prompt_tokens: int, completion_tokens: int, provider: str | None = None
    ) -> Decimal | None:
        """Cost of a call with these prompt and completion tokens, ``None`` when unknown.

        Raises ``PricingNotConfiguredError`` under strict mode when the model has no configured price.
        """
        usage = _DETAIL.get()
        if usage is None or (usage.input_tokens, usage.output_tokens) != (prompt_tokens, completion_tokens):
            usage = ModelUsage(input_tokens=prompt_tokens, output_tokens=completion_tokens)
        return self._quote(self.resolve(model_name, provider), usage).cost_usd

    def price(self, usage: ModelUsage, *, model: str, provider: str | None = None) -> PriceQuote:
        """The full quote of one call: cost, source, the library snapshot, and why when unknown."""
        ref = self.resolve(model, provider)
        quote = self._quote(ref, usage)
        if not self._overridden:
            return quote
        token = _DETAIL.set(usage)
        try:
            # The override sees the model and provider apart, as the seeds' signature has them.
            cost = self.calculate(ref.model, usage.input_tokens, usage.output_tokens, ref.provider)
        finally:
            _DETAIL.reset(token)
        if cost is None:
            return replace(
                quote, cost_usd=None, source="unknown", reason=quote.reason or "calculate() returned None"
            )
        try:
            cost = to_decimal(cost, what=f"{type(self).__name__}.calculate({ref.model!r}, ...)")
        except ValueError as exc:
            raise UsageReportError(
                f"{exc}; return a Decimal >= 0, or None when the cost is unknown"
            ) from None
        # A subclass that prices a model nobody else can has, in effect, configured it.
        return replace(
            quote, cost_usd=cost, source="configured" if quote.source == "unknown" else quote.source
        )

    def require_configured(self, model: str, provider: str | None = None) -> None:
        """Under strict mode, raise ``PricingNotConfiguredError`` unless the model has a configured price."""
        if self.strict and self._configured(self.resolve(model, provider)) is None:
            raise self._not_configured(self.resolve(model, provider))

    def resolve(self, model: str, provider: str | None = None) -> ModelRef:
        """``"provider:model"`` or a bare name (provider inferred where unambiguous), canonical."""
        key = (model, provider)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = parse_model_ref(model, provider=provider)
        return ref

    def configured_pricing(self, model: str, provider: str | None = None) -> ModelPricing | None:
        """The configured prices of a model, if any."""
        found = self._configured(self.resolve(model, provider))
        return None if found is None else found[1]

    # ---------------------------------------------------------------- the policy
    def _configured(self, ref: ModelRef) -> tuple[ModelRef, ModelPricing] | None:
        if ref not in self._found:
            self._found[ref] = self.cost.pricing_for(ref)
        return self._found[ref]

    def _quote(self, ref: ModelRef, usage: ModelUsage) -> PriceQuote:
        found = self._configured(ref)
        if found is not None:
            return self._configured_quote(found[0], found[1], usage)
        if self.strict:
            raise self._not_configured(ref)
        if ref.provider is None:
            reason = f"the provider of {ref.model!r} cannot be inferred; name it as 'provider:{ref.model}'"
            return _unknown(ref, reason)
        if not self.use_library:
            return _unknown(ref, f"no price is configured for {ref} in {self.file}")
        return _library_quote(ref, usage, self.file)

    def _configured_quote(self, ref: ModelRef, prices: ModelPricing, usage: ModelUsage) -> PriceQuote:
        cost, missing = configured_cost(prices, usage)
        if missing is None:
            return PriceQuote(cost_usd=cost, source="configured", provider=ref.provider, model=ref.model)
        table = f'[cost.providers.{ref.provider}."{ref.model}"]'
        if self.strict:
            raise PricingNotConfiguredError(
                f"Strict pricing is enabled, but {table} in {self.file} has no {missing}.",
                provider=ref.provider,
                model=ref.model,
            )
        return _unknown(ref, f"{table} in {self.file} has no {missing}")

    def _not_configured(self, ref: ModelRef) -> PricingNotConfiguredError:
        return PricingNotConfiguredError(
            f"Strict pricing is enabled, but no configuration was found for provider={ref.provider!r}, "
            f"model={ref.model!r} in {self.file}.",
            provider=ref.provider,
            model=ref.model,
        )


def configured_cost(prices: ModelPricing, usage: ModelUsage) -> tuple[Decimal, str | None]:
    """Exact cost under configured prices, or the name of the first price the usage needs but the
    table lacks. Cached and reasoning tokens without their own price are billed at the plain rate."""
    total = ZERO
    plain_in, plain_out = usage.input_tokens, usage.output_tokens
    for count, rate in (
        (usage.cache_read_tokens, prices.cache_read_tokens_per_1k),
        (usage.cache_write_tokens, prices.cache_write_tokens_per_1k),
    ):
        if count and rate is not None:
            total += _per_1k(count, rate)
            plain_in -= count
    if usage.reasoning_tokens and prices.reasoning_tokens_per_1k is not None:
        total += _per_1k(usage.reasoning_tokens, prices.reasoning_tokens_per_1k)
        plain_out -= usage.reasoning_tokens
    for count, rate, key in (
        (plain_in, prices.prompt_tokens_per_1k, "prompt_tokens_per_1k"),
        (plain_out, prices.completion_tokens_per_1k, "completion_tokens_per_1k"),
    ):
        if count:
            if rate is None:
                return ZERO, key
            total += _per_1k(count, rate)
    # An image model priced only by tokens (gpt-image-1) bills its images through those tokens.
    token_billed = not prices.has_image_prices and (usage.input_tokens or usage.output_tokens)
    for image in () if token_billed else usage.images:
        each = prices.image_prices.get(image.price_key, prices.price_per_image)
        if each is None:
            return ZERO, image.price_key
        total += each * image.count
    return _tidy(total), None


def _per_1k(tokens: int, rate: Decimal) -> Decimal:
    return (Decimal(tokens) * rate).scaleb(-3)


def _tidy(value: Decimal) -> Decimal:
    """Drop trailing zeros (``0.012500`` -> ``0.0125``) without exponent notation for whole amounts."""
    normal = value.normalize()
    return normal if normal.as_tuple().exponent <= 0 else value.quantize(Decimal(1))  # type: ignore[operator]


def _unknown(ref: ModelRef, reason: str) -> PriceQuote:
    return PriceQuote(cost_usd=None, source="unknown", provider=ref.provider, model=ref.model, reason=reason)


# ------------------------------------------------------------------------------ genai-prices
_genai: ModuleType | None = None
_warned: set[tuple[str | None, str]] = set()
_warn_lock = threading.Lock()


def _library() -> ModuleType:
    global _genai
    if _genai is None:
        import genai_prices

        _genai = genai_prices
    return _genai


def library_snapshot(updated: datetime | None = None) -> str:
    """``genai-prices 0.2.3 (bundled data)``, or the time of the data ``UpdatePrices`` fetched."""
    version = getattr(_library(), "__version__", "unknown")
    data = f"data updated {updated.isoformat(timespec='seconds')}" if updated else "bundled data"
    return f"genai-prices {version} ({data})"


def _library_quote(ref: ModelRef, usage: ModelUsage, file: str) -> PriceQuote:
    if usage.images and not (usage.input_tokens or usage.output_tokens):
        return _unknown(ref, f"genai-prices has no per-image prices; configure {usage.images[0].price_key}")
    gp = _library()
    linear = _linear_price(gp, ref)
    if linear is not None:
        cost, found = linear.cost(usage), linear
    else:
        try:
            calc = gp.calc_price(_library_usage(gp, usage), ref.model, provider_id=ref.provider)
        except (LookupError, ValueError) as exc:
            return _unknown(ref, f"no price is configured in {file} and genai-prices cannot price it: {exc}")
        cost = Decimal(calc.total_price)
        found = _Linear(
            rates=(ZERO,) * 4,
            snapshot=library_snapshot(calc.auto_update_timestamp),
            model_id=calc.model.id,
            described=str(calc.model_price),
        )
    _warn_once(ref, found, file)
    return PriceQuote(
        cost_usd=cost, source="library", provider=ref.provider, model=ref.model, snapshot=found.snapshot
    )


def _library_usage(gp: ModuleType, usage: ModelUsage) -> Any:
    return gp.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class _Linear:
    """A library price that is linear in the token counts, as per-token rates."""

    rates: tuple[Decimal, Decimal, Decimal, Decimal]
    """USD per plain input, output, cache-read and cache-write token."""
    snapshot: str
    """The genai-prices version and data."""
    model_id: str
    """The library's id of the model matched."""
    described: str
    """The library's description of the prices, for the warning."""

    def cost(self, usage: ModelUsage) -> Decimal:
        plain = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        counts = (plain, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
        return sum((rate * count for rate, count in zip(self.rates, counts, strict=True)), ZERO)


_M = 1_000_000
_linear: dict[tuple[int, ModelRef], _Linear | None] = {}


def _linear_price(gp: ModuleType, ref: ModelRef) -> _Linear | None:
    """The library's price of ``ref`` as per-token rates, when it is linear in the four token counts
    (one unconditional price set, no tiers): genai-prices' general calculation costs a few hundred
    microseconds a call, too slow for a span-pricing pipeline, and a linear price needs none of it.
    The rates come from ``calc_price`` itself on unit usages and are cross-checked on a mixed usage,
    so this computes exactly what the library would. Cached per data snapshot."""
    snapshot = gp.data_snapshot.get_snapshot()
    key = (id(snapshot), ref)
    if key in _linear:
        return _linear[key]
    found: _Linear | None = None
    try:
        _, info = snapshot.find_provider_model(ref.model, None, ref.provider, None)
        prices = info.prices
        flat = isinstance(prices, gp.types.ModelPrice) and not any(
            isinstance(v, gp.types.TieredPrices) for v in vars(prices).values()
        )
        if flat:

            def cost(usage: ModelUsage) -> Decimal:
                calc = gp.calc_price(_library_usage(gp, usage), ref.model, provider_id=ref.provider)
                return Decimal(calc.total_price)

            rates = (
                cost(ModelUsage(input_tokens=_M)) / _M,
                cost(ModelUsage(output_tokens=_M)) / _M,
                cost(ModelUsage(input_tokens=_M, cache_read_tokens=_M)) / _M,
                cost(ModelUsage(input_tokens=_M, cache_write_tokens=_M)) / _M,
            )
            updated = snapshot.timestamp if snapshot.from_auto_update else None
            candidate = _Linear(
                rates=rates, snapshot=library_snapshot(updated), model_id=info.id, described=str(prices)
            )
            probe = ModelUsage(
                input_tokens=7 * _M, output_tokens=3 * _M, cache_read_tokens=2 * _M, cache_write_tokens=_M
            )
            if cost(ModelUsage()) == 0 and cost(probe) == candidate.cost(probe):
                found = candidate
    except (LookupError, ValueError):
        found = None  # the general calculation reports why
    _linear[key] = found
    return found


def _warn_once(ref: ModelRef, found: _Linear, file: str) -> None:
    key = (ref.provider, ref.model)
    if key in _warned:
        return
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "No price configured for %s; using the default from %s (model %r: %s). Prices change: configure "
        '[cost.providers.%s."%s"] in %s to pin them.',
        ref,
        found.snapshot,
        found.model_id,
        found.described,
        ref.provider,
        ref.model,
        file,
    )


# ------------------------------------------------------------------------------- pure function
_default: tuple[PaymasterConfig, CostCalculator] | None = None


def price_usage(
    provider: str | None,
    model: str,
    usage: ModelUsage,
    *,
    calculator: CostCalculator | None = None,
) -> PriceQuote:
    """Price one call's usage by provider and model name, without any agent object.

    Uses ``calculator`` or one built on the configuration found by the usual search (cached).
    Under strict mode an unconfigured model raises ``PricingNotConfiguredError``.
    """
    return (calculator or default_calculator()).price(usage, model=model, provider=provider)


def default_calculator() -> CostCalculator:
    """A ``CostCalculator`` on ``get_config()``, rebuilt when that configuration is reloaded."""
    global _default
    config = get_config()
    current = _default
    if current is None or current[0] is not config:
        current = _default = (config, CostCalculator(config))
    return current[1]
