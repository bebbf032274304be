"""Every cent exactly once when spend reaches the ledger over HTTP too.

Hypothesis draws units of spend and, for each, the path that charges it and how often its requests
are retried: a reservation made over HTTP (with an ``Idempotency-Key``, sent again) and committed
over HTTP or gRPC (the commit sent again, over either), usage recorded over HTTP and re-sent over
either transport with the same ``usage_id``, and plain GenAI spans exported to the OTLP receiver
(exported twice). A unit reserved over HTTP may also have its span exported carrying the
reservation id, as the SDK's spans do: the receiver leaves that span to its reservation. Afterwards
the sidecar's total for the run's team is exactly the money spent, on SQLite and on a real Redis,
served by one process and by two worker processes (each unit on a connection of its own, so on either
worker; the test checks both answered).
Half of the examples run inside a request budget opened over HTTP (every reservation and record
names it, every span carries ``paymaster.request_budget``): its spend is that same total too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from paymaster.v1 import budget_pb2 as pb
from tests.e2e.live_sidecar import LiveSidecar
from tests.sdk.sidecar_support import free_port
from tests.sidecar.redisserver import RedisServer

pytestmark = pytest.mark.slow

MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class Unit:
    kind: str
    """``reserve`` (HTTP reservation, then commit), ``record`` (HTTP RecordUsage) or ``span`` (OTLP)."""
    micros: int
    tokens: tuple[int, int]
    sends: tuple[str, ...]
    """The transports of the charging request and its retries, in order."""
    span: bool
    """``reserve``: its span is exported too, carrying the reservation id."""


units = st.builds(
    Unit,
    kind=st.sampled_from(["reserve", "record", "span"]),
    micros=st.integers(0, 5000),
    tokens=st.tuples(st.integers(0, 300), st.integers(0, 100)),
    sends=st.lists(st.sampled_from(["http", "grpc"]), min_size=1, max_size=3).map(tuple),
    span=st.booleans(),
)


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveSidecar]]:
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    live: dict[str, LiveSidecar] = {}
    for name, store in (
        ("sqlite", 'path = "{dir}/sidecar.db"'),
        ("redis", f'kind = "redis"\nurl = "{redis.url}"\nnamespace = "http-{uuid.uuid4().hex[:8]}"'),
    ):
        for workers in (1, 2):
            workdir = tmp_path_factory.mktemp(name)
            http = f'[http]\nenabled = true\nlisten = "127.0.0.1:{free_port()}"\n'
            ledger = store.format(dir=workdir).replace("http-", f"http{workers}-")
            key = name if workers == 1 else f"{name}-2-workers"
            live[key] = LiveSidecar(workdir, store=ledger, extra=http, workers=workers).start()
    yield live
    for side in live.values():
        side.close()
    redis.stop()


def http_of(live: LiveSidecar) -> httpx.Client:
    """A client of the HTTP/JSON API: one connection, so one worker when there are several."""
    listen = re.search(r'listen = "([^"]+)"', live.extra)
    assert listen is not None
    return httpx.Client(base_url=f"http://{listen.group(1)}", timeout=10)


def charge(
    live: LiveSidecar, client: httpx.Client, tracer: object, unit: Unit, team: str, request: str = ""
) -> Decimal:
    """Charge ``unit`` the way it says, retries included, inside the request budget ``request`` when
    one is given; what it really cost."""
    cost = unit.micros * MICRO
    key = uuid.uuid4().hex
    named = {"request_budget_id": request} if request else {}
    on_span = {"paymaster.request_budget": request} if request else {}
    if unit.kind == "reserve":
        body = {"scopes": {"team": team}, "estimate_usd": str(cost), **named}
        rid = ""
        for _ in range(2):  # a Reserve whose answer was lost, sent again with its key
            reply = client.post("/v1/reservations", json=body, headers={"Idempotency-Key": key}).json()
            assert rid in ("", reply["reservation_id"])
            rid = reply["reservation_id"]
        if unit.span:
            span(tracer, unit.tokens, {"paymaster.reservation_id": rid, **on_span})
        for via in unit.sends:
            if via == "http":
                assert (
                    client.post(f"/v1/reservations/{rid}/commit", json={"actual_usd": str(cost)}).status_code
                    == 200
                )
            else:
                live.stub.Commit(pb.CommitRequest(reservation_id=rid, actual_usd=str(cost)), timeout=10)
        return cost
    if unit.kind == "record":
        for via in unit.sends:
            if via == "http":
                record = {"usage_id": key, "scopes": {"team": team}, "cost_usd": str(cost), **named}
                reply = client.post("/v1/usage", json=record)
                assert reply.status_code == 200, reply.text
            else:
                live.stub.RecordUsage(
                    pb.RecordUsageRequest(
                        usage_id=key,
                        scopes=pb.ScopeIds(team=team),
                        cost_usd=str(cost),
                        request_budget_id=request,
                    ),
                    timeout=10,
                )
        return cost
    span(tracer, unit.tokens, on_span)
    tokens_in, tokens_out = unit.tokens
    return (tokens_in * 2 + tokens_out * 8) * MICRO  # gpt-4o in live_sidecar.PRICES


def span(tracer: object, tokens: tuple[int, int], extra: dict[str, str]) -> None:
    attributes = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                  "gen_ai.usage.input_tokens": tokens[0], "gen_ai.usage.output_tokens": tokens[1], **extra}  # fmt: skip
    with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):  # type: ignore[attr-defined]
        pass


@pytest.mark.parametrize("store", ["sqlite", "redis", "sqlite-2-workers", "redis-2-workers"])
def test_http_spend_is_charged_exactly_once_with_grpc_and_otlp(
    sidecars: dict[str, LiveSidecar], store: str
) -> None:
    live = sidecars[store]

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(units, min_size=1, max_size=6), st.booleans())
    def differential(drawn: list[Unit], in_request: bool) -> None:
        team = f"t-{uuid.uuid4().hex[:12]}"
        provider = TracerProvider(
            resource=Resource.create({"service.name": "gateway", "paymaster.team": team})
        )
        exporter = OTLPSpanExporter(endpoint=live.otlp_address, insecure=True, timeout=10)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # every span exported twice
        tracer = provider.get_tracer("http-client")
        request = ""
        if in_request:
            with http_of(live) as client:
                opened = client.post("/v1/requests", json={"limit_usd": "1000"})
            assert opened.status_code == 201, opened.text
            request = opened.json()["id"]
        spent = Decimal(0)
        for unit in drawn:  # a connection each: with workers, on whichever worker the kernel picks
            with http_of(live) as client:
                spent += charge(live, client, tracer, unit, team, request)
        provider.shutdown()
        assert live.charged(team) == spent
        if request:
            with http_of(live) as client:
                status = client.get(f"/v1/requests/{request}/status").json()
            assert Decimal(status["used_usd"]) == spent
            assert Decimal(status["reserved_usd"]) == 0

    differential()
    if live.workers > 1:
        live.tally()
        assert live.spread["http"] == {0, 1}, "the HTTP requests did not reach every worker"
