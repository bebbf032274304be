"""The security model holds on every worker: each serves only over the listener's TLS and only to
callers with credentials; a token issued or revoked through one worker is honoured by every worker at
once; a rotated certificate is served by every worker without a restart; the one ``/metrics`` asks
for a token as configured."""

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

from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.certs import Authority
from tests.sidecar.auth.conftest import TOKENS, tokens_toml
from tests.sidecar.auth.test_tls import Pki
from tests.sidecar.conftest import StoreFactory
from tests.sidecar.workers.conftest import OWN_CONNECTION, Workers, start_workers

pytestmark = pytest.mark.slow

ROOT = (("authorization", f"Bearer {TOKENS['root']}"),)


def tls_channel(ca: bytes) -> object:
    def connect(address: str) -> grpc.Channel:
        port = address.rsplit(":", 1)[1]
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.secure_channel(f"localhost:{port}", credentials, options=OWN_CONNECTION)

    return connect


@pytest.fixture
def secured(tmp_path: Path, pki: Pki) -> Iterator[Workers]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml())
    # Tokens are re-read from the store only once a minute: what a worker honours sooner, it was told.
    running = start_workers(
        StoreFactory(backend="sqlite", path=tmp_path / "ledger.db"),
        tmp_path,
        f'[auth]\nenabled = true\ntokens_file = "{tokens}"\nrefresh_seconds = 60\n'
        f"[server.tls]\n{pki.tls_block(mutual=False)}\n"
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\nrequire_token = true\n'
        f"[metrics.tls]\n{pki.tls_block(mutual=False)}\n",
    )
    running.connect = tls_channel(pki.ca.pem)  # type: ignore[assignment]
    running.metadata = ROOT
    yield running
    running.close()


def test_every_worker_serves_over_tls_and_only_callers_with_credentials(secured: Workers) -> None:
    for stub in secured.stubs_on_each_worker().values():
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListBudgets(pb.ListBudgetsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        stub.ListBudgets(pb.ListBudgetsRequest(), metadata=ROOT, timeout=5)
    for _ in range(8):  # plaintext reaches no worker
        with (
            grpc.insecure_channel(secured.address, options=OWN_CONNECTION) as plain,
            pytest.raises(grpc.RpcError),
        ):
            budget_pb2_grpc.BudgetServiceStub(plain).ListBudgets(
                pb.ListBudgetsRequest(), metadata=ROOT, timeout=2
            )


def test_a_token_issued_or_revoked_through_one_worker_counts_on_every_worker_at_once(
    secured: Workers,
) -> None:
    first, second = secured.stubs_on_each_worker().values()
    issued = first.CreateToken(
        pb.CreateTokenRequest(name="reporting", roles=["reader"], grants=["team=search"]), metadata=ROOT
    )
    bearer = (("authorization", f"Bearer {issued.secret}"),)
    second.ListBudgets(pb.ListBudgetsRequest(), metadata=bearer, timeout=5)
    second.RevokeToken(pb.RevokeTokenRequest(id=issued.token.id), metadata=ROOT)
    with pytest.raises(grpc.RpcError) as refused:
        first.ListBudgets(pb.ListBudgetsRequest(), metadata=bearer, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_a_rotated_certificate_is_served_by_every_worker_without_a_restart(
    secured: Workers, pki: Pki, tmp_path: Path
) -> None:
    secured.stubs_on_each_worker()
    rotated = Authority("rotated CA")
    staged = tmp_path / "staged"
    staged.mkdir()
    cert, key = rotated.server().write(staged, "server")
    shutil.copyfile(key, pki.key)
    shutil.copyfile(cert, pki.cert)
    time.sleep(1.1)  # the files are looked at once a second
    secured.connect = tls_channel(rotated.pem)  # type: ignore[assignment]
    deadline = time.monotonic() + 20
    while True:  # new connections reach each worker with the new certificate
        try:
            reached = secured.stubs_on_each_worker()
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert sorted(reached) == [0, 1]
    secured.connect = tls_channel(pki.ca.pem)  # type: ignore[assignment]
    for _ in range(8):  # a client that trusts only the old CA reaches none
        with pytest.raises(grpc.RpcError):
            secured.stub().ListBudgets(pb.ListBudgetsRequest(), metadata=ROOT, timeout=2)


def test_the_one_metrics_endpoint_asks_for_a_token_over_tls(secured: Workers, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    url = f"https://localhost:{secured.supervisor.metrics_port}/metrics"

    def get(token: str | None) -> int:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as reply:
                body = reply.read().decode()
                assert all(secret not in body for secret in TOKENS.values())
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert get(None) == 401
    assert get(TOKENS["reader"]) == 403  # its grants do not cover every tenant
    assert get(TOKENS["root"]) == 200
