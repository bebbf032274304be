"""The service a request enters, for the request-budget tests.

    python -m tests.e2e.services.entry SIDECAR OTLP_ENDPOINT RETRIEVAL_URL LIMIT_USD STEPS

Opens a request budget of ``LIMIT_USD`` for the request and, inside it, runs a governed pipeline of
``STEPS`` planning steps (team ``planner``), each of which calls the retrieval service over HTTP with an
instrumented httpx client — no custom header: the request budget's id travels in the W3C ``baggage``
header the standard propagators write. A step whose call is refused fails with the retrieval service's
words. Prints one JSON line: the request budget's id, every step's outcome, and the spans of both
services.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster import Pipeline, Runner, Scopes, SidecarBudget, Step, StepConfig, UsageLimitExceededError
from paymaster.processor import ReservationSpanProcessor

COST = "0.005"


class Output:
    cost_usd = COST
    token_counts = 50


class Planner:
    """Plans a step of the answer with the retrieval service's help; its own cost is ``COST``."""

    def __init__(self, retrieval: str, replies: list[dict[str, Any]]) -> None:
        self.retrieval = retrieval
        self.replies = replies

    def run(self, data: Any) -> Output:
        with httpx.Client(timeout=30) as client:
            reply = client.post(f"{self.retrieval}/retrieve", json={"round": len(self.replies)})
        answer = reply.json()
        self.replies.append({"status": reply.status_code, **answer})
        if reply.status_code != 200:
            raise RuntimeError(f"the retrieval service answered {reply.status_code}: {answer['error']}")
        return Output()


def main() -> None:
    sidecar, otlp, retrieval, limit, steps = sys.argv[1:6]
    spans = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "planner"}))
    provider.add_span_processor(ReservationSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True)))
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    replies: list[dict[str, Any]] = []
    planner = Planner(retrieval, replies)
    pipeline = Pipeline(
        [Step(f"plan-{i}", planner, config=StepConfig(expected_cost_usd=COST)) for i in range(int(steps))]
    )
    budget = SidecarBudget(sidecar, scopes=Scopes(team="planner"), journal_dir=None, deadline_s=5)
    with budget, budget.request_budget(limit_usd=limit, name="user question") as request:
        try:
            result = Runner(pipeline, budget=budget, tracer_provider=provider).run(0)
        except UsageLimitExceededError as exc:
            assert exc.result is not None
            result = exc.result
    provider.shutdown()
    report = {
        "request_id": request.id,
        "steps": [
            {
                "name": s.name,
                "success": s.success,
                "cost_usd": str(s.cost_usd or 0),
                "feedback": s.feedback,
                "decision": s.budget.decision if s.budget else None,
            }
            for s in result.step_history
        ],
        "spans": [{"name": s.name, **dict(s.attributes or {})} for s in spans.get_finished_spans()],
        "replies": replies,
    }
    print(json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
