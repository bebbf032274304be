"""SidecarBudget against a sidecar with ``[auth]`` on: a token on every call (a string, a callable, a
file followed through a rotation, or from the environment), TLS that verifies the sidecar, and mutual
TLS with a client certificate mapped to a principal. Refused credentials are handled by the fail
policy with a message that says what happened, and the token appears in no repr, error or log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from collector_processor.domain.clock import SystemClock
from paymaster import (
    FAIL_CLOSED,
    FAIL_OPEN,
    ConfigError,
    Runner,
    Scopes,
    SidecarBudget,
    SidecarUnavailableError,
    Step,
)
from paymaster.v1 import budget_pb2 as pb
from paymaster.v1 import budget_pb2_grpc
from tests.certs import Authority
from tests.sidecar.auth.conftest import TOKENS, tokens_toml
from tests.sidecar.conftest import RunningSidecar, StoreFactory, start_sidecar

from .agents import FixedMetricAgent
from .sidecar_support import wait_until

SPIFFE = "spiffe://example.org/ns/search/sa/runner"
BUDGET = """
[[budgets]]
id = "search-daily"
scope = "team"
scope_id = "search"
limit_usd = "10"
period = "daily"
on_exceed = "block"
"""


@dataclass
class Side:
    """A sidecar with auth on, its certificate folder and authority, and an admin stub over the
    same kind of channel a client gets."""

    running: RunningSidecar
    folder: Path
    ca: Authority
    admin: Any
    channel: grpc.Channel

    @property
    def address(self) -> str:
        return self.running.address

    def used(self) -> Decimal:
        status = self.admin.GetBudgetStatus(
            pb.GetBudgetStatusRequest(budget_id="search-daily"), metadata=_root(), timeout=10
        )
        return Decimal(status.used_usd)

    def client_cert(self, stem: str, **kwargs: Any) -> tuple[Path, Path]:
        return self.ca.client(**kwargs).write(self.folder, stem)


def _root() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS['root']}")]


def start(tmp: Path, *, tls: bool = False, mutual: bool = False) -> Side:
    folder = tmp / "certs"
    folder.mkdir(parents=True)
    ca = Authority()
    ca_file = ca.write(folder)
    tokens = tmp / "tokens.toml"
    tokens.write_text(tokens_toml())
    extra = f'[auth]\nenabled = true\ntokens_file = "{tokens}"\nrefresh_seconds = 0.05\n'
    if mutual:
        extra += (
            f'[[auth.clients]]\nname = "search-runner"\nuri = "{SPIFFE}"\nroles = ["spender"]\n'
            'grants = ["team=search"]\n'
            '[[auth.clients]]\nname = "root-admin"\ncommon_name = "root-admin"\n'
            'roles = ["admin", "reader"]\ngrants = ["*"]\n'
        )
    if tls:
        cert, key = ca.server().write(folder, "server")
        extra += f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
        if mutual:
            extra += f'client_ca_file = "{ca_file}"\n'
    running = start_sidecar(
        StoreFactory(backend="sqlite", path=tmp / "sidecar.db"),
        SystemClock(),
        extra + BUDGET,  # type: ignore[arg-type]
    )
    if tls:
        admin_cert = ca.client(common_name="root-admin") if mutual else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.pem,
            private_key=admin_cert.key_pem if admin_cert else None,
            certificate_chain=admin_cert.cert_pem if admin_cert else None,
        )
        channel = grpc.secure_channel(running.address, credentials)
    else:
        channel = grpc.insecure_channel(running.address)
    return Side(running, folder, ca, budget_pb2_grpc.BudgetServiceStub(channel), channel)


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[Any]:
    started: list[Side] = []

    def make(**kwargs: Any) -> Side:
        side = start(tmp_path / f"side-{len(started)}", **kwargs)
        started.append(side)
        return side

    yield make
    for side in started:
        side.channel.close()
        side.running.channel.close()
        side.running.sidecar.stop(0)


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PAYMASTER_TOKEN", "PAYMASTER_TOKEN_FILE", "PAYMASTER_SIDECAR_CA", "PAYMASTER_SIDECAR_CERT",
                 "PAYMASTER_SIDECAR_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def budget_on(side: Side, policy: str = FAIL_CLOSED, **kwargs: Any) -> SidecarBudget:
    kwargs.setdefault("journal_dir", None)
    kwargs.setdefault("deadline_s", 5.0)  # a live sidecar on a loaded machine must never miss it
    kwargs.setdefault("backoff_s", 0.01)
    return SidecarBudget(side.address, scopes=Scopes(team="search"), fail_policy=policy, **kwargs)  # type: ignore[arg-type]


def run_one(budget: SidecarBudget, cost: str = "0.25") -> Any:
    agent = FixedMetricAgent(cost=cost)
    result = Runner(Step("call", agent), budget=budget).run(0)
    outcome = result.step_history[0].budget
    assert outcome is not None
    return outcome


# ------------------------------------------------------------------------------ tokens
def test_a_governed_pipeline_runs_with_a_token_and_is_charged(sides: Any) -> None:
    side = sides()
    budget = budget_on(side, token=TOKENS["spender"])
    outcome = run_one(budget)
    assert (outcome.decision, outcome.charged_usd) == ("allow", Decimal("0.25"))
    assert side.used() == Decimal("0.25")
    budget.close()


def test_the_token_comes_from_the_environment_by_default(
    sides: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = sides()
    monkeypatch.setenv("PAYMASTER_TOKEN", TOKENS["spender"])
    with budget_on(side) as budget:
        assert run_one(budget).decision == "allow"
    monkeypatch.delenv("PAYMASTER_TOKEN")
    secret = tmp_path / "token"
    secret.write_text(TOKENS["spender"] + "\n")  # a Secret's file usually ends with a newline
    monkeypatch.setenv("PAYMASTER_TOKEN_FILE", str(secret))
    with budget_on(side) as budget:
        assert run_one(budget).decision == "allow"
    assert side.used() == Decimal("0.50")


def test_without_a_token_fail_closed_denies_the_step_saying_the_credentials_were_refused(
    sides: Any,
) -> None:
    side = sides()
    agent = FixedMetricAgent()
    budget = budget_on(side, breaker_failures=1)
    for _ in range(2):
        with pytest.raises(SidecarUnavailableError) as info:
            Runner(Step("call", agent), budget=budget).run(0)
        message = str(info.value)
        assert message.startswith(
            f"The budget sidecar at {side.address} refused this client's credentials (no token was sent: "
            "credentials are required: send 'authorization: Bearer <token>' or a client certificate); "
            "fail_policy='fail_closed' denies step 'call' before it runs. Give the SidecarBudget a valid "
            "token (token=, token_file=, $PAYMASTER_TOKEN or $PAYMASTER_TOKEN_FILE) or client certificate"
        )
    # The sidecar answered each time: nothing is retried, and the breaker stays closed.
    assert agent.calls == 0 and budget.breaker_state == "closed"
    assert side.used() == 0
    budget.close()


def test_a_wrong_token_is_refused_without_being_shown(sides: Any, caplog: pytest.LogCaptureFixture) -> None:
    side = sides()
    wrong = "pmt_0123456789ab_" + "w" * 43
    budget = budget_on(side, token=wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SidecarUnavailableError) as info:
        run_one(budget)
    assert "(the token given by token: the bearer token is not valid)" in str(info.value)
    assert wrong not in str(info.value) and "w" * 43 not in caplog.text
    assert wrong not in repr(budget) and wrong not in repr(budget.client.credentials)
    assert repr(budget.client.credentials) == "Credentials(token=<token given by token>)"
    budget.close()


def test_fail_open_runs_and_replays_the_spend_once_the_credentials_are_good(sides: Any) -> None:
    side = sides()
    current: dict[str, str | None] = {"token": None}
    budget = budget_on(side, FAIL_OPEN, token=lambda: current["token"])
    outcome = run_one(budget)
    assert outcome.decision == "fail_open"
    assert outcome.reason is not None and "refused this client's credentials" in outcome.reason
    # Still refused: the spend waits in the journal (it is not rejected for good) ...
    assert budget.flush(0.3) == 1
    assert [p.cost_usd for p in budget.pending_usage()] == [Decimal("0.25")]
    # ... and is charged once the callable returns a token the sidecar accepts.
    current["token"] = TOKENS["spender"]
    assert budget.flush(10) == 0
    assert side.used() == Decimal("0.25")
    budget.close()


def test_a_rotated_token_file_is_picked_up_without_a_restart(sides: Any, tmp_path: Path) -> None:
    """The rotation procedure: issue a second token, put it in the Secret, revoke the first."""
    side = sides()
    first = side.admin.CreateToken(
        pb.CreateTokenRequest(name="runner-1", roles=["spender"], grants=["team=search"]),
        metadata=_root(),
        timeout=10,
    )
    secret = tmp_path / "token"
    secret.write_text(first.secret)
    budget = budget_on(side, token_file=secret)
    assert run_one(budget).decision == "allow"
    second = side.admin.CreateToken(
        pb.CreateTokenRequest(name="runner-2", roles=["spender"], grants=["team=search"]),
        metadata=_root(),
        timeout=10,
    )
    staged = tmp_path / "token.new"
    staged.write_text(second.secret + "\n")
    staged.replace(secret)  # how a mounted Secret changes: a new file swapped in
    side.admin.RevokeToken(pb.RevokeTokenRequest(id=first.token.id), metadata=_root(), timeout=10)
    assert run_one(budget).decision == "allow"
    assert side.used() == Decimal("0.50")
    budget.close()


def test_a_scope_outside_the_tokens_grants_is_refused_naming_it(sides: Any) -> None:
    side = sides()
    budget = SidecarBudget(
        side.address, scopes=Scopes(team="ads"), token=TOKENS["spender"], journal_dir=None, deadline_s=5.0
    )
    with pytest.raises(ConfigError) as info:
        run_one(budget)
    assert str(info.value) == (
        f"the sidecar at {side.address} refused a reservation: PERMISSION_DENIED: scopes.team: spender "
        "is not granted team='ads' (its grants: team=search, user=*)"
    )
    budget.close()


# ------------------------------------------------------------------------------ TLS
def test_tls_with_the_sidecars_ca_runs_the_pipeline(sides: Any) -> None:
    side = sides(tls=True)
    ca_file = side.folder / "ca.crt"
    budget = budget_on(side, token=TOKENS["spender"], ca_file=ca_file)
    assert run_one(budget).decision == "allow"
    assert side.used() == Decimal("0.25")
    budget.close()


def test_tls_from_the_environment(sides: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    side = sides(tls=True)
    monkeypatch.setenv("PAYMASTER_SIDECAR_CA", str(side.folder / "ca.crt"))
    monkeypatch.setenv("PAYMASTER_TOKEN", TOKENS["spender"])
    with budget_on(side) as budget:
        assert run_one(budget).decision == "allow"


def test_a_plaintext_client_or_another_cas_sidecar_is_not_trusted(sides: Any, tmp_path: Path) -> None:
    side = sides(tls=True)
    with (
        budget_on(side, token=TOKENS["spender"], retries=0) as plaintext,
        pytest.raises(SidecarUnavailableError, match="did not answer"),
    ):
        run_one(plaintext)
    stranger = Authority("another CA").write(tmp_path, "stranger")
    with (
        budget_on(side, token=TOKENS["spender"], ca_file=stranger, retries=0) as wrong_ca,
        pytest.raises(SidecarUnavailableError, match="did not answer"),
    ):
        run_one(wrong_ca)
    assert side.used() == 0


def test_mtls_with_a_mapped_client_certificate_needs_no_token(sides: Any) -> None:
    side = sides(tls=True, mutual=True)
    cert, key = side.client_cert("runner", common_name="runner", uri=SPIFFE)
    budget = budget_on(side, ca_file=side.folder / "ca.crt", cert_file=cert, key_file=key)
    assert run_one(budget).decision == "allow"
    assert side.used() == Decimal("0.25")
    budget.close()


def test_mtls_refuses_a_certificate_of_another_ca_and_an_unmapped_one(sides: Any, tmp_path: Path) -> None:
    side = sides(tls=True, mutual=True)
    ca_file = side.folder / "ca.crt"
    cert, key = Authority("another CA").client(uri=SPIFFE).write(tmp_path, "forged")
    with (
        budget_on(side, ca_file=ca_file, cert_file=cert, key_file=key, retries=0) as forged,
        pytest.raises(SidecarUnavailableError, match="did not answer"),
    ):
        run_one(forged)
    cert, key = side.client_cert("unmapped", common_name="somebody", uri="spiffe://example.org/other")
    with (
        budget_on(side, ca_file=ca_file, cert_file=cert, key_file=key) as unmapped,
        pytest.raises(SidecarUnavailableError) as info,
    ):
        run_one(unmapped)
    assert (
        "refused this client's credentials (no token was sent: the client certificate is not mapped"
        in str(info.value)
    )
    assert side.used() == 0


def test_a_rotated_client_certificate_is_used_for_the_calls_that_follow(sides: Any) -> None:
    side = sides(tls=True, mutual=True)
    cert, key = side.client_cert("runner", common_name="somebody")  # not mapped: refused
    budget = budget_on(side, FAIL_OPEN, ca_file=side.folder / "ca.crt", cert_file=cert, key_file=key)
    assert run_one(budget).decision == "fail_open"
    side.client_cert("runner", uri=SPIFFE)  # the same files, now a mapped certificate
    assert wait_until(lambda: run_one(budget).decision == "allow")
    assert budget.flush(10) == 0
    budget.close()


def test_runs_from_one_event_loop_use_mtls_and_follow_a_rotated_client_certificate(sides: Any) -> None:
    """A loop that keeps calling gets a channel of its own (see the client): it presents the same
    certificate as the shared channel and is opened again when the files change."""
    side = sides(tls=True, mutual=True)
    cert, key = side.client_cert("runner", common_name="somebody")  # not mapped: refused
    budget = budget_on(side, FAIL_OPEN, ca_file=side.folder / "ca.crt", cert_file=cert, key_file=key)
    runner = Runner(Step("call", FixedMetricAgent(cost="0.25")), budget=budget)

    async def decision() -> str:
        outcome = (await runner.run_async(0)).step_history[0].budget
        assert outcome is not None
        return str(outcome.decision)

    async def main() -> tuple[list[str], str]:
        refused = [await decision() for _ in range(12)]  # past the calls on the shared channel
        side.client_cert("runner", uri=SPIFFE)  # the same files, now a mapped certificate
        deadline = time.monotonic() + 10  # a bound, never a measurement
        last = await decision()
        for _ in range(1000):
            if last == "allow" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
            last = await decision()
        return refused, last

    refused, last = asyncio.run(main())
    assert set(refused) == {"fail_open"}
    assert last == "allow"
    assert budget.flush(10) == 0
    budget.close()


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"token": "two words"}, {}, "SidecarBudget: token: the token must be printable ASCII without spaces"),
        ({"token": ""}, {}, "SidecarBudget: token: is empty"),
        ({"token": "x" * 40, "token_file": "t"}, {}, "SidecarBudget: token: give a token or a token file, not both"),
        ({"token_file": "{tmp}/missing"}, {}, "SidecarBudget: token_file: cannot read {tmp}/missing (No such file"),
        ({"token_file": "{tmp}/empty"}, {}, "SidecarBudget: token_file: {tmp}/empty is empty"),
        ({}, {"PAYMASTER_TOKEN_FILE": "{tmp}/missing"}, "SidecarBudget: $PAYMASTER_TOKEN_FILE: cannot read"),
        ({}, {"PAYMASTER_TOKEN": "a" * 40, "PAYMASTER_TOKEN_FILE": "{tmp}/empty"},
         "SidecarBudget: set only one of PAYMASTER_TOKEN and PAYMASTER_TOKEN_FILE"),
        ({"ca_file": "{tmp}/missing.crt"}, {}, "SidecarBudget: ca_file: no such file: {tmp}/missing.crt"),
        ({"ca_file": "{tmp}/empty"}, {}, "SidecarBudget: ca_file: {tmp}/empty does not hold a PEM certificate"),
        ({"ca_file": "{tmp}/ca.crt", "cert_file": "{tmp}/ca.crt"}, {},
         "SidecarBudget: cert_file: a client certificate needs both its certificate and its key (key_file is missing)"),
        ({}, {"PAYMASTER_SIDECAR_KEY": "{tmp}/ca.crt"},
         "SidecarBudget: $PAYMASTER_SIDECAR_KEY: a client certificate needs both its certificate and its key"),
        ({"token": 42}, {}, "SidecarBudget: token: expected a string or a callable returning one, got int"),
    ],
)  # fmt: skip
def test_bad_credentials_are_refused_naming_the_parameter(
    kwargs: dict[str, Any], env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").write_text("")
    Authority().write(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as info:
        SidecarBudget("127.0.0.1:7310", journal_dir=None, **kwargs)
    assert str(info.value).startswith(message.format(tmp=tmp_path))
    assert "x" * 40 not in str(info.value) and "a" * 40 not in str(info.value)
