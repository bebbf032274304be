"""The HTTP listener's own behaviour: credentials (Bearer, Basic, mTLS), the error vocabulary, shedding,
alert streams, TLS rotation and the audit log — on a real sidecar."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from paymaster.v1 import budget_pb2 as pb
from tests.certs import Authority
from tests.sidecar.auth.conftest import TOKENS, Caller
from tests.sidecar.auth.test_tls import Pki
from tests.sidecar.auth.test_tls import start as start_tls
from tests.sidecar.conftest import RunningSidecar, StoreFactory
from tests.sidecar.http.conftest import HTTP_ON, Http, base_url, http_api, start_http


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def test_basic_credentials_are_a_token_and_its_name(http_sidecar: RunningSidecar) -> None:
    url = base_url(http_sidecar)
    ok = httpx.get(f"{url}/v1/budgets", headers=basic("reader", TOKENS["reader"]))
    assert ok.status_code == 200
    wrong_name = httpx.get(f"{url}/v1/budgets", headers=basic("admin", TOKENS["reader"]))
    assert wrong_name.status_code == 401
    assert (
        wrong_name.json()["error"]["message"]
        == "client_id is not the name of the token given as client_secret"
    )
    assert TOKENS["reader"] not in wrong_name.text
    bad = httpx.get(f"{url}/v1/budgets", headers=basic("reader", "not-a-token-" + "x" * 30))
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "unauthenticated")
    assert "Bearer" in bad.headers["www-authenticate"]


def test_basic_can_be_turned_off(backing: StoreFactory, tmp_path: Path) -> None:
    running = start_http(backing, tmp_path, extra="basic_auth = false\n")
    try:
        refused = httpx.get(f"{base_url(running)}/v1/budgets", headers=basic("reader", TOKENS["reader"]))
        assert refused.status_code == 401 and "http.basic_auth" in refused.text
    finally:
        running.sidecar.stop(0)


def test_errors_name_the_field_and_speak_the_grpc_words(http_sidecar: RunningSidecar) -> None:
    root = Http(http_sidecar)
    cases = [
        ({"scopes": {"team": 5}, "estimate_usd": "1"}, "scopes.team", "scopes.team: must be a string, got 5"),
        ({"scopes": {"team": "search"}, "estimate_usd": 1}, "estimate_usd",
         "estimate_usd: must be a string (an exact decimal such as '0.25'), got 1"),
        ({"scopes": {"team": "search"}}, "estimate_usd",
         "estimate_usd: is required (an exact decimal string such as '0.25')"),
        ({"scopes": {"team": "search"}, "estimate_usd": "1", "ttl": 3}, "ttl", "ttl: unknown field (check the spelling)"),
        ({"scopes": {}, "estimate_usd": "1"}, "scopes",
         "scopes: at least one of organization, team, agent, workflow, user is required"),
        ({"scopes": {"team": "search"}, "estimate_usd": "1", "ttl_seconds": 1.6e308}, "ttl_seconds",
         "ttl_seconds: must be at most 2592000, got 1.6E+308"),
        ({"scopes": {"team": "search"}, "estimate_usd": "1", "ttl_seconds": 0}, "ttl_seconds",
         "ttl_seconds: must be more than 0, got 0"),
    ]  # fmt: skip
    for body, field, message in cases:
        reply = root("POST", "/v1/reservations", json=body)
        assert reply.status_code == 400, body
        assert reply.json() == {"error": {"code": "invalid_argument", "message": message, "field": field}}
    assert root("POST", "/v1/check", content=b"{not json").json()["error"]["field"] == "body"
    assert root("GET", "/v1/budgets/nope").status_code == 404
    outside = Http(http_sidecar, "spender")("POST", "/v1/check", json={"scopes": {"team": "billing"}})
    assert outside.status_code == 403
    assert outside.json()["error"]["message"].startswith("scopes.team: spender is not granted team='billing'")


def test_an_idempotency_key_reused_for_another_request_is_409(http_sidecar: RunningSidecar) -> None:
    spender = Http(http_sidecar, "spender")
    key = {"Idempotency-Key": "k-1"}
    first = spender(
        "POST", "/v1/reservations", json={"scopes": {"team": "search"}, "estimate_usd": "1"}, headers=key
    )
    again = spender(
        "POST", "/v1/reservations", json={"scopes": {"team": "search"}, "estimate_usd": "1"}, headers=key
    )
    assert again.json()["reservation_id"] == first.json()["reservation_id"] and again.json()["replayed"]
    other = spender(
        "POST", "/v1/reservations", json={"scopes": {"team": "search"}, "estimate_usd": "2"}, headers=key
    )
    assert (other.status_code, other.json()["error"]["code"]) == (409, "already_exists")
    # The key is the spender's own: over gRPC, the same key and request replay the same reservation.
    grpc_again = Caller(http_sidecar, "spender")(
        "Reserve",
        pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="1", idempotency_key="k-1"),
    )
    assert grpc_again.reservation_id == first.json()["reservation_id"]


def test_budget_changes_over_http_are_in_the_audit_log(http_sidecar: RunningSidecar) -> None:
    created = Http(http_sidecar, "admin")(
        "POST", "/v1/budgets",
        json={"id": "audited", "scope": "team", "scope_id": "search", "limit_usd": "1", "period": "daily",
              "on_exceed": "warn"},
    )  # fmt: skip
    assert created.status_code == 201
    events = Caller(http_sidecar, "root")("ListAuditEvents", pb.ListAuditEventsRequest()).events
    event = next(e for e in events if e.target == "audited")
    assert (event.action, event.principal) == ("budget.create", "admin")
    assert event.address.startswith("ipv4:127.0.0.1:")


def test_requests_past_the_cap_are_503_with_retry_after(backing: StoreFactory, tmp_path: Path) -> None:
    running = start_http(backing, tmp_path, auth=False, extra="max_concurrent_requests = 1\n")
    try:
        listener = http_api(running).listener
        listener.in_flight = 1  # one request being served
        busy = Http(running)("GET", "/v1/budgets")
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "1")
        assert busy.json()["error"]["code"] == "unavailable"
        listener.in_flight = 0
        assert Http(running)("GET", "/v1/budgets").status_code == 200
    finally:
        running.sidecar.stop(0)


def test_alerts_arrive_on_an_event_stream_as_they_fire(http_sidecar: RunningSidecar) -> None:
    root = Http(http_sidecar)
    root("POST", "/v1/budgets", json={"id": "streamed", "scope": "team", "scope_id": "search", "limit_usd": "10",
                                      "period": "daily", "on_exceed": "warn", "alert_thresholds": [50]})  # fmt: skip
    events: list[str] = []
    positioned = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(
                base_url=base_url(http_sidecar),
                timeout=10,
                headers={"Authorization": f"Bearer {TOKENS['reader']}"},
            ) as client,
            client.stream("GET", "/v1/alerts/stream", params={"budget_id": "streamed"}) as response,
        ):
            for line in response.iter_lines():
                if line == ": positioned":
                    positioned.set()
                if line.startswith("data: "):
                    events.append(line)
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert positioned.wait(10)
    root("POST", "/v1/usage", json={"usage_id": "half", "scopes": {"team": "search"}, "cost_usd": "6"})
    thread.join(10)
    assert len(events) == 1 and '"threshold_percent":50' in events[0]


def test_every_connection_has_nagle_off(http_sidecar: RunningSidecar) -> None:
    """A response written in two parts must not wait for the client's delayed ACK (40 ms a call)."""
    with httpx.Client(base_url=base_url(http_sidecar)) as client:
        client.get("/healthz")
        server = http_api(http_sidecar)._server
        assert server is not None
        for protocol in server.server_state.connections:
            sock = protocol.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_port_in_use_is_refused_naming_the_key(backing: StoreFactory, tmp_path: Path) -> None:
    from collector_processor.api.server import create_sidecar
    from collector_processor.config import parse_config
    from paymaster.exceptions import ConfigError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = parse_config(f'[server]\nlisten = "127.0.0.1:0"\n[store]\npath = "{tmp_path / "x.db"}"\n'
                          f'[http]\nenabled = true\nlisten = "127.0.0.1:{port}"\n', source="sidecar.toml")  # fmt: skip
    with pytest.raises(
        ConfigError, match=rf"sidecar\.toml: http\.listen: cannot serve on 127\.0\.0\.1:{port}"
    ):
        create_sidecar(config).start()
    taken.close()


