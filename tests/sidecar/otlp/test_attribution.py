"""Scope attribution: ``paymaster.<scope>`` first, span before resource, then the configured attributes
in order; values that cannot be scope ids are skipped; nobody named means the unattributed bucket."""

from __future__ import annotations

from typing import Any

from collector_processor.domain.budgets import ScopeSet
from collector_processor.otlp.attribution import Attributor
from collector_processor.otlp.config import AttributionSection
from tests.sidecar.otlp.payloads import any_value


def raw(**attributes: Any) -> dict[str, bytes]:
    return {k.replace("__", "."): any_value(v).SerializeToString() for k, v in attributes.items()}


def scopes(
    resource: dict[str, bytes], span: dict[str, bytes], section: AttributionSection | None = None
) -> tuple[ScopeSet, bool]:
    return Attributor(section or AttributionSection()).for_resource(resource).for_span(span)


def test_paymaster_attributes_come_first_and_a_span_overrides_its_resource() -> None:
    resource = raw(**{"paymaster.team": "search", "paymaster.agent": "ranker", "service.name": "svc"})
    assert scopes(resource, {}) == (ScopeSet(team="search", agent="ranker"), False)
    span = raw(**{"paymaster.team": "ads", "gen_ai.agent.name": "writer", "enduser.id": "ada"})
    # paymaster.agent on the resource outranks a mapped attribute on the span.
    assert scopes(resource, span) == (ScopeSet(team="ads", agent="ranker", user="ada"), False)


def test_mapped_attributes_apply_in_order_span_first_and_resource_conventions_on_the_resource_only() -> None:
    resource = raw(**{"service.name": "svc", "k8s.namespace.name": "payments"})
    assert scopes(resource, raw(**{"gen_ai.agent.name": "triage"})) == (
        ScopeSet(team="payments", agent="triage"),
        False,
    )
    assert scopes(resource, raw(**{"service.name": "not-a-span-attribute"})) == (
        ScopeSet(team="payments", agent="svc"),
        False,
    )
    custom = AttributionSection(team=["tenant"], agent=[], user=[])
    assert scopes(raw(tenant="t-1"), raw(**{"enduser.id": "ada"}), custom) == (ScopeSet(team="t-1"), False)


def test_values_that_cannot_be_scope_ids_are_skipped() -> None:
    resource = raw(**{"service.name": "unknown_service:python"})  # the SDK default names nobody
    span = raw(
        **{"paymaster.team": 42, "paymaster.user": "x" * 300, "enduser.id": "bo", "paymaster.agent": "a\nb"}
    )
    assert scopes(resource, span) == (ScopeSet(user="bo"), False)


def test_spend_nobody_is_named_for_goes_to_the_configured_unattributed_bucket() -> None:
    assert scopes({}, {}) == (ScopeSet(organization="unattributed", team="unattributed", agent="unattributed",
                                       workflow="unattributed", user="unattributed"), True)  # fmt: skip
    narrow = AttributionSection(unattributed_id="stray", unattributed_scopes=["organization"])
    assert scopes({}, {}, narrow) == (ScopeSet(organization="stray"), True)


def test_resources_are_resolved_once_per_distinct_values_of_the_attributes_read() -> None:
    attributor = Attributor(AttributionSection())
    first = attributor.for_resource(raw(**{"service.name": "svc", "k8s.pod.name": "pod-1"}))
    # Another pod of the same service: nothing read differs, so the same resolution.
    assert attributor.for_resource(raw(**{"service.name": "svc", "k8s.pod.name": "pod-2"})) is first
    other = attributor.for_resource(raw(**{"service.name": "api", "k8s.pod.name": "pod-1"}))
    assert (other.default.agent, other.service) == ("api", (None, "api"))
    assert (first.default.agent, first.service) == ("svc", (None, "svc"))
