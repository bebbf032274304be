"""The seam between the executor and pricing: what a step really used and what it cost.

The executor asks a ``UsageMeter`` two things: ``preflight(agent)`` before the agent runs (strict
pricing refuses an unpriced model here, so nothing is spent), and ``measure(agent, output)`` after,
which turns whatever the agent returned into a ``MeasuredUsage``. ``PricingMeter`` is the real one:
explicit reports first, then token and image usage priced through the agent's model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol

from paymaster.exceptions import UsageReportError
from paymaster.money import ZERO, to_decimal, to_tokens
from paymaster.usage import extract_usage

if TYPE_CHECKING:
    from paymaster.config import PaymasterConfig
    from paymaster.pricing import CostCalculator

__all__ = [
    "CostSource",
    "MeasuredUsage",
    "PricingMeter",
    "UsageMeter",
    "agent_model",
    "default_meter",
    "explicit_usage",
]

CostSource = Literal["explicit", "configured", "library", "unknown", "none"]


# Not frozen: one is built per agent call, and a frozen dataclass's __init__ costs four times as
# much. Treat it as a value all the same (``dataclasses.replace`` makes changed copies).
@dataclass(kw_only=True, slots=True, eq=True)
class MeasuredUsage:
    """What one agent call used, as the executor records it (a value: never changed once built)."""

    cost_usd: Decimal | None
    """Exact cost in USD; ``None`` when it could not be determined (never a fake zero)."""
    input_tokens: int = 0
    """Prompt / input tokens, cached ones included."""
    output_tokens: int = 0
    """Completion / output tokens, reasoning ones included."""
    total_tokens: int = 0
    """Tokens counted against token limits."""
    cost_source: CostSource = "none"
    """``explicit`` (the output reported its cost), ``configured`` (paymaster.toml), ``library``
    (genai-prices default), ``unknown`` (usage seen but no price), ``none`` (no model call seen)."""
    provider: str | None = None
    """Provider of the model that was priced, when known."""
    model: str | None = None
    """Model name that was priced, when known."""
    cached_input_tokens: int = 0
    """Input tokens served from the provider's cache."""
    reasoning_tokens: int = 0
    """Output tokens spent on reasoning."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's cache."""
    images: int = 0
    """Images generated."""
    price_snapshot: str | None = None
    """For ``library`` costs: the genai-prices version and data the price came from."""
    detail: str | None = None
    """For ``unknown`` costs: why, in words to act on."""


NO_USAGE = MeasuredUsage(cost_usd=ZERO)


class UsageMeter(Protocol):
    """Prices agent calls for the executor."""

    def preflight(self, agent: object) -> None:
        """Raise ``PricingNotConfiguredError`` if this agent's model cannot be priced under strict mode."""
        ...

    def measure(self, agent: object, output: object) -> MeasuredUsage:
        """What the call that produced ``output`` used and cost."""
        ...


def explicit_usage(output: object) -> MeasuredUsage | None:
    """The seeds' ExplicitCostReporter protocol: an output carrying ``cost_usd`` and ``token_counts``.

    Returns ``None`` when the output does not report explicitly. Negative or non-numeric values are
    refused with ``UsageReportError``: a refund reported by an agent is never subtracted from spend.
    """
    cost = getattr(output, "cost_usd", None)
    tokens = getattr(output, "token_counts", None)
    if cost is None and tokens is None:
        return None
    try:
        cost_usd = None if cost is None else to_decimal(cost, what="cost_usd reported by the agent")
        total = 0 if tokens is None else to_tokens(tokens, what="token_counts reported by the agent")
    except ValueError as exc:
        raise UsageReportError(f"{exc} (from {type(output).__name__})") from None
    return MeasuredUsage(
        cost_usd=cost_usd,
        total_tokens=total,
        cost_source="explicit" if cost_usd is not None else "unknown",
    )


