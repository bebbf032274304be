"""Every dashboard query and alert rule against a real Prometheus scraping a real sidecar and a real SDK app.

All of it twice: with a sidecar of one process, and with one of two worker processes whose one
``/metrics`` sums both (the dashboards and rules must read it the same way). A sidecar (SQLite store,
system clock, /metrics on a free port) is driven by a short workload over
gRPC: several budgets, scopes and models, denials, downgrades, threshold crossings, a refused request
and a store that stays locked past its busy timeout. Its OTLP receiver takes a GenAI span (charged and
forwarded to a downstream collector stand-in) and token metrics (too many for the forward queue, so
counted as dropped) from the OpenTelemetry SDK's own OTLP exporters. A governed SDK run exports the SDK's
OpenTelemetry metrics through the OpenTelemetry Prometheus exporter (the same name translation as a
Collector's). A real Prometheus scrapes both every second with the project's alert rules loaded; after
two scrapes every panel's PromQL must return data, every template variable must resolve, every rule
must evaluate, and the alerts the workload provokes must be pending or firing.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, start_http_server

from collector_processor.api.server import Sidecar, create_sidecar
from collector_processor.config import parse_config
from collector_processor.workers import Supervisor
from paymaster import Runner, Step, StepConfig, UsageLimitExceededError, UsageLimits
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.ops.conftest import DEPLOY, require_tool
from tests.ops.dashboards import committed, panels
from tests.sdk.agents import FixedMetricAgent
from tests.sidecar.otlp.conftest import Downstream, start_downstream

pytestmark = pytest.mark.slow

# The alerts this workload provokes (pending or firing, depending on their `for`).
EXPECTED_ALERTS = {
    "PaymasterBudgetHalfUsed",
    "PaymasterBudgetNearlyExhausted",
    "PaymasterBudgetExhausted",
    "PaymasterBudgetFastBurn",
    "PaymasterSidecarDown",
    "PaymasterStoreErrors",
    "PaymasterRequestErrors",
}

BUILTINS = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "1s"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def early_zone() -> str:
    """A zone where the local day has just begun, so a daily budget's period is young and burns fast."""
    hour = datetime.now(UTC).hour
    offset = (24 - hour) % 24  # local hour 0 at UTC+offset
    offset = offset - 24 if offset > 14 else offset
    # Etc/GMT signs are inverted: Etc/GMT-3 is UTC+3.
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def sidecar_config(tmp: Path, metrics_port: int, otlp_port: int, forward_to: str, workers: int = 1) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
grace_seconds = 0
workers = {workers}
[store]
path = "{tmp / "ledger.db"}"
busy_timeout_ms = 100
[metrics]
enabled = true
listen = "127.0.0.1:{metrics_port}"
refresh_seconds = 0
[receivers.otlp]
enabled = true
grpc_listen = "127.0.0.1:{otlp_port}"
http_listen = ""
[receivers.otlp.forward]
endpoint = "{forward_to}"
queue_size = 1   # one span fits; an export of several metric points is dropped (counted)
compression = "none"
[[budgets]]
id = "search-daily"
name = "Search daily"
scope = "team"
scope_id = "search"
limit_usd = 10
period = "daily"
time_zone = "{early_zone()}"
on_exceed = "block"
alert_thresholds = [50, 80, 100]
[[budgets]]
id = "ads-daily"
scope = "team"
scope_id = "ads"
limit_usd = 5
period = "daily"
on_exceed = "block"
[[budgets]]
id = "per-user"
scope = "user"
limit_usd = 1
period = "rolling_24h"
on_exceed = "downgrade"
alert_thresholds = [100]
[[budgets]]
id = "acme-monthly"
scope = "organization"
scope_id = "acme"
limit_usd = 1000
period = "monthly"
on_exceed = "warn"
[[budgets]]
id = "planner-weekly"
scope = "agent"
scope_id = "planner"
limit_usd = 2
period = "weekly"
on_exceed = "warn"
"""


def drive(sidecar: Sidecar | Supervisor, db: Path) -> None:
    """A short workload: spend on several scopes and models, denials, downgrades, threshold crossings.
    Each spend opens a connection of its own, so that several workers share the workload."""
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)

        def spend(usd: str, model: str, provider: str, **scopes: str) -> pb.ReserveResponse:
            own = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(sidecar.address, options=own) as connection:
                spender = budget_pb2_grpc.BudgetServiceStub(connection)
                reply = spender.Reserve(
                    pb.ReserveRequest(scopes=pb.ScopeIds(organization="acme", **scopes), estimate_usd=usd)
                )
                if reply.reservation_id:
                    facts = pb.UsageFacts(
                        provider=provider, model=model, input_tokens=2000, output_tokens=400
                    )
                    spender.Commit(
                        pb.CommitRequest(reservation_id=reply.reservation_id, actual_usd=usd, usage=facts)
                    )
            return reply  # type: ignore[no-any-return]

        spend("3", "gpt-4o", "openai", team="search", agent="researcher", workflow="triage", user="ada")
        spend(
            "3", "claude-sonnet-4", "anthropic", team="search", agent="planner", workflow="triage", user="bob"
        )
        spend("4.2", "gpt-4o-mini", "openai", team="ads", agent="planner", workflow="campaign", user="cy")
        assert spend("2", "gpt-4o", "openai", team="ads", user="dee").decision == pb.DECISION_DENY
        assert spend("0.5", "gpt-4o", "openai", team="support", user="ada").decision == pb.DECISION_DOWNGRADE
        stub.CheckBudget(pb.CheckBudgetRequest(scopes=pb.ScopeIds(team="ads"), estimate_usd="9"))
        stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="0.5"))  # left held


def provoke_errors(sidecar: Sidecar | Supervisor, db: Path) -> None:
    """A refused request and a store locked past its busy timeout, once Prometheus has seen the counters
    without them (a rate needs two samples that differ)."""
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="-1"))
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
        try:
            with pytest.raises(grpc.RpcError) as info:
                stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="ops"), estimate_usd="0.1"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            locker.execute("ROLLBACK")
            locker.close()


def send_otlp(otlp_port: int, downstream: Downstream) -> None:
    """A GenAI span and token metrics through the OpenTelemetry SDK's OTLP/gRPC exporters."""
    endpoint = f"127.0.0.1:{otlp_port}"
    resource = Resource.create({"service.name": "chatbot", "paymaster.team": "search"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True))
    )
    span = tracer_provider.get_tracer("app").start_span(
        "chat gpt-4o",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
        },
    )
    span.end()
    tracer_provider.shutdown()
    downstream.wait_for(lambda: bool(downstream.spans()))
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    tokens = meter_provider.get_meter("app").create_histogram("gen_ai.client.token.usage", unit="{token}")
    for kind, count in (("input", 800), ("output", 200)):
        tokens.record(count, {"gen_ai.token.type": kind, "gen_ai.request.model": "gpt-4o"})
    meter_provider.shutdown()  # exports once, then stops


