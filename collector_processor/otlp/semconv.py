"""The attribute names the OTLP receiver reads, after the OpenTelemetry GenAI semantic conventions.

Where a name was renamed, the current one comes first and the deprecated one second: instrumentations
such as OpenLLMetry still send the old names, and both are read.
"""

from __future__ import annotations

__all__ = [
    "CACHE_CREATION",
    "CACHE_READ",
    "COST",
    "COST_SOURCE",
    "INPUT",
    "MODEL",
    "OUTPUT",
    "PROVIDER",
    "REASONING",
    "REQUEST_BUDGET",
    "RESERVATION",
    "SDK_COST",
]

INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
CACHE_READ = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
CACHE_CREATION = ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens")
REASONING = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system")
MODEL = ("gen_ai.response.model", "gen_ai.request.model")
SDK_COST = "paymaster.cost_usd"
"""The SDK's exact cost of a call, a decimal string."""
RESERVATION = "paymaster.reservation_id"
"""The SDK's claim on a span: the id under which the SDK charges its spend itself (a reservation, a
lease, a replayed journal entry, or the SDK step span that records the call). A span carrying any
non-empty value is never charged by the receiver, which does nothing else with the id."""
REQUEST_BUDGET = "paymaster.request_budget"
"""The request budget a span's spend belongs to as well (``OpenRequestBudget``): the SDK puts it on its
spans from the OpenTelemetry baggage entry of the same name, and OpenTelemetry's ``BaggageSpanProcessor``
copies it onto the spans of a service without the SDK. A span the receiver charges is charged to it too
(while it is open); one that carries a claim (``RESERVATION``) is not charged here at all."""
COST = "gen_ai.usage.cost"
"""Set by the receiver: USD, a double."""
COST_SOURCE = "gen_ai.usage.cost.source"
"""Set by the receiver: configured, library or unknown."""
