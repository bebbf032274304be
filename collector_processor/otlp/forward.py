"""The exporter: enriched telemetry onward to an OTLP endpoint, batched, bounded, retried, counted.

One ``Forwarder`` per signal runs on its own thread. ``submit`` never blocks the receiver: an export
that would take the queue past ``queue_size`` spans or points is dropped and counted (``paymaster_otlp_dropped_total{reason="queue_full"}``)
— the spend was already charged, only the onward copy is lost. The thread joins queued exports into
one onward request of up to ``max_batch_items`` spans or points (concatenating serialised exports is
merging them, by the protobuf encoding), sends it over OTLP/gRPC or OTLP/HTTP, and retries transient
failures (gRPC UNAVAILABLE and kin, HTTP 429/502/503/504, connection errors) with exponential backoff
and jitter, honouring the server's RetryInfo or Retry-After, for up to ``max_elapsed_seconds``. What
still fails is dropped and counted (``reason="export_failed"``), as is what the endpoint reports
rejecting in a partial success.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector_processor.otlp import counters
from collector_processor.otlp.config import ForwardSection
from collector_processor.telemetry.selfmetrics import SelfMetrics

__all__ = ["Forwarder"]

log = logging.getLogger("paymaster.sidecar.otlp.forward")

_SIGNALS = {
    "traces": ("/opentelemetry.proto.collector.trace.v1.TraceService/Export", "/v1/traces",
               trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    "metrics": ("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", "/v1/metrics",
                metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
}  # fmt: skip
_RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How one onward request went."""

    ok: bool
    retryable: bool = False
    retry_after_s: float | None = None
    rejected: int = 0
    detail: str = ""


