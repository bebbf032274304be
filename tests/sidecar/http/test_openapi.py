"""The OpenAPI document: committed, served, and true — schemathesis drives every operation of it
against a live sidecar (bounded examples), and no answer is a 500 or leaves the document's schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from collector_processor.api.http import ENDPOINTS
from collector_processor.api.http.openapi import COMMITTED, document, render
from tests.sidecar.conftest import RunningSidecar, StoreFactory
from tests.sidecar.http.conftest import Http, base_url, headers, start_http

pytestmark = pytest.mark.slow


def test_the_committed_document_is_the_one_the_code_builds() -> None:
    """docs/openapi.json is regenerated with ``python -m collector_processor.api.http --write-openapi``."""
    assert COMMITTED.read_text(encoding="utf-8") == render(document(ENDPOINTS))


def test_it_is_an_openapi_3_1_document_whose_every_reference_resolves() -> None:
    doc = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert doc["openapi"] == "3.1.0"
    text = COMMITTED.read_text(encoding="utf-8")
    for ref in {r.split('"')[0] for r in text.split('"$ref": "')[1:]}:
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert sorted(ids) == sorted(e.name for e in ENDPOINTS)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    running = start_http(StoreFactory(backend="sqlite", path=tmp / "ledger.db"), tmp)
    root = Http(running)
    for i, scope in enumerate(("team", "agent", "user")):
        root("POST", "/v1/budgets", json={"id": f"b{i}", "scope": scope, "scope_id": "search",
                                          "limit_usd": "10", "period": "daily", "on_exceed": "block"})  # fmt: skip
    root("POST", "/v1/usage", json={"usage_id": "u1", "scopes": {"team": "search"}, "cost_usd": "9"})
    yield running
    running.channel.close()
    running.sidecar.stop(0)


def test_the_served_document_is_the_committed_one(live: RunningSidecar) -> None:
    served = Http(live)("GET", "/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert Http(live, "none")("GET", "/openapi.json").status_code == 401


schema = schemathesis.openapi.from_path(Path(COMMITTED)).exclude(operation_id="stream_alerts")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_answer_is_a_500_or_outside_the_document(case: schemathesis.Case, live: RunningSidecar) -> None:
    if isinstance(case.query, dict) and "wait_seconds" in case.query:
        case.query["wait_seconds"] = 0  # a long poll waits as long as it is told to
    case.call_and_validate(
        base_url=base_url(live),
        headers=headers("root"),
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ],
    )


def test_alert_streams_are_event_streams(live: RunningSidecar) -> None:
    """The one operation schemathesis cannot read to its end."""
    with (
        httpx.Client(base_url=base_url(live), headers=headers("root"), timeout=10) as client,
        client.stream("GET", "/v1/alerts/stream", params={"after_sequence": 0}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert next(response.iter_lines()) == ": positioned"
