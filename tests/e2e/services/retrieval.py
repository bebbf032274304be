"""A downstream service with a governed pipeline behind a small HTTP server, for the request-budget tests.

    python -m tests.e2e.services.retrieval SIDECAR OTLP_ENDPOINT SUMMARIZER_URL

Serves ``POST /retrieve`` on a free loopback port (it prints ``{"port": N}`` once listening). Each
request's context — trace and baggage, so the caller's request budget — is extracted from its headers
by the standard propagators and made current while a one-step governed run handles it: the step
reserves against team ``retrieval`` and, because the baggage names one, against the request budget too.
Its agent calls the summarizer service through an instrumented httpx client (the baggage travels on).
A denial is answered ``402`` with the ``BudgetExceededError``'s words, which is how the caller sees it.
Spans go to the sidecar's OTLP receiver (they carry the SDK's claims: never charged twice) and are
returned with the answer.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from opentelemetry import context, propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paymaster import BudgetExceededError, Runner, Scopes, SidecarBudget, Step, StepConfig
from paymaster.processor import ReservationSpanProcessor

COST = "0.02"


class Output:
    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.cost_usd = COST
        self.token_counts = 100


class Retriever:
    """Looks something up, has it summarised by the summarizer service, and reports its own cost."""

    def __init__(self, summarizer: str) -> None:
        self.summarizer = summarizer

    def run(self, data: Any) -> Output:
        with httpx.Client() as client:
            reply = client.post(f"{self.summarizer}/summarize", json={"text": data})
        reply.raise_for_status()
        return Output(reply.json())


def main() -> None:
    sidecar, otlp, summarizer = sys.argv[1:4]
    spans = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "retrieval"}))
    provider.add_span_processor(ReservationSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True)))
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    budget = SidecarBudget(sidecar, scopes=Scopes(team="retrieval"), journal_dir=None, deadline_s=5)
    step = Step("retrieve", Retriever(summarizer), config=StepConfig(expected_cost_usd=COST))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            token = context.attach(propagate.extract(dict(self.headers)))
            spans.clear()
            try:
                result = Runner(step, budget=budget, tracer_provider=provider).run("the question")
                status, answer = (
                    200,
                    {"cost_usd": str(result.total_cost_usd), "summary": result.output.summary},
                )
            except BudgetExceededError as exc:
                status, answer = 402, {"error": str(exc), "deciding_budget_id": exc.deciding_budget_id}
            finally:
                context.detach(token)
            answer["spans"] = [
                {"name": s.name, **dict(s.attributes or {})} for s in spans.get_finished_spans()
            ]
            body = json.dumps(answer, default=str).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    finally:
        budget.close()
        provider.shutdown()


if __name__ == "__main__":
    main()