class Forwarder:
    """Forwards one signal. ``submit`` takes serialised exports (bytes, or a callable returning them)."""

    def __init__(self, section: ForwardSection, *, signal: str, metrics: SelfMetrics) -> None:
        self._section = section
        self._signal = signal
        self._metrics = metrics
        self._grpc_method, path, response_type, self._rejected_field = _SIGNALS[signal]
        self._response_type: Any = response_type
        url = urlsplit(section.endpoint)
        self._secure = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._secure else (4317 if section.protocol == "grpc" else 4318))
        self._path = url.path.rstrip("/") + path
        self._headers = dict(section.headers)
        self._queue: deque[tuple[bytes | Callable[[], bytes], int]] = deque()
        self._queued = 0  # items in the queue
        self._ready = threading.Condition()
        self._stopping = False
        self._stop_deadline = 0.0
        self._inflight = 0
        self._channel: grpc.Channel | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"paymaster-otlp-forward-{signal}", daemon=True
        )

    @property
    def endpoint(self) -> str:
        return self._section.endpoint

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def submit(self, payload: bytes | Callable[[], bytes], items: int) -> bool:
        """Queue one export of ``items`` spans or points; False (and counted) when the queue is full."""
        with self._ready:
            if self._stopping or self._queued + items > self._section.queue_size:
                self._drop(items, "queue_full")
                return False
            self._queue.append((payload, items))
            self._queued += items
            self._ready.notify()
        return True

    def pending(self) -> int:
        """Items queued or being sent."""
        with self._ready:
            return sum(items for _, items in self._queue) + self._inflight

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued for up to ``timeout_s``; drop (and count) the rest."""
        with self._ready:
            self._stopping = True
            self._stop_deadline = time.monotonic() + timeout_s
            self._ready.notify_all()
        self._thread.join(timeout_s + self._section.timeout_seconds + 1)
        with self._ready:
            left = sum(items for _, items in self._queue)
            self._queue.clear()
            self._queued = 0
        if left:
            self._drop(left, "export_failed")
        self._close_transport()

    # -- the sending thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
                batch, items = self._take()
                self._inflight = items
            try:
                self._send(batch, items)
            except Exception:  # never let one export end forwarding
                log.exception("forwarding %d %s failed unexpectedly", items, self._signal)
                self._drop(items, "export_failed")
            with self._ready:
                self._inflight = 0

    def _take(self) -> tuple[list[bytes | Callable[[], bytes]], int]:
        batch: list[bytes | Callable[[], bytes]] = []
        items = 0
        limit = self._section.max_batch_items
        while self._queue and (not batch or items + self._queue[0][1] <= limit):
            payload, n = self._queue.popleft()
            batch.append(payload)
            items += n
        self._queued -= items
        return batch, items

    def _send(self, batch: list[bytes | Callable[[], bytes]], items: int) -> None:
        body = b"".join(p if isinstance(p, bytes) else p() for p in batch)
        section = self._section
        started = time.monotonic()
        deadline = started + section.max_elapsed_seconds
        backoff = section.backoff_initial_seconds
        while True:
            attempt = self._attempt(body)
            if attempt.ok:
                self._metrics.inc(counters.FORWARDED, items - attempt.rejected, {"signal": self._signal})
                if attempt.rejected:
                    log.warning("%s rejected %d of %d %s: %s", self.endpoint, attempt.rejected, items,
                                self._signal, attempt.detail)  # fmt: skip
                    self._drop(attempt.rejected, "export_failed")
                return
            delay = (
                attempt.retry_after_s
                if attempt.retry_after_s is not None
                else backoff * random.uniform(0.8, 1.2)
            )
            end = min(deadline, self._stop_deadline) if self._stopping else deadline
            if not attempt.retryable or time.monotonic() + delay > end:
                log.warning(
                    "dropping %d %s: %s answered %s", items, self._signal, self.endpoint, attempt.detail
                )
                self._drop(items, "export_failed")
                return
            log.info("%s answered %s; retrying in %.1fs", self.endpoint, attempt.detail, delay)
            with self._ready:
                self._ready.wait_for(
                    lambda: self._stopping and time.monotonic() >= self._stop_deadline, delay
                )
            backoff = min(backoff * 2, section.backoff_max_seconds)

    def _attempt(self, body: bytes) -> _Attempt:
        if self._section.protocol == "grpc":
            return self._attempt_grpc(body)
        return self._attempt_http(body)

    def _attempt_grpc(self, body: bytes) -> _Attempt:
        section = self._section
        if self._channel is None:
            target = f"{self._host}:{self._port}"
            self._channel = (
                grpc.secure_channel(target, grpc.ssl_channel_credentials())
                if self._secure
                else grpc.insecure_channel(target)
            )
        export = self._channel.unary_unary(self._grpc_method)
        compression = (
            grpc.Compression.Gzip if section.compression == "gzip" else grpc.Compression.NoCompression
        )
        try:
            response = export(
                body,
                timeout=section.timeout_seconds,
                metadata=tuple((k.lower(), v) for k, v in self._headers.items()),
                compression=compression,
            )
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            return _Attempt(
                ok=False,
                retryable=code in _RETRYABLE_GRPC,
                retry_after_s=_retry_info(exc),
                detail=f"{code.name}: {exc.details()}",  # type: ignore[attr-defined]
            )
        return self._accepted(response)

    def _attempt_http(self, body: bytes) -> _Attempt:
        section = self._section
        headers = {"Content-Type": "application/x-protobuf", **self._headers}
        if section.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            if self._connection is None:
                kind = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
                self._connection = kind(self._host, self._port, timeout=section.timeout_seconds)
            self._connection.request("POST", self._path, body=body, headers=headers)
            response = self._connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._close_transport()
            return _Attempt(ok=False, retryable=True, detail=f"a connection error ({exc})")
        if response.status == 200:
            return self._accepted(payload)
        retry_after = response.getheader("Retry-After")
        return _Attempt(
            ok=False,
            retryable=response.status in _RETRYABLE_HTTP,
            retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
            detail=f"HTTP {response.status}",
        )

    def _accepted(self, payload: bytes) -> _Attempt:
        try:
            response = self._response_type.FromString(payload)
        except Exception:
            return _Attempt(ok=True)
        partial = response.partial_success
        return _Attempt(
            ok=True, rejected=getattr(partial, self._rejected_field), detail=partial.error_message
        )

    def _drop(self, items: int, reason: str) -> None:
        if items:
            self._metrics.inc(counters.DROPPED, items, {"signal": self._signal, "reason": reason})

    def _close_transport(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _retry_info(exc: Any) -> float | None:
    """The server's RetryInfo delay, when it sent one."""
    try:
        from google.rpc import error_details_pb2

        for key, value in exc.trailing_metadata() or ():
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except Exception:
        return None
    return None
