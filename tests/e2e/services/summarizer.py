"""A service instrumented with OpenTelemetry only — no Paymaster SDK — for the request-budget tests.

    python -m tests.e2e.services.summarizer OTLP_ENDPOINT

Serves ``POST /summarize`` on a free loopback port (it prints ``{"port": N}`` once listening). Each
request's context is extracted from its headers by the standard propagators (W3C trace context and
baggage), and the "model call" it makes is one GenAI span exported to the sidecar's OTLP receiver as
soon as it ends. Its ``BaggageSpanProcessor`` copies only the ``paymaster.request_budget`` entry onto
its spans: the caller's claim (``paymaster.reservation_id``) must not come along, since this service's
spend is its own and not part of what the calling step reports. It answers with the attributes of its
span and whether anything imported Paymaster.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry import context, propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

REQUEST_KEY = "paymaster.request_budget"
# 300 input and 50 output tokens of gpt-4o at the tests' prices: exactly $0.001.
CALL = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 300,
    "gen_ai.usage.output_tokens": 50,
}


def main() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "summarizer"}))
    provider.add_span_processor(BaggageSpanProcessor(lambda key: key == REQUEST_KEY))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
    tracer = provider.get_tracer("model-client")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            token = context.attach(propagate.extract(dict(self.headers)))
            try:
                with tracer.start_as_current_span("chat gpt-4o", attributes=CALL) as span:
                    attributes: dict[str, Any] = dict(span.attributes or {})  # type: ignore[attr-defined]
            finally:
                context.detach(token)
            body = json.dumps({"span": attributes, "paymaster_imported": "paymaster" in sys.modules}).encode()
            self.send_response(200)
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
        provider.shutdown()


if __name__ == "__main__":
    main()