def run_sdk(meter_provider: MeterProvider) -> None:
    """A governed run with estimates off by various amounts, then a step the run's limit denies."""
    pipeline = Step(
        "draft",
        FixedMetricAgent(cost=0.1, tokens=100),
        config=StepConfig(expected_cost_usd=0.1, expected_tokens=100),
    ) >> Step("review", FixedMetricAgent(cost=0.5, tokens=250))
    Runner(pipeline, meter_provider=meter_provider).run(0)
    big = Step("big", FixedMetricAgent(), config=StepConfig(expected_cost_usd=2))
    with pytest.raises(UsageLimitExceededError):
        Runner(big, meter_provider=meter_provider, usage_limits=UsageLimits(total_cost_usd_limit=1)).run(0)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
        return result


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def prometheus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    metrics_port, app_port, web_port, otlp_port = free_port(), free_port(), free_port(), free_port()
    downstream = start_downstream()
    workers: int = request.param
    config = parse_config(
        sidecar_config(tmp, metrics_port, otlp_port, downstream.endpoint, workers), source="integration.toml"
    )
    sidecar = create_sidecar(config).start() if workers == 1 else Supervisor(config, workers=workers).start()
    registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    app_server, _ = start_http_server(app_port, addr="127.0.0.1", registry=registry)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "rules" / "paymaster.rules.yml")],
        "scrape_configs": [
            {"job_name": "paymaster-sidecar", "static_configs": [
                {"targets": [f"127.0.0.1:{metrics_port}", f"127.0.0.1:{free_port()}"]}]},  # the second is down
            {"job_name": "sdk-app", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]},
        ],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"),
    )  # fmt: skip
    try:
        drive(sidecar, tmp / "ledger.db")
        send_otlp(otlp_port, downstream)
        run_sdk(meter_provider)
        prom = Prometheus(f"http://127.0.0.1:{web_port}")
        wait_for(lambda: ready(prom), "Prometheus to start", tmp)
        wait_for(
            lambda: bool(prom.query("paymaster_rpc_requests_total")), "a first scrape of the sidecar", tmp
        )
        provoke_errors(sidecar, tmp / "ledger.db")
        # Two scrapes of every target after the errors (and the first one before them).
        wait_for(lambda: all(float(r["value"][1]) >= 4 for r in prom.query("count_over_time(up[1m])"))
                 and len(prom.query("up == 1")) == 2, "three scrapes of every target", tmp)  # fmt: skip
        yield prom
    finally:
        process.terminate()
        process.wait(10)
        app_server.shutdown()
        meter_provider.shutdown()
        sidecar.stop(0)
        downstream.server.stop(0)


