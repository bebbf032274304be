"""OpenTelemetry spans and counters for governed runs, on the application's own providers.

Paymaster never installs a provider. It uses the global ``TracerProvider``/``MeterProvider`` or the
ones passed to ``Runner``; with none configured every call is a no-op. A run whose root span is not
recording skips span work for all its steps, so an untraced run pays almost nothing.

Spans: ``paymaster.run``, one per step (``invoke_agent <step>``, ``paymaster.loop <name>``,
``paymaster.parallel <name>``), with the children ``cost.estimator.selected``,
``quota.reserve.attempt``, ``quota.reserve.denied`` and ``quota.reconcile`` under each agent step.
Metric instruments are listed in ``INSTRUMENTS``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from opentelemetry import metrics, trace

from paymaster._estimate import UsageEstimate
from paymaster._metering import MeasuredUsage

__all__ = ["INSTRUMENTS", "Telemetry", "variance_bucket"]

SCOPE: Final = "paymaster"

# name -> (unit, description); Prometheus names after a Collector: dots become underscores,
# counters gain ``_total``, and ``{annotation}`` units add no suffix.
INSTRUMENTS: Final[dict[str, tuple[str, str]]] = {
    "estimator.usage": ("{selection}", "Estimator selections, by strategy."),
    "quota.denials.total": ("{denial}", "Steps denied before their agent ran, by reason code."),
    "estimation.variance.count": (
        "{step}",
        "Estimate-vs-actual deltas, by type (cost in US cents, tokens) and bucket (0, <=1, <=10, <=100, >100).",
    ),
    "paymaster.cost_usd": ("{USD}", "USD spent by agent steps, by step, provider, model and cost source."),
    "paymaster.tokens": ("{token}", "Tokens used by agent steps, by step, model and direction."),
    "paymaster.unpriced_calls": ("{call}", "Agent calls whose cost could not be determined, by model."),
    "paymaster.steps": ("{step}", "Agent steps finished, by outcome (ok, failed, denied, cancelled, halted)."),
}

_BUCKETS: Final = ((0, "0"), (1, "<=1"), (10, "<=10"), (100, "<=100"))
_CENT: Final = Decimal(100)


def variance_bucket(delta: Decimal | int) -> str:
    """The ``estimation.variance.count`` bucket of an absolute delta."""
    delta = abs(delta)
    for bound, label in _BUCKETS:
        if delta <= bound:
            return label
    return ">100"


class Telemetry:
    """Tracer and instruments of one pair of providers; shared by every runner that uses them."""

    __slots__ = ("_instruments", "tracer")

    _cache: dict[tuple[Any, Any], Telemetry] = {}

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from paymaster import __version__

        tp = tracer_provider or trace.get_tracer_provider()
        mp = meter_provider or metrics.get_meter_provider()
        self.tracer = tp.get_tracer(SCOPE, __version__)
        meter = mp.get_meter(SCOPE, __version__)
        self._instruments = {
            name: meter.create_counter(name, unit=unit, description=desc)
            for name, (unit, desc) in INSTRUMENTS.items()
        }

    @classmethod
    def for_providers(cls, tracer_provider: Any = None, meter_provider: Any = None) -> Telemetry:
        """One ``Telemetry`` per provider pair: instruments are created once, not per runner."""
        key = (tracer_provider, meter_provider)
        found = cls._cache.get(key)
        if found is None:
            found = cls._cache[key] = cls(tracer_provider, meter_provider)
        return found

    # ----------------------------------------------------------------- counters
    def count(self, name: str, value: float, attributes: dict[str, str]) -> None:
        """Add ``value`` to the counter ``name`` (one of ``INSTRUMENTS``)."""
        self._instruments[name].add(value, attributes)

    def record_estimate(self, strategy: str) -> None:
        """Count which estimator strategy a step used."""
        self._instruments["estimator.usage"].add(1, {"strategy": strategy})

    def record_denial(self, code: str) -> None:
        """Count a step denied before it ran."""
        self._instruments["quota.denials.total"].add(1, {"code": code})

    def record_usage(self, step: str, estimate: UsageEstimate, usage: MeasuredUsage) -> None:
        """Count spend, tokens and the estimate's variance of one finished agent call."""
        inst = self._instruments
        model = usage.model or "unknown"
        provider = usage.provider or "unknown"
        if usage.cost_usd is not None:
            if usage.cost_usd:
                inst["paymaster.cost_usd"].add(
                    float(usage.cost_usd),
                    {"step": step, "provider": provider, "model": model, "cost_source": usage.cost_source},
                )
            cents = (usage.cost_usd - estimate.cost_usd) * _CENT
            inst["estimation.variance.count"].add(1, {"type": "cost", "bucket": variance_bucket(cents)})
        elif usage.cost_source == "unknown":
            inst["paymaster.unpriced_calls"].add(1, {"step": step, "model": model})
        if usage.total_tokens:
            if usage.input_tokens or usage.output_tokens:
                inst["paymaster.tokens"].add(usage.input_tokens, {"step": step, "model": model, "type": "input"})
                inst["paymaster.tokens"].add(usage.output_tokens, {"step": step, "model": model, "type": "output"})
            else:
                inst["paymaster.tokens"].add(usage.total_tokens, {"step": step, "model": model, "type": "total"})
        tokens_delta = usage.total_tokens - estimate.tokens
        inst["estimation.variance.count"].add(1, {"type": "tokens", "bucket": variance_bucket(tokens_delta)})

    def record_outcome(self, outcome: str) -> None:
        """Count an agent step's outcome."""
        self._instruments["paymaster.steps"].add(1, {"outcome": outcome})


def usage_attributes(usage: MeasuredUsage) -> dict[str, Any]:
    """GenAI semantic-convention attributes of one priced call (cost as USD double and exact string)."""
    attrs: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cost.source": usage.cost_source,
        "paymaster.usage.total_tokens": usage.total_tokens,
    }
    if usage.cost_usd is not None:
        attrs["gen_ai.usage.cost"] = float(usage.cost_usd)
        attrs["paymaster.cost_usd"] = str(usage.cost_usd)
    if usage.provider:
        attrs["gen_ai.provider.name"] = usage.provider
    if usage.model:
        attrs["gen_ai.request.model"] = usage.model
    if usage.cached_input_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    if usage.reasoning_tokens:
        attrs["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return attrs
