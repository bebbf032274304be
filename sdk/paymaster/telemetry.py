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
from time import perf_counter
from typing import Any, Final

from opentelemetry import metrics, trace

from paymaster._estimate import UsageEstimate
from paymaster._metering import MeasuredUsage
from paymaster.money import ZERO
from paymaster.vocabulary import NO_MODEL

__all__ = [
    "INSTRUMENTS",
    "LOCAL_CLAIM_PREFIX",
    "RESERVATION_ATTRIBUTE",
    "STEP_ATTRIBUTE",
    "RunMetrics",
    "Telemetry",
    "usage_attributes",
    "variance_bucket",
]

SCOPE: Final = "paymaster"
RESERVATION_ATTRIBUTE: Final = "paymaster.reservation_id"
"""Span attribute and baggage entry: the claim that a span's spend is charged elsewhere, so the sidecar's
trace ingestion never charges a span that carries it (docs/otlp.md, "Who charges a span"). On an agent
step's span: the id the SDK charges the step under itself (a reservation, a lease, or under fail_open
the journal's usage id), and absent when the SDK charges nothing (``local_only_limits``, no budget), so
the ingestion charges that span. In the baggage while the agent runs, for the spans started inside the
step (``paymaster.processor.ReservationSpanProcessor``): the step's own id, or ``local:<span id>`` when
the step's span, charged by the ingestion, is the record of their spend."""
LOCAL_CLAIM_PREFIX: Final = "local:"
"""The baggage claim of a step the SDK does not charge: its span (this id) records the spend."""
STEP_ATTRIBUTE: Final = "paymaster.step.name"
"""On the SDK's step spans (agent, loop, parallel) from their start: each states its own claim."""

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
    "paymaster.steps": (
        "{step}",
        "Agent steps finished, by outcome (ok, failed, denied, cancelled, halted).",
    ),
    "paymaster.budget.decisions": (
        "{step}",
        "Sidecar budget decisions on agent steps, by decision (allow, warn, downgrade, deny, "
        "no_downgrade_path, fail_open, fail_closed, local_only) and mode (reservation, lease, ...).",
    ),
    "paymaster.budget.leases": (
        "{lease}",
        "Budget leases, by event (acquired, refused, committed, released, commit_failed).",
    ),
    "paymaster.sidecar.calls": (
        "{call}",
        "Calls to the budget sidecar, by rpc and outcome (ok, retried, refused, unavailable, "
        "deadline_exceeded, breaker_open, ...).",
    ),
    "paymaster.sidecar.replays": (
        "{usage}",
        "Spend kept for the sidecar while it was unreachable, by outcome (journaled, replayed, "
        "duplicate, rejected).",
    ),
    "paymaster.sidecar.breaker": (
        "{transition}",
        "Circuit breaker transitions of the sidecar client, by the state entered (open, half_open, closed).",
    ),
}

_CENT: Final = Decimal(100)


def variance_bucket(delta: Decimal | int) -> str:
    """The ``estimation.variance.count`` bucket of an absolute delta."""
    size = -delta if delta < 0 else delta
    if not size:
        return "0"
    if size <= 1:
        return "<=1"
    if size <= 10:
        return "<=10"
    return "<=100" if size <= 100 else ">100"


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

    def count(self, name: str, value: float, attributes: dict[str, str]) -> None:
        """Add to counter ``name`` (one of ``INSTRUMENTS``) at once; for rare events outside a run."""
        self._instruments[name].add(value, attributes)

    def run_metrics(self) -> RunMetrics:
        """A counter batch for one run."""
        return RunMetrics(self._instruments)