def test_an_open_address_without_auth_refuses_to_start() -> None:
    from collector_processor.config import parse_config
    from paymaster.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"http\.listen: 0\.0\.0\.0:7311 can be reached from other hosts"):
        parse_config('[http]\nenabled = true\nlisten = "0.0.0.0:7311"\n', source="sidecar.toml")


# -- TLS -------------------------------------------------------------------------------------------
@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _tls_client(running: RunningSidecar, ca: bytes, cert: tuple[Path, Path] | None = None) -> httpx.Client:
    context = ssl.create_default_context(cadata=ca.decode())
    if cert is not None:
        context.load_cert_chain(*cert)
    return httpx.Client(base_url=base_url(running), verify=context, timeout=5)


def test_over_mtls_a_mapped_certificate_is_a_principal_and_a_rotated_one_is_served(
    tmp_path: Path, pki: Pki
) -> None:
    http_tls = f"{HTTP_ON}[http.tls]\n{pki.tls_block(mutual=True)}"
    running = start_tls(tmp_path, pki, mutual=True, extra=http_tls)
    try:
        assert base_url(running).startswith("https://")
        client_files = pki.spender.write(tmp_path, "payments")
        with _tls_client(running, pki.ca.pem, client_files) as client:
            assert client.post("/v1/check", json={"scopes": {"team": "payments"}}).status_code == 200
            assert client.post("/v1/check", json={"scopes": {"team": "search"}}).status_code == 403
        stranger = pki.stranger.write(tmp_path, "stranger")
        with _tls_client(running, pki.ca.pem, stranger) as client:
            assert client.get("/v1/budgets").status_code == 401

        rotated = Authority("rotated CA")
        staged = tmp_path / "staged"
        staged.mkdir()
        cert, key = rotated.server().write(staged, "server")
        shutil.copyfile(key, pki.key)
        shutil.copyfile(cert, pki.cert)
        time.sleep(1.1)  # the files are looked at once a second
        deadline = time.monotonic() + 10
        while True:
            try:
                with _tls_client(running, rotated.pem, client_files) as client:
                    assert client.get("/healthz").status_code == 200
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with pytest.raises(httpx.ConnectError), _tls_client(running, pki.ca.pem, client_files) as client:
            client.get("/healthz")
    finally:
        running.sidecar.stop(0)
