"""The OTLP pipeline shared by both transports: decode -> price and attribute -> charge -> answer -> forward.

A transport hands ``prepare`` the request body it received (already decompressed) and gets a job, or
an ``ExportRefused`` carrying the outcome and the message to answer with. The job's ledger work runs
on the pipeline's one charging thread (``submit``), so the transport's thread goes on reading other
exports meanwhile; only when that work has committed does ``answer`` build the response, count the
export and hand the telemetry to the forwarder. A client is therefore never told an export was
accepted before its spend is durable, and an export the ledger could not take is answered
``UNAVAILABLE`` (503) to be retried, which charges nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector_processor.auth.edge import Gate, PeerCertificate
from collector_processor.auth.policy import Action, authorize
from collector_processor.auth.principal import ANONYMOUS, Principal
from collector_processor.auth.tokens import Unauthenticated
from collector_processor.domain.clock import Clock
from collector_processor.domain.types import UsageBatch, UsageBatchOutcome, UsageGroup
from collector_processor.errors import StoreUnavailableError
from collector_processor.ledger import Ledger
from collector_processor.otlp import counters
from collector_processor.otlp._view import TraceRequestView
from collector_processor.otlp.access import permitted_for, screen_trace_plan
from collector_processor.otlp.charger import Charger
from collector_processor.otlp.counters import Tally
from collector_processor.otlp.forward import Forwarder
from collector_processor.otlp.metrics import MetricsPlan, MetricsProcessor
from collector_processor.otlp.spend_source import SpendSource
from collector_processor.otlp.traces import TracePlan, TraceProcessor, WindowPolicy
from collector_processor.telemetry.selfmetrics import SelfMetrics

__all__ = ["ExportRefused", "Job", "OtlpPipeline"]

log = logging.getLogger("paymaster.sidecar.otlp")

TRACES, METRICS = "traces", "metrics"


class ExportRefused(Exception):
    """An export answered with an error: ``outcome`` is its ``paymaster_otlp_requests_total`` label."""

    def __init__(self, outcome: str, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(kw_only=True, slots=True)
class Job:
    """One export between being read and being answered."""

    signal: str
    transport: str
    started: float
    request: Any
    """The parsed export (a ``TraceRequestView`` or an ``ExportMetricsServiceRequest``)."""
    body: bytes
    plan: TracePlan | MetricsPlan
    tally: Tally


class OtlpPipeline:
    """Everything between a transport and the ledger; safe to use from several threads."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        traces: TraceProcessor,
        metrics_processor: MetricsProcessor,
        spend_source: SpendSource,
        metrics: SelfMetrics,
        clock: Clock,
        retention_ms: int,
        future_skew_ms: int,
        max_message_bytes: int,
        forwarders: dict[str, Forwarder] | None = None,
        on_spend: Callable[[Sequence[UsageGroup], UsageBatchOutcome], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._traces = traces
        self._metrics_processor = metrics_processor
        self._spend_source = spend_source
        self.metrics = metrics
        self._clock = clock
        self._retention_ms = retention_ms
        self._future_skew_ms = future_skew_ms
        self.max_message_bytes = max_message_bytes
        self._forwarders = forwarders or {}
        self._on_spend = on_spend
        """Told of every batch once it is durable (the spend metrics by model and scope)."""
        self._charger = Charger(ledger.store, translate=self._refusal)
        self._closed = threading.Event()
        counters.describe(metrics)

    # -- the transports' entry points ------------------------------------------------------------
    def admit(
        self, gate: Gate | None, authorization: str | None, certificate: PeerCertificate | None
    ) -> Principal:
        """The sender of an export, if it may export at all: ``ExportRefused`` (``unauthenticated`` or
        ``forbidden``) otherwise, counted on the gate. Without a gate that requires it, ``anonymous``."""
        if gate is None or not gate.required:
            return ANONYMOUS
        try:
            principal = gate.identify(authorization, certificate)
        except Unauthenticated as exc:
            raise ExportRefused("unauthenticated", str(exc)) from None
        denial = authorize(principal, Action.INGEST)
        if denial is not None:
            gate.denied(principal.name, denial.reason)
            raise ExportRefused("forbidden", denial.message)
        return principal

    def prepare(self, signal: str, body: bytes, transport: str, principal: Principal = ANONYMOUS) -> Job:
        """Decode and plan one export from ``principal``; ``ExportRefused`` for an export that cannot be
        taken. Spans and points outside its grants are left uncharged (``otlp.access``)."""
        started = time.perf_counter()
        if self._closed.is_set():
            raise ExportRefused("unavailable", "the sidecar is shutting down; retry", retry_after_s=1.0)
        if len(body) > self.max_message_bytes:
            raise self.too_large(len(body))
        window = self._window()
        try:
            permitted = permitted_for(principal)
            if signal == TRACES:
                request = TraceRequestView.FromString(body)
                traces = self._traces.process(
                    request,
                    window,
                    enrich=TRACES in self._forwarders,
                    payload=body,
                    trust_cost=principal.trust_reported_cost,
                )
                for service in traces.services:
                    self._spend_source.saw_genai_spans(service)
                if permitted is not None:
                    screen_trace_plan(traces, permitted)
                plan: TracePlan | MetricsPlan = traces
            else:
                request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                plan = self._metrics_processor.process(
                    request, window, self._clock.now_ms(), permitted=permitted
                )
        except DecodeError as exc:
            raise ExportRefused(
                "invalid", f"the request is not a valid OTLP {signal} export: {exc}"
            ) from None
        except Exception as exc:  # a bug, not the sender's fault: answered INTERNAL so it retries
            log.exception("processing an OTLP %s export failed", signal)
            raise ExportRefused(
                "error", f"internal error ({type(exc).__name__}); see the sidecar log"
            ) from exc
        return Job(signal=signal, transport=transport, started=started, request=request, body=body, plan=plan,
                   tally=Tally())  # fmt: skip

    def submit(self, job: Job) -> Future[None]:
        """Charge the job on the charging thread (sharing a transaction with the jobs queued with it);
        the future fails with ``ExportRefused``."""
        return self._charger.submit(lambda: self._charge(job))

    def answer(self, job: Job) -> bytes:
        """Count the charged job, pass its telemetry on, and return the serialised OTLP response."""
        plan = job.plan
        job.tally.flush(self.metrics)
        if self._on_spend is not None:
            for groups, outcome in job.tally.batches:
                self._on_spend(groups, outcome)
        labels = {"transport": job.transport}
        if job.signal == TRACES:
            assert isinstance(plan, TracePlan)
            self.metrics.inc(counters.SPANS_RECEIVED, plan.spans, labels)
            response = trace_service_pb2.ExportTraceServiceResponse()
            if plan.problems:
                refused = plan.outcomes["invalid"] + plan.outcomes["forbidden"]
                response.partial_success.error_message = _warning(refused, "span", plan.problems)
            items = plan.spans
        else:
            assert isinstance(plan, MetricsPlan)
            self.metrics.inc(counters.METRIC_POINTS_RECEIVED, plan.points, labels)
            response = metrics_service_pb2.ExportMetricsServiceResponse()
            if plan.problems:
                refused = plan.outcomes["invalid"] + plan.outcomes["forbidden"]
                response.partial_success.error_message = _warning(refused, "metric point", plan.problems)
            items = plan.points
        self.count(job.signal, job.transport, "ok", job.started)
        forwarder = self._forwarders.get(job.signal)
        if forwarder is not None and items:
            # Traces go on as the enriched view (serialised on the forwarder's thread), metrics as received.
            forwarder.submit(job.request.SerializeToString if job.signal == TRACES else job.body, items)
        return response.SerializeToString()  # type: ignore[no-any-return]

    def count(self, signal: str, transport: str, outcome: str, started: float | None = None) -> None:
        """Count one answered export (transports count the refusals they make themselves)."""
        self.metrics.inc(counters.REQUESTS, 1, {"signal": signal, "transport": transport, "outcome": outcome})
        if started is not None:
            self.metrics.observe(
                counters.EXPORT_SECONDS,
                time.perf_counter() - started,
                {"signal": signal, "transport": transport},
            )

    def too_large(self, size: int | None) -> ExportRefused:
        got = f"is {size:,} bytes, above" if size is not None else "is larger than"
        return ExportRefused(
            "too_large",
            f"the export {got} the {self.max_message_bytes:,} bytes this receiver accepts"
            " (receivers.otlp.charging.max_message_bytes); send smaller batches",
        )

    # -- charging (on the charging thread) -------------------------------------------------------
    def _charge(self, job: Job) -> None:
        # A fresh tally each time: a shared transaction that is rolled back runs the job again alone.
        job.tally = Tally()
        if job.signal == TRACES:
            assert isinstance(job.plan, TracePlan)
            self._charge_traces(job.plan, job.tally)
        else:
            assert isinstance(job.plan, MetricsPlan)
            self._charge_metrics(job.plan, job.tally)

    def _refusal(self, exc: Exception) -> Exception:
        """What a transport answers for a charge that failed."""
        if isinstance(exc, ExportRefused):
            return exc
        if isinstance(exc, StoreUnavailableError):
            return ExportRefused("unavailable", f"the ledger is busy; retry ({exc})", retry_after_s=1.0)
        log.error("charging an OTLP export failed", exc_info=exc)
        return ExportRefused("error", f"internal error ({type(exc).__name__}); see the sidecar log")

    def _charge_traces(self, plan: TracePlan, tally: Tally) -> None:
        tally.priced.update(plan.priced)
        tally.charged.update(plan.outcomes)
        if plan.items:
            groups = self._clamped(plan.groups)
            outcome = self._ledger.record_usage_batch(UsageBatch(groups=groups, items=plan.items))
            tally.batches.append((groups, outcome))
            for g, charged in enumerate(outcome.charged_items):
                tally.charged["unattributed" if plan.unattributed[g] else "charged"] += charged
            tally.charged["duplicate"] += outcome.duplicates
            tally.cost_micros += sum(outcome.charged_micros)

    def _charge_metrics(self, plan: MetricsPlan, tally: Tally) -> None:
        tally.points_charged.update(plan.outcomes)
        if not plan.items and not plan.series:
            return
        groups = self._clamped(plan.groups)
        outcome = self._ledger.record_usage_batch(
            UsageBatch(groups=groups, items=plan.items, series=plan.series)
        )
        tally.batches.append((groups, outcome))
        for g, charged in enumerate(outcome.charged_items):
            tally.points_charged["unattributed" if plan.unattributed[g] else "charged"] += charged
        tally.points_charged["duplicate"] += outcome.duplicates
        tally.cost_micros += sum(outcome.charged_micros)

    def _clamped(self, groups: list[Any]) -> tuple[Any, ...]:
        """Groups stamped ahead of this clock (a sender's skew, within the window) are charged now."""
        now = self._clock.now_ms()
        return tuple(g if g.occurred_ms <= now else replace(g, occurred_ms=now) for g in groups)

    def _window(self) -> WindowPolicy:
        now = self._clock.now_ms()
        return WindowPolicy(oldest_ms=now - self._retention_ms, newest_ms=now + self._future_skew_ms)

    # -- housekeeping ----------------------------------------------------------------------------
    def tick(self, *, final: bool = False) -> None:
        """Charge held metric points whose hold has ended (called about once a second, and at stop)."""
        plan = self._metrics_processor.due(self._clock.now_ms(), final=final)
        if not plan.items and not plan.outcomes:
            return
        tally = Tally()
        try:
            self._charger.submit(lambda: self._charge_metrics(plan, tally)).result()
        except Exception:
            log.exception("charging held token metric points failed; they are charged at the next tick")
            return
        tally.flush(self.metrics)

    def close(self, grace_s: float = 5.0) -> None:
        """Refuse new exports, finish the charges in flight, charge held points, and give the forwarders
        ``grace_s`` to send what they hold (the rest is dropped and counted)."""
        self._closed.set()
        self.tick(final=True)
        self._charger.close()
        for forwarder in self._forwarders.values():
            forwarder.stop(grace_s)


def _warning(count: int, what: str, problems: list[str]) -> str:
    shown = "; ".join(problems)
    more = f" (and {count - len(problems)} more)" if count > len(problems) else ""
    return f"{count} {what}{'s' if count != 1 else ''} accepted but not charged: {shown}{more}"