def ready(prom: Prometheus) -> bool:
    try:
        return bool(urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1).status == 200)
    except OSError:
        return False


def wait_for(condition: Any, what: str, tmp: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(
        f"timed out waiting for {what}; Prometheus log:\n{(tmp / 'prometheus.log').read_text()}"
    )


def resolve(prom: Prometheus, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each query variable's values from Prometheus, in Grafana's multi-value form ``(a|b)``."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = substitute(variable["definition"], values)
        metric, label = definition.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        found = sorted({s[label] for s in prom.get("/api/v1/series", **{"match[]": metric}) if label in s})
        assert found, f"{dashboard['uid']}: variable {variable['name']} ({definition}) resolves to nothing"
        values[variable["name"]] = "(" + "|".join(found) + ")"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in {**BUILTINS, **{f"${k}": v for k, v in values.items()}}.items():
        expr = expr.replace(name, value)
    return expr


@pytest.mark.parametrize("uid", sorted(committed()))
def test_every_panel_query_returns_data(prometheus: Prometheus, uid: str) -> None:
    dashboard = committed()[uid]
    values = resolve(prometheus, dashboard)
    empty = []
    for panel in panels(dashboard):
        for target in panel["targets"]:
            result = prometheus.query(substitute(target["expr"], values))  # a malformed query fails here
            if not result:
                empty.append(f"{panel['title']}: {target['expr']}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_alert_rule_evaluates_and_the_provoked_ones_fire(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    def active() -> set[str]:
        return {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts")["alerts"]}

    deadline = time.monotonic() + 15
    while not active() >= EXPECTED_ALERTS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert active() >= EXPECTED_ALERTS, f"missing: {sorted(EXPECTED_ALERTS - active())}"
    rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
    assert len(rules) == 14
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        result = prometheus.query(rule["query"])
        assert bool(result) == (rule["name"] in EXPECTED_ALERTS), (rule["name"], rule["query"], result)


def test_the_fast_burn_alert_names_the_young_daily_budget(prometheus: Prometheus) -> None:
    alerts = [
        a
        for a in prometheus.get("/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == "PaymasterBudgetFastBurn"
    ]
    assert {(a["labels"]["budget"], a["labels"]["scope_id"]) for a in alerts} >= {("search-daily", "search")}