class RunMetrics:
    """Counter updates of one run, summed in memory and flushed to the instruments.

    An OpenTelemetry SDK counter ``add`` costs about as much as a span; a governed step makes half a
    dozen. Summing them here and flushing at the end of the run (and at least every
    ``FLUSH_INTERVAL_S`` during a long one) keeps the per-step cost to a dict update, while a
    scrape never sees figures more than a second stale.
    """

    FLUSH_INTERVAL_S: Final = 1.0

    __slots__ = ("_instruments", "_last_flush", "_pending", "_spent", "_usage_keys")

    def __init__(self, instruments: dict[str, Any]) -> None:
        self._instruments = instruments
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._spent: dict[tuple[str, tuple[tuple[str, str], ...]], Decimal] = {}
        self._usage_keys: dict[tuple[str, str | None, str | None, str], tuple[_Key, ...]] = {}
        self._last_flush = perf_counter()

    def add(self, name: str, value: float, attributes: tuple[tuple[str, str], ...]) -> None:
        """Add ``value`` to counter ``name`` (one of ``INSTRUMENTS``) with these attributes."""
        key = (name, attributes)
        self._pending[key] = self._pending.get(key, 0) + value

    def flush(self) -> None:
        """Hand everything summed so far to the OpenTelemetry instruments."""
        pending, self._pending = self._pending, {}
        self._last_flush = perf_counter()
        spent, self._spent = self._spent, {}
        for (name, attributes), value in pending.items():
            self._instruments[name].add(value, dict(attributes))
        for (name, attributes), usd in spent.items():
            self._instruments[name].add(float(usd), dict(attributes))

    def _count(self, keys: dict[str, _Key], name: str, label: str, value: str) -> None:
        """Add one to a single-label series, its key built once per process (every step counts two)."""
        key = keys.get(value)
        if key is None:
            key = keys.setdefault(value, (name, ((label, value),)))
        self._pending[key] = self._pending.get(key, 0) + 1

    def record_estimate(self, strategy: str) -> None:
        """Count which estimator strategy a step used."""
        self._count(_STRATEGY_KEYS, "estimator.usage", "strategy", strategy)

    def record_denial(self, code: str) -> None:
        """Count a step denied before it ran."""
        self.add("quota.denials.total", 1, (("code", code),))

    def record_usage(self, step: str, estimate: UsageEstimate, usage: MeasuredUsage) -> None:
        """Count spend, tokens and the estimate's variance of one finished agent call."""
        # Every agent step comes here: the series keys of one (step, model, provider, source) are
        # built once per run, and the sums are updated in place.
        facts = (step, usage.model, usage.provider, usage.cost_source)
        keys = self._usage_keys.get(facts)
        if keys is None:
            keys = self._usage_keys[facts] = _usage_keys(*facts)
        pending = self._pending
        cost = usage.cost_usd
        if cost is not None:
            if cost:  # summed exactly; made a float once, at the flush
                spent = self._spent
                spent[keys[0]] = spent.get(keys[0], ZERO) + cost
            bucket = _COST_VARIANCE[variance_bucket((cost - estimate.cost_usd) * _CENT)]
            pending[bucket] = pending.get(bucket, 0) + 1
        elif usage.cost_source == "unknown":
            pending[keys[1]] = pending.get(keys[1], 0) + 1
        if usage.total_tokens:
            if usage.input_tokens or usage.output_tokens:
                pending[keys[2]] = pending.get(keys[2], 0) + usage.input_tokens
                pending[keys[3]] = pending.get(keys[3], 0) + usage.output_tokens
            else:
                pending[keys[4]] = pending.get(keys[4], 0) + usage.total_tokens
        bucket = _TOKEN_VARIANCE[variance_bucket(usage.total_tokens - estimate.tokens)]
        pending[bucket] = pending.get(bucket, 0) + 1
        if perf_counter() - self._last_flush > self.FLUSH_INTERVAL_S:
            self.flush()

    def record_outcome(self, outcome: str) -> None:
        """Count an agent step's outcome."""
        self._count(_OUTCOME_KEYS, "paymaster.steps", "outcome", outcome)


_Key = tuple[str, tuple[tuple[str, str], ...]]
"""A pending counter series: instrument name and sorted attribute pairs."""


def _usage_keys(step: str, model: str | None, provider: str | None, source: str) -> tuple[_Key, ...]:
    """The series one call's figures go to: cost, unpriced, input, output and total tokens."""
    m = model or NO_MODEL
    return (
        (
            "paymaster.cost_usd",
            (("cost_source", source), ("model", m), ("provider", provider or NO_MODEL), ("step", step)),
        ),
        ("paymaster.unpriced_calls", (("model", m), ("step", step))),
        ("paymaster.tokens", (("model", m), ("step", step), ("type", "input"))),
        ("paymaster.tokens", (("model", m), ("step", step), ("type", "output"))),
        ("paymaster.tokens", (("model", m), ("step", step), ("type", "total"))),
    )


_STRATEGY_KEYS: dict[str, _Key] = {}
_OUTCOME_KEYS: dict[str, _Key] = {}
_VARIANCE_BUCKETS = ("0", "<=1", "<=10", "<=100", ">100")
_COST_VARIANCE: Final[dict[str, _Key]] = {
    b: ("estimation.variance.count", (("bucket", b), ("type", "cost"))) for b in _VARIANCE_BUCKETS
}
_TOKEN_VARIANCE: Final[dict[str, _Key]] = {
    b: ("estimation.variance.count", (("bucket", b), ("type", "tokens"))) for b in _VARIANCE_BUCKETS
}


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
