"""The column helpers of the trace processor: a column read in one pass leaves every span as it came,
and names are ruled out from the export's bytes only where no span can carry them."""

from __future__ import annotations

from typing import Any

from collector_processor.otlp._columns import Columns, Presence
from collector_processor.otlp._view import TraceRequestView
from tests.sidecar.otlp.payloads import any_value, export, span

INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")


def view_of(*attributes: dict[str, Any]) -> tuple[Any, bytes]:
    payload = export([span(a) for a in attributes]).SerializeToString()
    return TraceRequestView.FromString(payload), payload


def columns_of(view: Any) -> Columns:
    return Columns([s.attributes for s in view.resource_spans[0].scope_spans[0].spans])


def raw(value: Any) -> bytes:
    return bytes(any_value(value).SerializeToString())


def test_a_column_the_first_span_has_is_read_without_adding_the_name_to_spans_that_lack_it() -> None:
    view, payload = view_of(
        {"gen_ai.usage.input_tokens": 10},
        {"other": 1},
        {"gen_ai.usage.input_tokens": None},  # present, with an empty value
        {"gen_ai.usage.prompt_tokens": 30},  # the deprecated name only
        {"gen_ai.usage.input_tokens": 40},
    )
    values = columns_of(view).column(INPUT, None)
    assert values == [raw(10), None, b"", raw(30), raw(40)]
    # The view still serialises to exactly what was received: nothing inserted, nothing taken away.
    assert view == TraceRequestView.FromString(payload)


def test_a_name_only_later_spans_have_is_read_from_them() -> None:
    view, _ = view_of({"x": 1}, {"gen_ai.usage.prompt_tokens": 2}, {"gen_ai.usage.input_tokens": 3})
    assert columns_of(view).column(INPUT, b"-") == [b"-", raw(2), raw(3)]


def test_the_current_name_wins_over_the_deprecated_one_on_every_span() -> None:
    view, _ = view_of(
        {"gen_ai.usage.prompt_tokens": 1},
        {"gen_ai.usage.input_tokens": 2, "gen_ai.usage.prompt_tokens": 3},
    )
    assert columns_of(view).column(INPUT, None) == [raw(1), raw(2)]


def test_optional_is_none_when_no_span_has_the_names_and_a_column_when_some_do() -> None:
    names = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
    view, payload = view_of({"a": 1}, {"gen_ai.usage.cache_read_input_tokens": 5}, {"a": 2})
    assert columns_of(view).optional(names, Presence(payload, 3)) == [None, raw(5), None]
    plain, payload = view_of({"a": 1}, {"a": 2})
    assert columns_of(plain).optional(names, Presence(payload, 2)) is None


def test_a_name_whose_bytes_are_not_in_the_export_is_ruled_out_and_one_in_a_value_is_not() -> None:
    _, payload = view_of({"gen_ai.usage.input_tokens": 1})
    presence = Presence(payload, 1)
    assert not presence.may_have("paymaster.team")
    assert not presence.may_have("gen_ai.usage.cache_read.input_tokens")
    _, payload = view_of({"gen_ai.prompt.0.content": "please set paymaster.team"})
    assert Presence(payload, 1).may_have("paymaster.team")  # only in a value, but it cannot tell


def test_without_the_export_or_for_heavy_spans_every_name_is_looked_up() -> None:
    assert Presence(None, 1).may_have("paymaster.team")
    _, payload = view_of({"gen_ai.completion.0.content": "x" * 4000})
    assert Presence(payload, 1).may_have("paymaster.team")
    assert not Presence(payload, 1).only_counts()


def test_only_counts_holds_when_the_counts_read_are_every_usage_key_in_the_export() -> None:
    _, payload = view_of(
        {"gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 2},
        {"gen_ai.usage.input_tokens": 3},
    )
    presence = Presence(payload, 2)
    presence.counts_read(2)
    assert not presence.only_counts()  # a count not read yet: a later scope, or another key
    presence.counts_read(1)
    assert presence.only_counts()


def test_only_counts_fails_for_an_extra_usage_key_or_the_prefix_inside_a_value() -> None:
    for extra in ({"gen_ai.usage.reasoning_tokens": 5}, {"note": "gen_ai.usage.anything"}):
        _, payload = view_of({"gen_ai.usage.input_tokens": 1, **extra})
        presence = Presence(payload, 1)
        presence.counts_read(1)
        assert not presence.only_counts()
