"""The receiver's self-metrics: their names, help texts and label values, and a per-export tally.

Dashboards and alert rules are built on these names, so they are constants here and nowhere else.
Counting happens in a ``Tally`` local to one export (plain integers, no lock) that is added to the
sidecar's ``SelfMetrics`` once the export is answered, so an export of 512 spans costs a handful of
counter updates, not thousands.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from collector_processor.domain.types import UsageBatchOutcome, UsageGroup
from collector_processor.telemetry.selfmetrics import SelfMetrics

__all__ = [
    "CHARGE_OUTCOMES",
    "COST_USD",
    "DROPPED",
    "EXPORT_SECONDS",
    "FORWARDED",
    "HTTP_CONNECTIONS_REFUSED",
    "HTTP_DISCONNECTS",
    "METRIC_POINTS_CHARGED",
    "METRIC_POINTS_RECEIVED",
    "PRICE_SOURCES",
    "REQUESTS",
    "REQUEST_OUTCOMES",
    "SPANS_CHARGED",
    "SPANS_PRICED",
    "SPANS_RECEIVED",
    "Tally",
    "describe",
]

REQUESTS: Final = "paymaster_otlp_requests_total"
SPANS_RECEIVED: Final = "paymaster_otlp_spans_received_total"
SPANS_PRICED: Final = "paymaster_otlp_spans_priced_total"
SPANS_CHARGED: Final = "paymaster_otlp_spans_charged_total"
COST_USD: Final = "paymaster_otlp_cost_usd_total"
METRIC_POINTS_RECEIVED: Final = "paymaster_otlp_metric_points_received_total"
METRIC_POINTS_CHARGED: Final = "paymaster_otlp_metric_points_charged_total"
FORWARDED: Final = "paymaster_otlp_forwarded_total"
DROPPED: Final = "paymaster_otlp_dropped_total"
EXPORT_SECONDS: Final = "paymaster_otlp_export_seconds"
HTTP_DISCONNECTS: Final = "paymaster_otlp_http_disconnects_total"
HTTP_CONNECTIONS_REFUSED: Final = "paymaster_otlp_http_connections_refused_total"

REQUEST_OUTCOMES: Final = (
    "ok",
    "unauthenticated",
    "forbidden",
    "invalid",
    "too_large",
    "unavailable",
    "error",
)
PRICE_SOURCES: Final = ("configured", "library", "unknown", "sdk")
CHARGE_OUTCOMES: Final = (
    "charged",
    "unattributed",
    "duplicate",
    "sdk",
    "unpriced",
    "invalid",
    "skipped",
    "stale",
    "forbidden",
)

_HELP: Final = {
    REQUESTS: "OTLP export requests answered, by signal (traces, metrics), transport (grpc, http) and outcome "
    "(ok, unauthenticated, forbidden, invalid, too_large, unavailable, error).",
    SPANS_RECEIVED: "Spans received in accepted exports, by transport.",
    SPANS_PRICED: "GenAI spans with usable token usage, by where their cost came from (configured, library, "
    "unknown, sdk).",
    SPANS_CHARGED: "GenAI spans by what charging did with them; each is counted once: charged (new spend, "
    "attributed), unattributed (new spend, charged to the unattributed bucket), duplicate (seen before), "
    "sdk (carries paymaster.reservation_id: the SDK charges it, the receiver does not), unpriced, invalid, "
    "skipped (spend comes from this service's metrics), stale (older than the idempotency window), "
    "forbidden (attributed to scopes outside the sender's grants).",
    COST_USD: "USD newly charged to the ledger from OTLP spans and metrics.",
    METRIC_POINTS_RECEIVED: "Metric data points received in accepted exports, by transport.",
    METRIC_POINTS_CHARGED: "Token usage metric points by what charging did with them (charged, unattributed, "
    "duplicate, unpriced, invalid, skipped, held, forbidden).",
    FORWARDED: "Spans and metric points exported onward, by signal.",
    DROPPED: "Spans and metric points not exported onward, by signal and reason (queue_full, export_failed).",
    EXPORT_SECONDS: "Time from receiving an OTLP export to answering it, by signal and transport.",
    HTTP_DISCONNECTS: "OTLP/HTTP connections closed mid-request, by reason: closed (the client went away "
    "before its answer), timeout (its request or the taking of its answer outlasted "
    "receivers.otlp.http_request_timeout_seconds).",
    HTTP_CONNECTIONS_REFUSED: "OTLP/HTTP connections answered 503 at once because "
    "receivers.otlp.http_max_connections were open.",
}


def describe(metrics: SelfMetrics) -> None:
    """Give every metric of the receiver its help text."""
    for name, text in _HELP.items():
        metrics.describe(name, text)


class Tally:
    """What one export did, counted locally and added to ``SelfMetrics`` in one go."""

    __slots__ = ("batches", "charged", "cost_micros", "points_charged", "priced")

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[UsageGroup, ...], UsageBatchOutcome]] = []
        """The batches charged, with their outcomes, for the spend metrics."""
        self.priced: Counter[str] = Counter()
        self.charged: Counter[str] = Counter()
        self.points_charged: Counter[str] = Counter()
        self.cost_micros = 0

    def flush(self, metrics: SelfMetrics) -> None:
        for source, n in self.priced.items():
            if n:
                metrics.inc(SPANS_PRICED, n, {"source": source})
        for outcome, n in self.charged.items():
            if n:
                metrics.inc(SPANS_CHARGED, n, {"outcome": outcome})
        for outcome, n in self.points_charged.items():
            if n:
                metrics.inc(METRIC_POINTS_CHARGED, n, {"outcome": outcome})
        if self.cost_micros:
            metrics.inc(COST_USD, self.cost_micros / 1_000_000)
