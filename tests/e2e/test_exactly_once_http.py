"""Every cent exactly once when spend reaches the ledger over HTTP too.

Hypothesis draws units of spend and, for each, the path that charges it and how often its requests
are retried: a reservation made over HTTP (with an ``Idempotency-Key``, sent again) and committed
over HTTP or gRPC (the commit sent again, over either), usage recorded over HTTP and re-sent over
either transport with the same ``usage_id``, and plain GenAI spans exported to the OTLP receiver
(exported twice). A unit reserved over HTTP may also have its span exported carrying the
reservation id, as the SDK's spans do: the receiver leaves that span to its reservation. Afterwards
the sidecar's total for the run's team is exactly the money spent, on SQLite and on a real Redis.
"""

from __future__ import annotations

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
        workdir = tmp_path_factory.mktemp(name)
        http = f'[http]\nenabled = true\nlisten = "127.0.0.1:{free_port()}"\n'
        live[name] = LiveSidecar(workdir, store=store.format(dir=workdir), extra=http).start()
    yield live
    for side in live.values():
        side.close()
    redis.stop()


def http_of(live: LiveSidecar) -> httpx.Client:
    assert live.sidecar is not None
    api = next(c for c in live.sidecar.components if hasattr(c, "listener"))
    return httpx.Client(base_url=f"http://{api.address}", timeout=10)


def charge(live: LiveSidecar, client: httpx.Client, tracer: object, unit: Unit, team: str) -> Decimal:
    """Charge ``unit`` the way it says, retries included; what it really cost."""
    cost = unit.micros * MICRO
    key = uuid.uuid4().hex
    if unit.kind == "reserve":
        body = {"scopes": {"team": team}, "estimate_usd": str(cost)}
        rid = ""
        for _ in range(2):  # a Reserve whose answer was lost, sent again with its key
            reply = client.post("/v1/reservations", json=body, headers={"Idempotency-Key": key}).json()
            assert rid in ("", reply["reservation_id"])
            rid = reply["reservation_id"]
        if unit.span:
            span(tracer, unit.tokens, {"paymaster.reservation_id": rid})
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
                reply = client.post(
                    "/v1/usage", json={"usage_id": key, "scopes": {"team": team}, "cost_usd": str(cost)}
                )
                assert reply.status_code == 200, reply.text
            else:
                live.stub.RecordUsage(
                    pb.RecordUsageRequest(usage_id=key, scopes=pb.ScopeIds(team=team), cost_usd=str(cost)),
                    timeout=10,
                )
        return cost
    span(tracer, unit.tokens, {})
    tokens_in, tokens_out = unit.tokens
    return (tokens_in * 2 + tokens_out * 8) * MICRO  # gpt-4o in live_sidecar.PRICES


def span(tracer: object, tokens: tuple[int, int], extra: dict[str, str]) -> None:
    attributes = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                  "gen_ai.usage.input_tokens": tokens[0], "gen_ai.usage.output_tokens": tokens[1], **extra}  # fmt: skip
    with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):  # type: ignore[attr-defined]
        pass


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_http_spend_is_charged_exactly_once_with_grpc_and_otlp(
    sidecars: dict[str, LiveSidecar], store: str
) -> None:
    live = sidecars[store]

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(units, min_size=1, max_size=6))
    def differential(drawn: list[Unit]) -> None:
        team = f"t-{uuid.uuid4().hex[:12]}"
        provider = TracerProvider(
            resource=Resource.create({"service.name": "gateway", "paymaster.team": team})
        )
        exporter = OTLPSpanExporter(endpoint=live.otlp_address, insecure=True, timeout=10)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # every span exported twice
        tracer = provider.get_tracer("http-client")
        with http_of(live) as client:
            spent = sum((charge(live, client, tracer, u, team) for u in drawn), Decimal(0))
        provider.shutdown()
        assert live.charged(team) == spent

    differential()
