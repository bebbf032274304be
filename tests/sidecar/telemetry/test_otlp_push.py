"""The OTLP metrics push, received by a real OTLP/gRPC and OTLP/HTTP server on loopback."""

from __future__ import annotations

import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from collector_processor.api.server import create_sidecar
from collector_processor.config import parse_config
from collector_processor.domain.clock import ManualClock
from collector_processor.telemetry.otlp_push import to_metrics_data
from collector_processor.telemetry.prometheus import SidecarCollector, build_registry
from collector_processor.telemetry.selfmetrics import SelfMetrics
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    def Export(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def metrics_of(request: Any) -> dict[str, Any]:
    return {m.name: m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def points(metric: Any) -> dict[tuple[tuple[str, str], ...], float]:
    data = getattr(metric, metric.WhichOneof("data"))
    out = {}
    for p in data.data_points:
        labels = tuple(sorted((a.key, a.value.string_value) for a in p.attributes))
        out[labels] = p.as_double if p.HasField("as_double") else p.as_int
    return out


def run_sidecar(tmp_path: Path, clock: ManualClock, endpoint: str, protocol: str) -> None:
    config = parse_config(
        f'[server]\nlisten = "127.0.0.1:0"\ngrace_seconds = 0\n[store]\npath = "{tmp_path / "s.db"}"\n'
        f'[telemetry]\nservice_name = "paymaster-test"\n'
        f'[metrics.otlp]\nendpoint = "{endpoint}"\nprotocol = "{protocol}"\ninterval_seconds = 0.2\ntimeout_seconds = 0.5\n'
        '[[budgets]]\nid = "t"\nscope = "team"\nscope_id = "search"\nlimit_usd = 1\nperiod = "daily"\n'
        'on_exceed = "block"\n'
    )
    sidecar = create_sidecar(config, clock=clock).start()
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        for usd in ("0.4", "0.4", "0.4"):
            stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd=usd))
    sidecar.stop(0)  # pushes a last time


def test_the_sidecar_pushes_its_metrics_over_otlp_grpc(tmp_path, clock) -> None:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        run_sidecar(tmp_path, clock, f"http://127.0.0.1:{port}", "grpc")
    finally:
        server.stop(0)
    last = receiver.requests[-1]
    resource = {a.key: a.value.string_value for a in last.resource_metrics[0].resource.attributes}
    assert resource["service.name"] == "paymaster-test"
    metrics = metrics_of(last)
    decisions = metrics["paymaster_decisions_total"]
    assert decisions.sum.is_monotonic
    assert decisions.sum.aggregation_temporality == 2  # cumulative
    assert points(decisions) == {
        (("budget", ""), ("decision", "allow"), ("rpc", "reserve")): 2,
        (("budget", "t"), ("decision", "deny"), ("rpc", "reserve")): 1,
    }
    reserved = points(metrics["paymaster_budget_reserved_usd"])
    assert reserved == {(("budget", "t"), ("scope", "team"), ("scope_id", "search")): 0.8}
    assert metrics["paymaster_budget_reserved_usd"].unit == "{USD}"
    latency = metrics["paymaster_rpc_duration_seconds"]
    assert latency.unit == "s"
    (point,) = latency.histogram.data_points
    assert point.count == 3
    assert sum(point.bucket_counts) == 3
    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1


def test_the_sidecar_pushes_its_metrics_over_otlp_http(tmp_path, clock) -> None:
    received: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/metrics"
            received.append(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        run_sidecar(tmp_path, clock, f"http://127.0.0.1:{httpd.server_port}", "http/protobuf")
    finally:
        httpd.shutdown()
        httpd.server_close()
    counts = points(metrics_of(received[-1])["paymaster_rpc_requests_total"])
    assert counts == {(("code", "OK"), ("method", "Reserve")): 3}


def test_an_unreachable_receiver_is_logged_and_never_stops_the_sidecar(tmp_path, clock, caplog) -> None:
    run_sidecar(tmp_path, clock, "http://127.0.0.1:9", "http/protobuf")  # nothing listens on port 9
    assert "OTLP metrics export failed" in caplog.text or "not accepted" in caplog.text


def test_histograms_keep_their_buckets_in_otlp() -> None:
    metrics = SelfMetrics(buckets=(0.1, 1.0))
    for seconds in (0.05, 0.5, 0.5, 2.0):
        metrics.observe("paymaster_x_seconds", seconds, {"k": "v"})
    families = list(build_registry(SidecarCollector(metrics)).collect())
    data = to_metrics_data(families, resource={}, start_ns=1, now_ns=2)
    (metric,) = [
        m for m in data.resource_metrics[0].scope_metrics[0].metrics if m.name == "paymaster_x_seconds"
    ]
    (point,) = metric.data.data_points
    assert list(point.explicit_bounds) == [0.1, 1.0]
    assert list(point.bucket_counts) == [1, 2, 1]
    assert point.count == 4
    assert point.sum == pytest.approx(3.05)
    assert dict(point.attributes) == {"k": "v"}
