"""The trace processor on hand-built exports: which spans are usage, how they are grouped and priced,
what the enriched view serialises to."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector_processor.otlp._view import TraceRequestView
from collector_processor.otlp.attribution import Attributor
from collector_processor.otlp.config import AttributionSection
from collector_processor.otlp.pricing import SpanPricer
from collector_processor.otlp.spend_source import SpendSource
from collector_processor.otlp.traces import TracePlan, TraceProcessor, WindowPolicy
from paymaster.config import parse_config
from paymaster.pricing import CostCalculator
from tests.sidecar.otlp.conftest import PRICES
from tests.sidecar.otlp.payloads import export, span


def window_now() -> WindowPolicy:
    """The receiver's window as of now (an hour back, a minute ahead), taken when a test runs: spans
    are stamped when a test makes them, however long after collection that is."""
    now_ms = time.time_ns() // 1_000_000
    return WindowPolicy(oldest_ms=now_ms - 3_600_000, newest_ms=now_ms + 60_000)


GPT4O = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
         "gen_ai.usage.output_tokens": 500}  # fmt: skip


def processor(mode: str = "auto") -> TraceProcessor:
    return TraceProcessor(
        pricer=SpanPricer(CostCalculator(parse_config(PRICES))),
        attributor=Attributor(AttributionSection()),
        spend_source=SpendSource(mode, hold_ms=0),  # type: ignore[arg-type]
        max_tokens=100_000_000,
    )


def plan_of(
    *spans: Any, resource: dict[str, Any] | None = None, enrich: bool = False, mode: str = "auto",
    window: WindowPolicy | None = None,
) -> tuple[TracePlan, Any]:  # fmt: skip
    return plan_of_export(export(list(spans), resource), enrich=enrich, mode=mode, window=window)


def plan_of_export(
    request: Any, *, enrich: bool = False, mode: str = "auto", window: WindowPolicy | None = None
) -> tuple[TracePlan, Any]:
    """The plan, as the receiver makes it (with the export's bytes); checked against the plan made
    without them (every name looked up on every span), which must be the same."""
    window = window or window_now()
    payload = request.SerializeToString()
    view = TraceRequestView.FromString(payload)
    plan = processor(mode).process(view, window, enrich=enrich, payload=payload)
    alone = TraceRequestView.FromString(payload)
    assert processor(mode).process(alone, window, enrich=enrich) == plan
    assert alone == view
    return plan, view


def test_only_spans_with_token_counts_are_usage() -> None:
    plan, _ = plan_of(
        span(GPT4O),
        span({"http.request.method": "GET"}),
        span({"gen_ai.usage.cost": 0.5, "paymaster.cost_usd": "0.5"}),  # a run span: the sum of its steps
        span({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.completion_tokens": 100}),
    )
    assert (plan.spans, plan.genai, len(plan.items)) == (4, 2, 2)
    assert [item[3] for item in plan.items] == [12_500, 1_500]  # micro-dollars


def test_spans_are_grouped_by_scopes_model_and_quarter_hour_and_charged_at_the_latest_end_in_it() -> None:
    quarter = 1_741_953_600_000  # 2025-03-14 12:00 UTC, on a quarter hour
    at = {"a": [quarter - 60_000, quarter - 1_000, quarter + 1_000], "b": [quarter - 5_000]}
    spans = [
        span({**GPT4O, "paymaster.team": team}, end_ns=end * 1_000_000)
        for team, ends in at.items()
        for end in ends
    ]
    spans.append(span({**GPT4O, "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
                       "paymaster.team": "b"},
                      end_ns=(quarter - 2_000) * 1_000_000))  # fmt: skip
    plan, _ = plan_of(*spans, window=WindowPolicy(oldest_ms=0, newest_ms=quarter + 60_000))
    groups = sorted((g.scopes.team, g.model, g.occurred_ms) for g in plan.groups)
    # Each group is charged at the latest end in its quarter hour among the export's spans: never
    # before any of its own spans, never in another quarter hour (a daily period may end on any of them).
    assert groups == [
        ("a", "gpt-4o", quarter - 1_000),
        ("a", "gpt-4o", quarter + 1_000),
        ("b", "claude-sonnet-4-5", quarter - 1_000),
        ("b", "gpt-4o", quarter - 1_000),
    ]
    assert sorted(item[2] for item in plan.items) == [0, 0, 1, 2, 3]


def test_cache_and_reasoning_counts_reported_outside_input_and_output_are_added_in() -> None:
    plan, _ = plan_of(
        span({**GPT4O, "gen_ai.usage.input_tokens": 200, "gen_ai.usage.cache_read_input_tokens": 800})
    )
    (item,) = plan.items
    assert item[4:7] == (1000, 500, 800)  # input, output, cache read
    assert item[3] == 10_500  # 200 * 0.005 + 800 * 0.0025 + 500 * 0.015, per 1k


def test_spans_older_than_the_idempotency_window_are_not_charged() -> None:
    window = window_now()
    plan, _ = plan_of(span(GPT4O, end_ns=(window.oldest_ms - 1) * 1_000_000), span(GPT4O), window=window)
    assert len(plan.items) == 1 and plan.outcomes["stale"] == 1


def test_under_spend_source_metrics_spans_are_priced_but_not_charged() -> None:
    plan, _ = plan_of(span(GPT4O), mode="metrics")
    assert plan.items == [] and plan.outcomes["skipped"] == 1 and plan.priced["configured"] == 1


def test_enrichment_sets_the_cost_attributes_and_the_view_serialises_to_a_valid_export() -> None:
    plan, view = plan_of(span(GPT4O), span({**GPT4O, "gen_ai.request.model": "mystery-model"}), enrich=True)
    out = trace_service_pb2.ExportTraceServiceRequest.FromString(view.SerializeToString())
    attributes = [{a.key: a.value for a in s.attributes} for s in out.resource_spans[0].scope_spans[0].spans]
    assert attributes[0]["gen_ai.usage.cost"].double_value == 0.0125
    assert attributes[0]["gen_ai.usage.cost.source"].string_value == "configured"
    assert "gen_ai.usage.cost" not in attributes[1]
    assert attributes[1]["gen_ai.usage.cost.source"].string_value == "unknown"
    assert attributes[0]["gen_ai.usage.input_tokens"].int_value == 1000  # everything else as it came
    assert plan.outcomes["unpriced"] == 1


def test_a_span_carrying_a_reservation_id_is_left_to_the_sdk_whatever_its_price() -> None:
    """The SDK charges what it claimed (commit, lease, replayed journal): the receiver charges nothing for
    it, settles no reservation, and counts it ``sdk`` — priced or not; an empty value claims nothing."""
    plan, _ = plan_of(
        span({**GPT4O, "paymaster.reservation_id": "r-1"}),
        span({**GPT4O, "gen_ai.request.model": "mystery-model", "paymaster.reservation_id": "fail-open:9"}),
        span({**GPT4O, "paymaster.reservation_id": ""}),
        span({**GPT4O, "gen_ai.request.model": "mystery-model"}),
        resource={"paymaster.team": "ml"},
    )
    (item,) = plan.items  # the span with an empty value
    assert item[3] == 12_500
    assert (plan.outcomes["sdk"], plan.outcomes["unpriced"]) == (2, 1)
    assert plan.priced == {"configured": 2, "unknown": 2}


def test_a_scope_attribute_on_some_spans_overrides_the_resource_for_those_spans_only() -> None:
    plan, _ = plan_of(
        span(GPT4O), span({**GPT4O, "paymaster.team": "ads"}), span(GPT4O), resource={"paymaster.team": "ml"}
    )
    teams = [plan.groups[item[2]].scopes.team for item in plan.items]
    assert teams == ["ml", "ads", "ml"]


def test_attribute_names_inside_string_values_are_not_taken_for_attributes() -> None:
    content = "set paymaster.team=ads, gen_ai.usage.cache_read.input_tokens=800, paymaster.reservation_id=r-1"
    plan, _ = plan_of(span({**GPT4O, "gen_ai.prompt.0.content": content}), resource={"paymaster.team": "ml"})
    (item,) = plan.items
    assert (item[3], item[4:7]) == (12_500, (1000, 500, 0))  # no cache read
    assert plan.outcomes["sdk"] == 0 and plan.groups[0].scopes.team == "ml"


def test_counts_are_read_from_their_own_spans_when_spans_without_usage_come_between() -> None:
    plan, _ = plan_of(
        span({"http.request.method": "GET"}),
        span(GPT4O),
        span({"db.system": "redis"}),
        span({**GPT4O, "gen_ai.usage.input_tokens": 200, "gen_ai.usage.cache_read_input_tokens": 800}),
    )
    assert [(item[3], item[4:7]) for item in plan.items] == [
        (12_500, (1000, 500, 0)),
        (10_500, (1000, 500, 800)),
    ]


def test_planning_leaves_every_span_as_received_when_not_enriching() -> None:
    """Columns the first span has are read in one pass; the spans that lack them get nothing added."""
    request = export([
        span({**GPT4O, "enduser.id": "ada", "gen_ai.usage.cache_read.input_tokens": 100, "paymaster.team": "x"}),
        span(GPT4O),
        span({**GPT4O, "enduser.id": None}),  # an empty value: kept as it is
        span({"gen_ai.usage.prompt_tokens": 10, "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}),
    ])  # fmt: skip
    plan, view = plan_of_export(request)
    assert view == TraceRequestView.FromString(request.SerializeToString())
    assert [plan.groups[item[2]].scopes.user for item in plan.items] == ["ada", "", "", ""]


def test_cache_counts_of_any_scope_of_the_export_are_read() -> None:
    """The export's bytes prove no span has a cache count only when every usage key is accounted for."""
    cached = {**GPT4O, "gen_ai.usage.input_tokens": 200, "gen_ai.usage.cache_read_input_tokens": 800}
    for first, second in ((GPT4O, cached), (cached, GPT4O)):
        request = trace_service_pb2.ExportTraceServiceRequest()
        for attributes in (first, second):
            resource_spans = request.resource_spans.add()
            resource_spans.scope_spans.add().spans.extend([span(attributes), span(attributes)])
        plan, _ = plan_of_export(request)
        reads = [item[6] for item in plan.items]
        assert reads == ([0, 0, 800, 800] if first is GPT4O else [800, 800, 0, 0])


NAMES = [
    "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.reasoning_tokens", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
    "paymaster.team", "paymaster.user", "enduser.id", "gen_ai.agent.name", "paymaster.cost_usd",
    "paymaster.reservation_id", "gen_ai.prompt.0.content",
]  # fmt: skip
VALUES = st.sampled_from([0, 7, 1000, -3, "gpt-4o", "openai", "ada", "", "0.01", "r-1", None, 1.5,
                          "paymaster.team gen_ai.usage.reasoning_tokens"])  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=8), max_size=6), max_size=3)
)
def test_the_plan_is_the_same_with_and_without_the_export_bytes(scopes: list[list[dict[str, Any]]]) -> None:
    """``plan_of_export`` checks it: whatever names the spans carry, in whatever values."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        export([], {"service.name": "svc"}).resource_spans[0].resource.attributes
    )
    for attributes in scopes:
        resource_spans.scope_spans.add().spans.extend(span(a) for a in attributes)
    plan_of_export(request, enrich=True)
