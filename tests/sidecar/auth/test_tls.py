"""TLS and mTLS on the budget API and /metrics, with certificates made by the test: a client that trusts
the CA is served, a client certificate mapped in ``[[auth.clients]]`` is a principal, one from another
CA is refused, and a rotated certificate is served without a restart."""

from __future__ import annotations

import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from collector_processor.domain.clock import ManualClock
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.certs import Authority
from tests.sidecar.auth.conftest import TOKENS, tokens_toml
from tests.sidecar.conftest import START, RunningSidecar, StoreFactory, pb_budget, start_sidecar


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = Authority("paymaster test CA")
        self.ca_file = self.ca.write(folder)
        self.cert, self.key = self.ca.server().write(folder, "server")
        self.spender = self.ca.client(common_name="payments", uri="spiffe://cluster.local/ns/payments/sa/api")
        self.stranger = self.ca.client(common_name="nobody", uri="spiffe://cluster.local/ns/other/sa/x")
        self.other_ca = Authority("someone else's CA")
        self.impostor = self.other_ca.client(
            common_name="payments", uri="spiffe://cluster.local/ns/payments/sa/api"
        )

    def tls_block(self, *, mutual: bool) -> str:
        ca = f'\nclient_ca_file = "{self.ca_file}"' if mutual else ""
        return f'cert_file = "{self.cert}"\nkey_file = "{self.key}"{ca}\n'


def start(tmp: Path, pki: Pki, *, mutual: bool, extra: str = "") -> RunningSidecar:
    tokens = tmp / "tokens.toml"
    tokens.write_text(tokens_toml())
    clients = (
        '[[auth.clients]]\nname = "payments-api"\nuri = "spiffe://cluster.local/ns/payments/sa/api"\n'
        'roles = ["spender", "reader"]\ngrants = ["team=payments"]\n'
        if mutual
        else ""
    )
    toml = (
        f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n{clients}\n'
        f"[server.tls]\n{pki.tls_block(mutual=mutual)}\n{extra}"
    )
    return start_sidecar(StoreFactory(backend="sqlite", path=tmp / "ledger.db"), ManualClock(START), toml)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def channel(
    running: RunningSidecar, pki: Pki, client: object | None = None, *, ca: bytes | None = None
) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca or pki.ca.pem,
        private_key=getattr(client, "key_pem", None),
        certificate_chain=getattr(client, "cert_pem", None),
    )
    return grpc.secure_channel(f"localhost:{running.sidecar.port}", creds)


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[RunningSidecar]:
    running = start(tmp_path, pki, mutual=False)
    yield running
    running.sidecar.stop(0)


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Pki) -> Iterator[RunningSidecar]:
    running = start(tmp_path, pki, mutual=True)
    yield running
    running.sidecar.stop(0)


