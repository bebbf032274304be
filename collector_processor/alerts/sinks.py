"""Alert sinks: an OpenTelemetry log record per alert, and an HTTP webhook with retry and a bounded queue.

The webhook's queue is bounded, and when it is full the dispatcher simply claims fewer alerts: the
rest wait in the store's durable alert log instead of being dropped or piling up in memory. A
delivery is retried with exponential backoff on network errors, 5xx, 408 and 429; any other 4xx is a
permanent refusal and is not retried. Each POST carries the alert's id as ``Idempotency-Key``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collector_processor.domain.clock import ms_to_datetime
from collector_processor.domain.money import format_percentage, format_usd
from collector_processor.domain.types import Alert

__all__ = ["OtelLogSink", "WebhookSink", "WebhookStats", "alert_payload"]

log = logging.getLogger("paymaster.sidecar.webhook")

EVENT_NAME = "paymaster.budget.alert"


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The JSON body of a webhook delivery (and the attributes of the log record): exact decimal strings."""
    return {
        "alert_id": alert.alert_id,
        "sequence": alert.sequence,
        "kind": "threshold",
        "budget_id": alert.budget_id,
        "budget_name": alert.budget_name,
        "scope": alert.scope.value,
        "scope_id": alert.scope_id,
        "threshold_percent": alert.threshold_percent,
        "used_usd": format_usd(alert.used_usd),
        "limit_usd": format_usd(alert.limit_usd),
        "percentage": format_percentage(alert.percentage),
        "action": alert.action.value,
        "period_start": ms_to_datetime(alert.period_start_ms).isoformat(),
        "period_end": ms_to_datetime(alert.period_end_ms).isoformat(),
        "fired_at": ms_to_datetime(alert.fired_ms).isoformat(),
        "message": alert.message,
    }


class OtelLogSink:
    """Emits each alert as an OpenTelemetry log record (event ``paymaster.budget.alert``)."""

    def __init__(self, logger_provider: Any = None) -> None:
        from opentelemetry import _logs

        provider = logger_provider or _logs.get_logger_provider()
        self._logger = provider.get_logger("paymaster.sidecar")
        self._severity = _logs.SeverityNumber.WARN

    def capacity(self) -> int:
        return 1_000_000  # emitting is synchronous and never backs up

    def submit(self, alert: Alert, done: Callable[[], None]) -> None:
        payload = alert_payload(alert)
        attributes = {f"paymaster.alert.{k}": v for k, v in payload.items() if k != "message"}
        # The contract's scope attribute (paymaster.team=search) lets backends join alerts with spend.
        attributes[f"paymaster.{alert.scope.value}"] = alert.scope_id
        try:
            self._logger.emit(
                event_name=EVENT_NAME,
                severity_number=self._severity,
                severity_text="WARN",
                body=alert.message,
                attributes=attributes,
            )
        except Exception:  # a broken exporter must not stop the other sinks
            log.exception("could not emit the alert %s as a log record", alert.alert_id)
        done()

    def close(self) -> None:
        pass


@dataclass(kw_only=True, slots=True)
class WebhookStats:
    """What the webhook sink has done, for tests and metrics."""

    delivered: int = 0
    """Alerts the endpoint accepted."""
    failed: int = 0
    """Alerts given up on after the last attempt or a permanent refusal."""
    attempts: int = 0
    """POSTs made."""


class WebhookSink:
    """POSTs each alert as JSON to ``url`` from a worker thread, retrying with exponential backoff.

    The pause before attempt ``n + 1`` is ``backoff_initial_s * 2 ** (n - 1)``, capped at
    ``backoff_max_s``. ``pause`` waits that long and says whether the sink is closing meanwhile; it
    is the sink's own stop flag unless given (tests give one that records the pauses).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        queue_size: int = 1000,
        pause: Callable[[float], bool] | None = None,
    ) -> None:
        self.url = url
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "paymaster-sidecar",
            **(headers or {}),
        }
        self._timeout = timeout_s
        self._attempts = max_attempts
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._queue: queue.Queue[tuple[Alert, Callable[[], None]] | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._pause = pause or self._stop.wait
        self.stats = WebhookStats()
        self._thread = threading.Thread(target=self._run, name="paymaster-webhook", daemon=True)
        self._thread.start()

    def capacity(self) -> int:
        return self._queue.maxsize - self._queue.qsize()

    def submit(self, alert: Alert, done: Callable[[], None]) -> None:
        self._queue.put_nowait((alert, done))

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):  # the worker is busy; it sees the stop flag when it is done
            self._queue.put_nowait(None)
        self._thread.join(self._timeout + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            alert, done = item
            if self._deliver(alert):
                done()
            # Interrupted by shutdown: not acknowledged, so the alert is delivered after the restart.

    def _deliver(self, alert: Alert) -> bool:
        """True when finished (delivered or given up); False when shutdown interrupted the retries."""
        body = json.dumps(alert_payload(alert)).encode()
        delay = self._backoff[0]
        for attempt in range(1, self._attempts + 1):
            self.stats.attempts += 1
            outcome = self._post(body, alert.alert_id)
            if outcome == "ok":
                self.stats.delivered += 1
                return True
            if outcome == "permanent" or attempt == self._attempts:
                self.stats.failed += 1
                log.warning("webhook gave up on alert %s after %d attempt(s)", alert.alert_id, attempt)
                return True
            if self._pause(delay) or self._stop.is_set():
                return False
            delay = min(delay * 2, self._backoff[1])
        return True

    def _post(self, body: bytes, alert_id: str) -> str:
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={**self._headers, "Idempotency-Key": alert_id}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return "ok" if 200 <= response.status < 300 else "retry"
        except urllib.error.HTTPError as exc:
            if exc.code in (408, 429) or exc.code >= 500:
                return "retry"
            return "permanent"
        except (urllib.error.URLError, OSError, TimeoutError):
            return "retry"
