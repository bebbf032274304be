"""Scopes: ids checked like the sidecar checks them, merged resource < budget < step."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from paymaster import ConfigError, Scopes, Step

from .agents import FixedMetricAgent


def test_a_step_overrides_the_runners_scopes_field_by_field() -> None:
    base = Scopes(organization="acme", team="search", agent="planner")
    merged = base.merged(Scopes(agent="reviewer"))
    assert merged == Scopes(organization="acme", team="search", agent="reviewer")
    assert merged.items() == (("organization", "acme"), ("team", "search"), ("agent", "reviewer"))
    assert merged.attributes() == {
        "paymaster.organization": "acme",
        "paymaster.team": "search",
        "paymaster.agent": "reviewer",
    }
    assert str(merged) == "organization=acme, team=search, agent=reviewer"
    assert base.merged(None) is base


def test_mappings_are_accepted_and_unknown_scopes_are_named() -> None:
    assert Scopes.coerce({"team": "search"}, where="here") == Scopes(team="search")
    with pytest.raises(ConfigError) as info:
        Scopes.coerce({"team": "search", "tenant": "x"}, where="Step 'draft'")
    assert str(info.value) == (
        "Step 'draft': unknown scope(s) ['tenant']; expected some of "
        "['organization', 'team', 'agent', 'workflow', 'user']"
    )
    with pytest.raises(ConfigError, match="scopes must be Scopes"):
        Scopes.coerce(["team"], where="here")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Scopes: team must not be empty (leave it out, or None, for no team)"),
        (7, "Scopes: team must be a string id, got int 7"),
        ("a\nb", "Scopes: team must be at most 256 printable characters, got 'a\\nb'"),
        ("x" * 257, "Scopes: team must be at most 256 printable characters"),
    ],
)
def test_bad_ids_are_refused_with_the_scope_named(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scopes(team=value)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_step_scopes_are_checked_when_the_step_is_built() -> None:
    step = Step("draft", FixedMetricAgent(), scopes={"agent": "drafter"})
    assert step.scopes == Scopes(agent="drafter")
    with pytest.raises(ConfigError, match="Step 'draft': unknown scope"):
        Step("draft", FixedMetricAgent(), scopes={"squad": "x"})


def test_scopes_come_from_the_opentelemetry_resource() -> None:
    provider = TracerProvider(
        resource=Resource.create({"paymaster.team": "search", "paymaster.user": "ada", "service.name": "svc"})
    )
    assert Scopes.from_resource(provider) == Scopes(team="search", user="ada")


def test_without_an_sdk_provider_the_resource_variable_is_read() -> None:
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=svc,paymaster.team=search%20ops, paymaster.workflow=triage"
    }
    assert Scopes.from_resource(object(), environ=env) == Scopes(team="search ops", workflow="triage")
    assert Scopes.from_resource(object(), environ={}) == Scopes()


def test_a_bad_resource_value_names_the_attribute(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as info:
        Scopes.from_attributes({"paymaster.team": ""}, source="OpenTelemetry resource")
    assert "OpenTelemetry resource: attribute 'paymaster.team': team must not be empty" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="paymaster"):
        assert Scopes.from_attributes({"paymaster.tema": "x"}, source="resource") == Scopes()
    assert "'paymaster.tema' is not a Paymaster scope" in caplog.text