def test_the_api_over_tls_serves_a_client_that_trusts_the_ca(tls_server: RunningSidecar, pki: Pki) -> None:
    stub = budget_pb2_grpc.BudgetServiceStub(channel(tls_server, pki))
    root = [("authorization", f"Bearer {TOKENS['root']}")]
    assert stub.CreateBudget(pb_budget("b1"), metadata=root, timeout=5).id == "b1"
    with pytest.raises(grpc.RpcError) as info:  # TLS is not authentication
        stub.GetBudget(pb.GetBudgetRequest(id="b1"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # a plaintext client cannot talk to it at all
    plain = budget_pb2_grpc.BudgetServiceStub(grpc.insecure_channel(f"127.0.0.1:{tls_server.sidecar.port}"))
    with pytest.raises(grpc.RpcError) as info:
        plain.GetBudget(pb.GetBudgetRequest(id="b1"), metadata=root, timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_mapped_client_certificate_is_a_principal(mtls_server: RunningSidecar, pki: Pki) -> None:
    stub = budget_pb2_grpc.BudgetServiceStub(channel(mtls_server, pki, pki.spender))
    ok = stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="payments"), estimate_usd="0.01"), timeout=5)
    assert ok.decision == pb.DECISION_ALLOW
    with pytest.raises(grpc.RpcError) as info:  # its grants, not more
        stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="0.01"), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "payments-api is not granted team='search'" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:  # its roles, not more
        stub.CreateBudget(pb_budget("b2", scope_id="payments"), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_unmapped_certificate_from_the_ca_is_not_a_principal(
    mtls_server: RunningSidecar, pki: Pki
) -> None:
    stub = budget_pb2_grpc.BudgetServiceStub(channel(mtls_server, pki, pki.stranger))
    with pytest.raises(grpc.RpcError) as info:
        stub.Reserve(pb.ReserveRequest(scopes=pb.ScopeIds(team="payments"), estimate_usd="0.01"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not mapped to a principal" in (info.value.details() or "")


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    mtls_server: RunningSidecar, pki: Pki
) -> None:
    for client in (pki.impostor, None):  # another CA's certificate with the right name; no certificate
        stub = budget_pb2_grpc.BudgetServiceStub(channel(mtls_server, pki, client))
        with pytest.raises(grpc.RpcError) as info:
            stub.Reserve(
                pb.ReserveRequest(scopes=pb.ScopeIds(team="payments"), estimate_usd="0.01"), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_rotated_certificate_is_served_without_a_restart(
    tls_server: RunningSidecar, pki: Pki, tmp_path: Path
) -> None:
    root = [("authorization", f"Bearer {TOKENS['root']}")]
    first = budget_pb2_grpc.BudgetServiceStub(channel(tls_server, pki))
    first.ListBudgets(pb.ListBudgetsRequest(), metadata=root, timeout=5)
    # cert-manager writes a new pair from a new CA into the same files
    rotated = Authority("rotated CA")
    staged = tmp_path / "staged"
    staged.mkdir()
    cert, key = rotated.server().write(staged, "server")
    shutil.copyfile(key, pki.key)
    shutil.copyfile(cert, pki.cert)
    time.sleep(1.1)  # the files are looked at once a second
    deadline = time.monotonic() + 10
    while True:
        fresh = budget_pb2_grpc.BudgetServiceStub(channel(tls_server, pki, ca=rotated.pem))
        try:
            fresh.ListBudgets(pb.ListBudgetsRequest(), metadata=root, timeout=2)
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    # a new client that trusts only the old CA no longer gets through
    stale = budget_pb2_grpc.BudgetServiceStub(channel(tls_server, pki))
    with pytest.raises(grpc.RpcError):
        stale.ListBudgets(pb.ListBudgetsRequest(), metadata=root, timeout=2)


def test_metrics_over_tls_with_a_token(tmp_path: Path, pki: Pki) -> None:
    extra = f'[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\nrequire_token = true\n[metrics.tls]\n{pki.tls_block(mutual=False)}'
    running = start(tmp_path, pki, mutual=False, extra=extra)
    try:
        port = running.sidecar.exporters.port
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        url = f"https://localhost:{port}/metrics"

        def get(token: str | None) -> tuple[int, str]:
            request = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {token}"} if token else {}
            )
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        status, body = get(TOKENS["root"])
        assert status == 200 and "paymaster_build_info" in body
        assert get(None)[0] == 401
        status, body = get(TOKENS["reader"])  # a reader of team search only: /metrics shows every tenant
        assert status == 403 and "do not cover everything" in body
        assert get(TOKENS["spender"])[0] == 403
        status, body = get(TOKENS["root"])
        assert 'paymaster_auth_denied_total{listener="metrics",principal="reader",reason="scope"} 1.0' in body
        assert 'paymaster_auth_denied_total{listener="metrics",principal="",reason="missing"} 1.0' in body
        for token in TOKENS.values():
            assert token not in body
    finally:
        running.sidecar.stop(0)
