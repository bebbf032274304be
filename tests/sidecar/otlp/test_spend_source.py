"""``SpendSource``: a service's spend comes from its spans or its token metrics, never both — also once
more services have been heard of than it remembers."""

from __future__ import annotations

from collector_processor.otlp.spend_source import MAX_SERVICES, SpendSource

HOLD_MS = 60_000
T0 = 1_700_000_000_000


def test_a_service_is_held_then_charged_from_metrics_until_it_sends_spans() -> None:
    source = SpendSource("auto", hold_ms=HOLD_MS)
    svc = ("shop", "checkout")
    assert source.metrics_verdict(svc, T0) == "hold"
    assert source.metrics_verdict(svc, T0 + HOLD_MS) == "charge"
    source.saw_genai_spans(svc)
    assert source.metrics_verdict(svc, T0 + HOLD_MS + 1) == "skip"
    assert source.spans_charged(svc)


def test_a_forgotten_span_service_is_held_again_never_charged_on_top_of_its_spans() -> None:
    """Past the bound the least recently heard service is forgotten whole — that it sends spans and when
    it was first heard of — so its metrics are held again (and skipped once its spans show up), not
    charged at once as a service heard of long ago that never sent spans."""
    source = SpendSource("auto", hold_ms=HOLD_MS)
    quiet, busy = ("shop", "quiet"), ("shop", "busy")
    for svc in (quiet, busy):
        assert source.metrics_verdict(svc, T0) == "hold"
        source.saw_genai_spans(svc)
    for i in range(MAX_SERVICES):
        source.saw_genai_spans(("flood", str(i)))
        if i % 1000 == 0:
            source.saw_genai_spans(busy)  # still sending spans: never the one forgotten
    later = T0 + 10 * HOLD_MS
    assert source.metrics_verdict(busy, later) == "skip"
    assert source.metrics_verdict(quiet, later) == "hold"
    source.saw_genai_spans(quiet)
    assert source.metrics_verdict(quiet, later + HOLD_MS) == "skip"
    assert source.remembered() <= MAX_SERVICES


def test_metrics_only_services_are_remembered_within_the_bound_too() -> None:
    source = SpendSource("auto", hold_ms=HOLD_MS)
    for i in range(MAX_SERVICES + 10):
        source.metrics_verdict(("metrics-only", str(i)), T0)
    assert source.remembered() == MAX_SERVICES
    # The oldest were forgotten and are held again; the newest are still charged after their hold.
    assert source.metrics_verdict(("metrics-only", "0"), T0 + HOLD_MS) == "hold"
    assert source.metrics_verdict(("metrics-only", str(MAX_SERVICES + 9)), T0 + HOLD_MS) == "charge"
