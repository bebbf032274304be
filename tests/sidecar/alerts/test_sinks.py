"""The webhook sink against a real local HTTP endpoint: 408, 429 and 5xx are retried with a backoff
that doubles up to its cap, other refusals are not, and every attempt carries the same body and
Idempotency-Key. The pauses are recorded by an injected pause, not waited out."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from collector_processor.alerts.sinks import WebhookSink
from collector_processor.domain.budgets import OnExceed, Scope
from collector_processor.domain.types import Alert

ALERT = Alert(
    sequence=7, alert_id="alert-7", budget_id="team", budget_name="Team", scope=Scope.TEAM, scope_id="search",
    threshold_percent=80, used_usd=Decimal("8"), limit_usd=Decimal("10"), percentage=Decimal("80"),
    action=OnExceed.WARN, period_start_ms=0, period_end_ms=86_400_000, fired_ms=1000, message="80% used",
)  # fmt: skip


class Endpoint:
    """A real HTTP server answering POSTs with ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, Any], str]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append((body, self.headers["Idempotency-Key"]))
                code = endpoint.statuses.pop(0) if endpoint.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"


class Pauses:
    """Records each pause the sink asks for and returns at once (the sink is not closing)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.asked.append(seconds)
        return False


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for endpoint in made:
        endpoint.server.shutdown()
        endpoint.server.server_close()


def deliver(endpoint: Endpoint, **settings: Any) -> tuple[WebhookSink, Pauses]:
    """Submit ALERT to a new sink and wait until the sink is finished with it."""
    pauses = Pauses()
    sink = WebhookSink(endpoint.url, pause=pauses, timeout_s=5, **settings)
    finished = threading.Event()
    sink.submit(ALERT, finished.set)
    assert finished.wait(30), "the sink never finished with the alert"
    sink.close()
    return sink, pauses


def test_408_429_500_and_503_are_retried_with_a_doubling_backoff_up_to_its_cap(
    endpoints: list[Endpoint],
) -> None:
    endpoint = Endpoint([408, 429, 500, 503])
    endpoints.append(endpoint)
    sink, pauses = deliver(endpoint, max_attempts=6, backoff_initial_s=0.5, backoff_max_s=1.5)
    assert (sink.stats.attempts, sink.stats.delivered, sink.stats.failed) == (5, 1, 0)
    assert pauses.asked == [0.5, 1.0, 1.5, 1.5]
    assert len(endpoint.requests) == 5
    assert {json.dumps(body, sort_keys=True) for body, _ in endpoint.requests} == {
        json.dumps(endpoint.requests[0][0], sort_keys=True)
    }
    assert {key for _, key in endpoint.requests} == {"alert-7"}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_each_retryable_status_is_retried(endpoints: list[Endpoint], status: int) -> None:
    endpoint = Endpoint([status])
    endpoints.append(endpoint)
    sink, pauses = deliver(endpoint, max_attempts=3, backoff_initial_s=2, backoff_max_s=30)
    assert (sink.stats.attempts, sink.stats.delivered) == (2, 1)
    assert pauses.asked == [2]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_refusals_are_not_retried(endpoints: list[Endpoint], status: int) -> None:
    endpoint = Endpoint([status])
    endpoints.append(endpoint)
    sink, pauses = deliver(endpoint, max_attempts=3)
    assert (sink.stats.attempts, sink.stats.delivered, sink.stats.failed) == (1, 0, 1)
    assert pauses.asked == []


def test_the_last_attempt_gives_up_without_a_pause_after_it(endpoints: list[Endpoint]) -> None:
    endpoint = Endpoint([503] * 10)
    endpoints.append(endpoint)
    sink, pauses = deliver(endpoint, max_attempts=4, backoff_initial_s=1, backoff_max_s=3)
    assert (sink.stats.attempts, sink.stats.delivered, sink.stats.failed) == (4, 0, 1)
    assert pauses.asked == [1, 2, 3]
    assert len(endpoint.requests) == 4