class ExplicitOnlyMeter:
    """Trusts explicit reports only; any other output counts as no model call."""

    def preflight(self, agent: object) -> None:
        return None

    def measure(self, agent: object, output: object) -> MeasuredUsage:
        return explicit_usage(output) or NO_USAGE


# pydantic-ai's stand-in models name no real provider.
_PSEUDO_SYSTEMS = frozenset({"function", "test"})


def agent_model(agent: object) -> tuple[str, str | None] | None:
    """The model an agent calls, as ``(model, provider or None)``, or ``None`` when it names none.

    Looks at ``model_id``, ``model`` and ``model_name``: a string (``"openai:gpt-4o"`` or a bare
    name), or a pydantic-ai ``Model`` object (its ``model_name`` and ``system``).
    """
    for attr in ("model_id", "model", "model_name"):
        value = getattr(agent, attr, None)
        if isinstance(value, str) and value:
            return value, None
        name = getattr(value, "model_name", None) if value is not None else None
        if isinstance(name, str) and name:
            system = getattr(value, "system", None)
            known = isinstance(system, str) and system not in _PSEUDO_SYSTEMS
            return name, system if known else None
    return None


class PricingMeter:
    """Measures and prices every agent call: explicit reports as given, token and image usage
    through ``CostCalculator`` (configured prices, then genai-prices, else unknown)."""

    def __init__(
        self, calculator: CostCalculator | None = None, *, config: PaymasterConfig | None = None
    ) -> None:
        from paymaster.pricing import CostCalculator

        self.calculator = calculator if calculator is not None else CostCalculator(config)
        self._checked: set[tuple[str, str | None]] = set()

    def preflight(self, agent: object) -> None:
        """Under strict pricing, refuse an agent whose model has no configured price before it runs."""
        if not self.calculator.strict:
            return
        found = agent_model(agent)
        if found is None or found in self._checked:
            return
        self.calculator.require_configured(found[0], found[1])
        self._checked.add(found)

    def measure(self, agent: object, output: object) -> MeasuredUsage:
        """What the call that produced ``output`` used and cost."""
        found = agent_model(agent)
        explicit = explicit_usage(output)
        if explicit is not None:
            if found is None:
                return explicit
            ref = self.calculator.resolve(*found)
            return replace(explicit, provider=ref.provider, model=ref.model)
        usage = extract_usage(output)
        if found is None and usage is not None and usage.model:
            found = (usage.model, usage.provider)
        if usage is None:
            if found is None:
                return NO_USAGE
            ref = self.calculator.resolve(*found)
            return MeasuredUsage(
                cost_usd=None,
                cost_source="unknown",
                provider=ref.provider,
                model=ref.model,
                detail=f"the output of {type(output).__name__} reports no usage",
            )
        counted = MeasuredUsage(
            cost_usd=None,
            cost_source="unknown",
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.tokens,
            cached_input_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            images=usage.image_count,
        )
        if found is None:
            return replace(
                counted, detail="the agent names no model: give it a model_id such as 'openai:gpt-4o'"
            )
        quote = self.calculator.price(usage, model=found[0], provider=found[1])
        return replace(
            counted,
            cost_usd=quote.cost_usd,
            cost_source=quote.source,
            provider=quote.provider,
            model=quote.model,
            price_snapshot=quote.snapshot,
            detail=quote.reason,
        )


_default: tuple[object, PricingMeter] | None = None
_default_lock = threading.Lock()


def default_meter() -> PricingMeter:
    """A ``PricingMeter`` on the configuration found by the usual search (``$PAYMASTER_CONFIG``,
    ``./paymaster.toml``, ``./flujo.toml``), loaded once and rebuilt after ``clear_config_cache()``."""
    global _default
    from paymaster.config import get_config

    config = get_config()
    with _default_lock:
        if _default is None or _default[0] is not config:
            _default = (config, PricingMeter(config=config))
        return _default[1]
