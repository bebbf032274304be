"""One request across three services, held to one request budget, end to end.

Three real processes and a real sidecar (its budget API and OTLP receiver on loopback, on SQLite and on
a real redis-server): the *planner* (``services/entry.py``) opens a $0.10 request budget and runs a
governed pipeline whose every step calls the *retrieval* service over HTTP with an instrumented httpx
client; retrieval (``services/retrieval.py``) runs its own governed step for each call, which calls the
*summarizer* (``services/summarizer.py``), a service instrumented with OpenTelemetry only, whose model
call reaches the sidecar as an OTLP span. No custom header anywhere: the request budget's id travels in
the W3C ``baggage`` header through the standard propagators.

Each planning step costs $0.005, each retrieval $0.02 and each summary $0.001. Three rounds cost $0.078;
in the fourth, retrieval's reservation would take the request past $0.10 and is denied there; the
planner sees its call refused with retrieval's words and stops. The request budget holds exactly what
the three services spent — the SDKs' commits and the receiver's charge of the OpenTelemetry-only spans,
each once, although every service exports its spans — and the spend of the governed services stops
within one in-flight reservation of the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from paymaster.v1 import budget_pb2 as pb
from tests.e2e.live_sidecar import LiveSidecar
from tests.sidecar.redisserver import RedisServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "paymaster.request_budget"
D = Decimal


class Service:
    """A service process on a free loopback port (it prints ``{"port": N}`` once it listens)."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"tests.e2e.services.{module}", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"{module} did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture(params=["sqlite", "redis"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveSidecar]:
    redis: RedisServer | None = None
    if request.param == "redis":
        redis = RedisServer(tmp_path / "redis").start()
        store = f'kind = "redis"\nurl = "{redis.url}"\nnamespace = "rq-{uuid.uuid4().hex[:8]}"'
    else:
        store = f'path = "{tmp_path / "sidecar.db"}"'
    side = LiveSidecar(tmp_path, store=store).start()
    yield side
    side.close()
    if redis is not None:
        redis.stop()


def run_request(live: LiveSidecar, limit: str, steps: int) -> dict[str, Any]:
    summarizer = Service("summarizer", live.otlp_address)
    retrieval = Service("retrieval", live.address, live.otlp_address, summarizer.url)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.e2e.services.entry", live.address, live.otlp_address, retrieval.url,
             limit, str(steps)],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        errors = retrieval.stop() + summarizer.stop()
    assert done.returncode == 0, done.stderr + errors
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_one_request_budget_across_three_services(live: LiveSidecar) -> None:
    report = run_request(live, "0.10", steps=6)
    request_id = report["request_id"]
    steps = report["steps"]
    # Three rounds ran; in the fourth the retrieval service was denied and the planner was told so.
    assert [s["success"] for s in steps] == [True, True, True, False]
    assert steps[3]["decision"] == "allow"  # the planner's own step was admitted ...
    assert "the retrieval service answered 402" in steps[3]["feedback"]  # ... its call was refused
    denial = report["replies"][3]
    assert denial["deciding_budget_id"] == request_id
    assert denial["error"].startswith(f"Denied by request budget 'user question' (request={request_id})")
    assert denial["error"] in steps[3]["feedback"]
    assert [r["status"] for r in report["replies"]] == [200, 200, 200, 402]

    # The request budget holds exactly what the three services spent, by service.
    status = live.stub.GetBudgetStatus(pb.GetBudgetStatusRequest(request_budget_id=request_id), timeout=5)
    by_service = {s.service: D(s.used_usd) for s in status.request.by_service}
    assert by_service == {"planner": D("0.015"), "retrieval": D("0.06"), "summarizer": D("0.003")}
    assert D(status.used_usd) == D("0.078") and D(status.reserved_usd) == 0
    governed = by_service["planner"] + by_service["retrieval"]
    assert governed <= D("0.10") and D("0.10") - D(status.used_usd) < D("0.02") + D("0.005")
    # Each service's own scopes were charged once, although every one of them exported its spans.
    assert live.charged("planner") == D("0.015") and live.charged("retrieval") == D("0.06")
    summary = live.stub.GetUsage(pb.GetUsageRequest(scopes=pb.ScopeIds(agent="summarizer")), timeout=5)
    assert D(summary.total.cost_usd) == D("0.003")
    assert live.counter("paymaster_otlp_spans_charged_total", outcome="charged") == 3  # the summaries
    assert live.counter("paymaster_otlp_spans_charged_total", outcome="sdk") == 6  # the SDKs' steps

    # Every service's spans carry the request budget: a trace view shows where the money went.
    planner_steps = [s for s in report["spans"] if s["name"].startswith("invoke_agent")]
    assert len(planner_steps) == 4 and all(s[KEY] == request_id for s in planner_steps)
    assert all(s.get(KEY) == request_id for s in report["spans"] if s["name"].startswith("POST"))
    for reply in report["replies"]:
        retrieval_steps = [s for s in reply["spans"] if s["name"].startswith("invoke_agent")]
        assert retrieval_steps and all(s[KEY] == request_id for s in retrieval_steps)
    summaries = [r["summary"] for r in report["replies"] if r["status"] == 200]
    assert all(
        s["span"][KEY] == request_id and "paymaster.reservation_id" not in s["span"] for s in summaries
    )
    assert not any(s["paymaster_imported"] for s in summaries)  # OpenTelemetry only, really
