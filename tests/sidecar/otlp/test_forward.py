"""The onward exporter against a real downstream OTLP receiver: batching, retry with backoff,
bounded queue, and every span it could not deliver counted."""

from __future__ import annotations

import socket
from collections.abc import Callable

import grpc

from collector_processor.otlp.config import ForwardSection
from collector_processor.otlp.forward import Forwarder
from collector_processor.telemetry.selfmetrics import SelfMetrics
from tests.sidecar.otlp.conftest import Downstream, OtlpSidecar, eventually
from tests.sidecar.otlp.payloads import export, span


def exports(count: int, spans: int = 2) -> list[bytes]:
    return [export([span({"n": i}) for _ in range(spans)]).SerializeToString() for i in range(count)]


def counted(metrics: SelfMetrics, name: str, **labels: str) -> float:
    series = metrics.snapshot().counters.get(name, {})
    return sum(v for key, v in series.items() if set(labels.items()) <= set(key))


def forwarder(endpoint: str, metrics: SelfMetrics, **settings: object) -> Forwarder:
    section = ForwardSection(
        endpoint=endpoint, backoff_initial_seconds=0.01, backoff_max_seconds=0.05, **settings
    )
    return Forwarder(section, signal="traces", metrics=metrics)


def test_queued_exports_are_joined_into_batches_of_at_most_max_batch_items(downstream: Downstream) -> None:
    metrics = SelfMetrics()
    onward = forwarder(downstream.endpoint, metrics, max_batch_items=5)
    for body in exports(5):  # queued before the thread starts: all waiting at once
        assert onward.submit(body, 2)
    onward.start()
    downstream.wait_for(lambda: len(downstream.spans()) == 10)
    onward.stop()
    assert [
        sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) for r in downstream.traces
    ] == [4, 4, 2]
    assert counted(metrics, "paymaster_otlp_forwarded_total", signal="traces") == 10


def test_transient_failures_are_retried_with_backoff_until_delivered(downstream: Downstream) -> None:
    metrics = SelfMetrics()
    downstream.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    onward = forwarder(downstream.endpoint, metrics).start()
    onward.submit(exports(1)[0], 2)
    downstream.wait_for(lambda: len(downstream.spans()) == 2)
    onward.stop()
    assert downstream.failures == []
    assert counted(metrics, "paymaster_otlp_forwarded_total") == 2
    assert counted(metrics, "paymaster_otlp_dropped_total") == 0


def test_a_permanent_refusal_drops_the_batch_and_counts_it(downstream: Downstream) -> None:
    metrics = SelfMetrics()
    downstream.failures = [grpc.StatusCode.INVALID_ARGUMENT]
    onward = forwarder(downstream.endpoint, metrics).start()
    onward.submit(exports(1)[0], 2)
    eventually(
        lambda: counted(metrics, "paymaster_otlp_dropped_total", signal="traces", reason="export_failed") == 2
    )
    onward.submit(exports(1)[0], 2)
    downstream.wait_for(lambda: len(downstream.spans()) == 2)  # the next batch goes through
    onward.stop()
    assert counted(metrics, "paymaster_otlp_forwarded_total") == 2


def test_an_unreachable_endpoint_is_given_up_after_max_elapsed_seconds() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    metrics = SelfMetrics()
    onward = forwarder(
        f"http://127.0.0.1:{port}", metrics, max_elapsed_seconds=0.3, timeout_seconds=0.2
    ).start()
    onward.submit(exports(1)[0], 2)
    onward.stop(timeout_s=5)
    assert counted(metrics, "paymaster_otlp_dropped_total", reason="export_failed") == 2


def test_a_full_queue_drops_new_exports_and_counts_their_items(downstream: Downstream) -> None:
    metrics = SelfMetrics()
    onward = forwarder(downstream.endpoint, metrics, queue_size=6)  # spans
    bodies = exports(3, spans=3)
    assert onward.submit(bodies[0], 3) and onward.submit(bodies[1], 3)
    assert not onward.submit(bodies[2], 3)
    assert counted(metrics, "paymaster_otlp_dropped_total", signal="traces", reason="queue_full") == 3
    onward.start()
    downstream.wait_for(lambda: len(downstream.spans()) == 6)
    onward.stop()


def test_otlp_http_forwarding_reaches_another_receiver(otlp_sidecar: Callable[..., OtlpSidecar]) -> None:
    """A second sidecar's OTLP/HTTP receiver stands in for a collector speaking http/protobuf."""
    collector = otlp_sidecar(db="collector.db")
    metrics = SelfMetrics()
    onward = forwarder(collector.http_url, metrics, protocol="http/protobuf").start()
    onward.submit(exports(1)[0], 2)
    onward.stop()
    assert counted(metrics, "paymaster_otlp_forwarded_total") == 2
    assert collector.counter("paymaster_otlp_spans_received_total", transport="http") == 2
