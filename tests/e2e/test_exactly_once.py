"""Every cent exactly once when the SDK and the sidecar's OTLP receiver both see the same spend.

The contract (docs/otlp.md, "Who charges a span"): a span carrying ``paymaster.reservation_id`` is
charged by the SDK that put it there — through the reservation's commit, the lease's commit or the
replayed journal — and never by the receiver, which does not commit, record against or release a
reservation on a span's word. Each test here runs the documented setup end to end: a real sidecar
with its OTLP receiver on, the SDK with its reservation span processor, and its real OTLP exporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from paymaster import FAIL_OPEN, LOCAL_ONLY_LIMITS, LeasePolicy, Runner, Scopes, SidecarBudget, UsageLimits
from tests.e2e.live_sidecar import LiveSidecar, SpanPipe, traced
from tests.sdk.agents import FixedMetricAgent
from tests.sdk.sidecar_support import loop_of

pytestmark = pytest.mark.slow

SPANS_CHARGED = "paymaster_otlp_spans_charged_total"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveSidecar]:
    """A sidecar with OTLP on, on a SQLite file; started by the test when it wants it up."""
    side = LiveSidecar(tmp_path, store=f'path = "{tmp_path / "sidecar.db"}"')
    yield side
    side.close()


def shut(provider: TracerProvider) -> None:
    provider.force_flush()
    provider.shutdown()


def test_a_leases_spans_reaching_the_receiver_first_never_settle_the_lease(live: LiveSidecar) -> None:
    """Ten steps drawn from one lease, each span exported the moment its step ends, while the lease is
    still held: the lease is committed by the SDK with all ten steps, not by the first span with one."""
    live.start()
    live.budget("loop", "loop", "10")
    pipe = SpanPipe(live)
    provider = traced("loop", pipe)
    with SidecarBudget(
        live.address, scopes=Scopes(team="loop"), lease=LeasePolicy(slice_usd="1"), journal_dir=None
    ) as budget:
        result = Runner(
            loop_of(FixedMetricAgent(cost="0.0075"), times=10), budget=budget, tracer_provider=provider
        ).run(0)
    shut(provider)
    assert result.total_cost_usd == Decimal("0.075")
    assert pipe.exported > 10  # the spans went out during the run, not after it
    assert live.charged("loop") == Decimal("0.075")
    assert live.reserved("loop") == 0
    # Each step's span is the SDK's to charge, and the metric says so.
    assert live.counter(SPANS_CHARGED, outcome="sdk") == 10
    assert live.counter(SPANS_CHARGED) == 10


def test_fail_open_spend_is_charged_once_by_the_replay_and_never_by_its_spans(
    live: LiveSidecar, tmp_path: Path
) -> None:
    """Two steps run while the sidecar is away; once it is back their spans arrive, then the journal is
    replayed: $0.015 spent, $0.015 charged."""
    pipe = SpanPipe(live)
    provider = traced("away", pipe)
    budget = SidecarBudget(
        live.address,
        scopes=Scopes(team="away"),
        fail_policy=FAIL_OPEN,
        journal_dir=tmp_path / "journal",
        breaker_reset_s=0.05,
    )
    result = Runner(
        loop_of(FixedMetricAgent(cost="0.0075"), times=2), budget=budget, tracer_provider=provider
    ).run(0)
    assert result.total_cost_usd == Decimal("0.015")
    assert {s.budget.mode for s in result.walk() if s.budget} == {"fail_open"}
    live.start()
    pipe.flush()  # the spans first: they name ids the sidecar has never seen
    assert budget.flush(timeout_s=10) == 0
    shut(provider)
    budget.close()
    assert live.charged("away") == Decimal("0.015")
    assert live.counter(SPANS_CHARGED, outcome="sdk") == 2
    assert live.counter(SPANS_CHARGED, outcome="reservation") == 0


def test_local_only_spend_is_charged_by_the_receiver_once(live: LiveSidecar) -> None:
    """Under local_only_limits the SDK charges nothing: the step spans carry no reservation id and the
    receiver charges each once, however often they are exported."""
    pipe = SpanPipe(live)
    provider = traced("local", pipe)
    with SidecarBudget(
        live.address, scopes=Scopes(team="local"), fail_policy=LOCAL_ONLY_LIMITS, journal_dir=None
    ) as budget:
        result = Runner(
            loop_of(FixedMetricAgent(cost="0.0075"), times=3),
            budget=budget,
            usage_limits=UsageLimits(total_cost_usd_limit=1),
            tracer_provider=provider,
        ).run(0)
    live.start()
    spans = list(pipe.waiting)
    pipe.flush()
    assert pipe.exporter.export(spans).name == "SUCCESS"  # an exporter's retry
    shut(provider)
    assert result.total_cost_usd == Decimal("0.0225")
    assert live.charged("local") == Decimal("0.0225")
    assert live.counter(SPANS_CHARGED, outcome="charged") == 3
    assert live.counter(SPANS_CHARGED, outcome="duplicate") == 3
