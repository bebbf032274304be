"""The ``paymaster`` console script manages budgets and reads usage from a running sidecar, as tables."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest

from collector_processor.auth.tokens import hash_token, token_id_of
from collector_processor.domain.clock import ManualClock, SystemClock
from paymaster._cli_tokens import parse_duration
from paymaster.cli import main, table
from paymaster.v1 import budget_pb2 as pb
from tests.certs import Authority
from tests.sdk.sidecar_support import wait_until
from tests.sidecar.auth.conftest import TOKENS, start_authed
from tests.sidecar.conftest import START, RunningSidecar, StoreFactory, start_sidecar


def run(server: RunningSidecar, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--target", server.address, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_aligns_columns_under_a_rule() -> None:
    assert table(("ID", "LIMIT"), [("a", "1"), ("long-id", "250")]).splitlines() == [
        "ID       LIMIT",
        "-------  -----",
        "a        1",
        "long-id  250",
    ]


def test_budgets_create_list_update_status_delete(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        server, capsys, "budgets", "create", "--id", "search-daily", "--name", "Search daily", "--scope", "team",
        "--scope-id", "search", "--limit", "12.50", "--period", "daily", "--on-exceed", "block", "--thresholds", "50,100",
    )  # fmt: skip
    assert code == 0
    header, _, row = out.splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "SCOPE",
        "SCOPE",
        "ID",
        "LIMIT",
        "USD",
        "PERIOD",
        "ON",
        "EXCEED",
        "ALERTS",
        "%",
        "ENABLED",
        "SOURCE",
    ]
    assert row.split() == [
        "search-daily",
        "Search",
        "daily",
        "team",
        "search",
        "12.500000",
        "daily",
        "block",
        "50,100",
        "yes",
        "api",
    ]
    run(
        server,
        capsys,
        "budgets",
        "create",
        "--id",
        "users",
        "--scope",
        "user",
        "--limit",
        "2",
        "--period",
        "rolling_24h",
        "--on-exceed",
        "downgrade",
    )
    code, out, _ = run(server, capsys, "budgets", "list", "--all")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["search-daily", "users"]
    assert "*" in out.splitlines()[3]  # the wildcard's scope id
    code, out, _ = run(server, capsys, "budgets", "update", "search-daily", "--limit", "20", "--disable")
    assert code == 0 and "20" in out and " no " in out

    r = server.stub.Reserve(
        pb.ReserveRequest(scopes=pb.ScopeIds(team="search", user="ada"), estimate_usd="3")
    )
    server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="2.5"))
    code, out, _ = run(server, capsys, "budgets", "status", "users", "--scope-id", "ada")
    rows = {line[:15].strip(): line[15:].strip() for line in out.splitlines()[2:]}
    assert code == 0
    assert rows["entity"] == "ada"
    assert (rows["used USD"], rows["used %"], rows["exceeded"]) == ("2.500000", "125.00", "yes")
    code, out, _ = run(server, capsys, "--json", "budgets", "get", "users")
    assert json.loads(out)["period"] == "rolling_24h"
    code, out, _ = run(server, capsys, "budgets", "delete", "users")
    assert (code, out.strip()) == (0, "deleted budget users")


def test_usage_by_dimensions_with_a_total_row(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    for team, model, cost in (
        ("search", "gpt-4o", "0.30"),
        ("ads", "gpt-4o-mini", "0.02"),
        ("search", "gpt-4o-mini", "0.01"),
    ):
        server.stub.RecordUsage(
            pb.RecordUsageRequest(
                usage_id=f"{team}-{model}",
                scopes=pb.ScopeIds(team=team),
                cost_usd=cost,
                usage=pb.UsageFacts(provider="openai", model=model, input_tokens=10),
            )
        )
    code, out, _ = run(server, capsys, "usage", "--by", "team,day")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:4] == ["TEAM", "DAY", "COST", "USD"]
    assert lines[2].split()[:3] == ["ads", "2025-03-14", "0.020000"]
    assert lines[3].split()[:3] == ["search", "2025-03-14", "0.310000"]
    assert lines[4].split()[:2] == ["TOTAL", "0.330000"]
    code, out, _ = run(server, capsys, "usage", "--team", "search", "--model", "gpt-4o")
    assert out.splitlines()[2].split()[0] == "0.300000"


def test_the_global_flags_work_after_the_command_as_before_it(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    server.stub.CreateBudget(
        pb.CreateBudgetRequest(
            budget=pb.Budget(
                id="b",
                scope=pb.SCOPE_TEAM,
                scope_id="t",
                limit_usd="1",
                period="daily",
                on_exceed=pb.ON_EXCEED_WARN,
            )
        )
    )
    for argv in (
        ["budgets", "list", "--json", "--target", server.address],
        ["--json", "budgets", "list", "--target", server.address],
        ["--target", server.address, "--json", "budgets", "list"],
    ):
        assert main(argv) == 0, argv
        assert [b["id"] for b in json.loads(capsys.readouterr().out)] == ["b"]
    assert main(["budgets", "list", "--target", server.address, "--timeout", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "b"


@pytest.mark.parametrize(
    ("argv", "usage", "choices"),
    [
        (["budgets"], "paymaster budgets", "create, get, delete, status, list, update"),
        (["tokens"], "paymaster tokens", "create, list, revoke, new"),
        ([], "paymaster", "sidecar, budgets, usage, tokens, audit, top, health, demo"),
    ],
)
def test_a_command_left_out_lists_the_choices(
    argv: list[str], usage: str, choices: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.splitlines()[-1] == f"{usage}: error: choose a command: {choices}"
    assert "_command" not in err


def test_json_speaks_the_tables_words_with_every_field_and_numbers_for_counts(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    """One vocabulary: ``organization`` and ``warn``, never SCOPE_ORGANIZATION or ON_EXCEED_WARN; every
    field present (null when unset), so jq paths never vanish; token counts as numbers."""
    _, out, _ = run(server, capsys, "--json", "budgets", "create", "--id", "org", "--scope", "organization",
                    "--limit", "5", "--period", "monthly", "--on-exceed", "warn")  # fmt: skip
    created = json.loads(out)
    assert (created["scope"], created["on_exceed"], created["scope_id"]) == ("organization", "warn", None)
    assert set(created) == {f.name for f in pb.Budget.DESCRIPTOR.fields}
    assert created["enabled"] is True and created["declared_in_config"] is False
    assert created["created_at"].endswith("Z") and created["alert_thresholds"] == [80, 100]
    _, out, _ = run(server, capsys, "--json", "budgets", "status", "org", "--scope-id", "acme")
    status = json.loads(out)
    assert status["budget"]["on_exceed"] == "warn" and status["alerts_fired"] == []
    assert status["used_usd"] == "0.000000" and status["period_start"].endswith("T00:00:00Z")
    server.stub.RecordUsage(
        pb.RecordUsageRequest(
            usage_id="u1",
            scopes=pb.ScopeIds(organization="acme"),
            cost_usd="0.5",
            usage=pb.UsageFacts(provider="openai", model="gpt-4o", input_tokens=7),
        )
    )
    _, out, _ = run(server, capsys, "--json", "usage", "--by", "organization,model")
    report = json.loads(out)
    assert report["group_by"] == ["organization", "model"]
    assert report["rows"] == [
        {"key": ["acme", "gpt-4o"], "totals": {"cost_usd": "0.500000", "input_tokens": 7, "output_tokens": 0,
                                               "total_tokens": 7, "records": 1}},
    ]  # fmt: skip
    assert report["total"]["records"] == 1
    assert "SCOPE_" not in out and "ON_EXCEED_" not in out


def test_errors_are_reported_on_one_line_with_a_non_zero_exit(
    server: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        server,
        capsys,
        "budgets",
        "create",
        "--scope",
        "team",
        "--limit",
        "-1",
        "--period",
        "daily",
        "--on-exceed",
        "warn",
    )
    assert code == 1
    assert (
        err.strip() == "paymaster budgets: INVALID_ARGUMENT: budget.limit_usd: must not be negative, got '-1'"
    )
    code, _, err = run(server, capsys, "budgets", "get", "missing")
    assert code == 1 and "NOT_FOUND: budget 'missing' does not exist" in err
    code, _, err = run(server, capsys, "usage", "--by", "colour")
    assert code == 2 and "--by: unknown dimension 'colour'" in err


def test_an_unreachable_sidecar_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", "127.0.0.1:1", "--timeout", "1", "budgets", "list"])
    assert code == 1
    assert "cannot reach the sidecar at 127.0.0.1:1" in capsys.readouterr().err


# -- tokens, audit and credentials against a sidecar with [auth] on ---------------------------------
@pytest.fixture
def authed(backing: StoreFactory, tmp_path: Path) -> Iterator[RunningSidecar]:
    running = start_authed(backing, SystemClock(), tmp_path)
    yield running
    running.channel.close()
    running.sidecar.stop(0)


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PAYMASTER_TOKEN", "PAYMASTER_TOKEN_FILE", "PAYMASTER_SIDECAR_CA", "PAYMASTER_SIDECAR_CERT",
                 "PAYMASTER_SIDECAR_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


class Shell:
    """Runs the console script and keeps everything it printed, to look for secrets afterwards."""

    def __init__(self, server: RunningSidecar, capsys: pytest.CaptureFixture[str]) -> None:
        self.server, self.capsys = server, capsys
        self.printed: list[str] = []

    def __call__(self, *args: str, keep: bool = True) -> tuple[int, str, str]:
        code = main(["--target", self.server.address, *args])
        out, err = self.capsys.readouterr()
        if keep:
            self.printed += [out, err]
        return code, out, err


def reserve_as(server: RunningSidecar, token: str) -> grpc.StatusCode:
    try:
        server.stub.Reserve(
            pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="0.01"),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=10,
        )
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_tokens_create_use_revoke_list_and_audit_without_showing_a_secret_twice(
    authed: RunningSidecar, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shell = Shell(authed, capsys)
    root_file = tmp_path / "root.token"
    root_file.write_text(TOKENS["root"] + "\n")
    root = ("--token-file", str(root_file))
    code, _, _ = shell(*root, "budgets", "create", "--id", "search-daily", "--scope", "team",
                       "--scope-id", "search", "--limit", "5", "--period", "daily", "--on-exceed", "block")  # fmt: skip
    assert code == 0

    code, out, _ = shell("tokens", "create", *root, "--name", "ci-runner", "--role", "spender",
                         "--grant", "team=search", "--grant", "user=*", "--expires", "90d", keep=False)  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLES", "GRANTS", "CREATED", "EXPIRES", "REVOKED"]
    row = lines[2].split()
    assert row[1:4] == ["ci-runner", "spender", "team=search,user=*"] and row[-1] == "-"
    (secret,) = [line.removeprefix("token: ") for line in lines if line.startswith("token: ")]
    assert secret.startswith(f"pmt_{row[0]}_")
    assert "This is the only time the token is shown" in out
    code, out, _ = shell("--json", "tokens", "create", *root, "--name", "dashboards", "--role", "reader",
                         "--grant", "team=search", keep=False)  # fmt: skip
    reader = json.loads(out)
    assert sorted(reader) == ["created_at", "created_by", "expires_at", "grants", "id", "name",
                              "revoked_at", "roles", "token", "trust_reported_cost"]  # fmt: skip
    assert (reader["roles"], reader["created_by"], reader["expires_at"]) == (["reader"], "root", None)

    # The printed tokens work: the spender reserves, the reader lists budgets ...
    assert reserve_as(authed, secret) == grpc.StatusCode.OK
    code, out, _ = shell("budgets", "list", "--token", reader["token"])
    assert code == 0 and out.splitlines()[2].split()[0] == "search-daily"
    # ... and each only for what its role allows.
    code, _, err = shell("--token", secret, "budgets", "list")
    assert code == 1
    assert err.strip() == (
        "paymaster budgets: not permitted with these credentials: ci-runner may not read: it needs the "
        "role admin or reader (it has spender)"
    )

    code, out, _ = shell(*root, "--json", "tokens", "list")
    listed = {t["name"]: t for t in json.loads(out)}
    assert set(listed) == {"ci-runner", "dashboards"}
    created = datetime.fromisoformat(listed["ci-runner"]["created_at"])
    assert datetime.fromisoformat(listed["ci-runner"]["expires_at"]) - created == timedelta(days=90)

    code, out, _ = shell(*root, "tokens", "revoke", row[0])
    assert code == 0 and out.startswith(
        f"revoked token {row[0]} (ci-runner); every sidecar sharing the store"
    )
    assert wait_until(lambda: reserve_as(authed, secret) == grpc.StatusCode.UNAUTHENTICATED)
    code, _, err = shell("--token", secret, "budgets", "list")
    assert (code, err.strip()) == (
        1,
        f"paymaster budgets: the sidecar refused the credentials (the token given by --token): token "
        f"{row[0]} was revoked",
    )
    code, out, _ = shell(*root, "tokens", "list")
    assert [line.split()[1] for line in out.splitlines()[2:]] == ["dashboards"]
    code, out, _ = shell(*root, "tokens", "list", "--all")
    revoked = next(line for line in out.splitlines() if "ci-runner" in line)
    assert revoked.rstrip().endswith("UTC") and revoked.count("UTC") == 3  # created, expires, revoked

    code, out, _ = shell(*root, "audit")
    events = [line.split() for line in out.splitlines()[2:]]
    # SEQ, TIME (date, hour, "UTC"), PRINCIPAL, ADDRESS, ACTION, TARGET
    assert [(e[0], e[4], e[6], e[7]) for e in events] == [
        ("1", "root", "budget.create", "search-daily"),
        ("2", "root", "token.create", row[0]),
        ("3", "root", "token.create", reader["id"]),
        ("4", "root", "token.revoke", row[0]),
    ]
    assert all(e[3] == "UTC" and e[5].startswith(("ipv4:", "ipv6:")) for e in events)
    code, out, _ = shell(*root, "--json", "audit", "--after", "1", "--limit", "2")
    page = json.loads(out)
    assert [e["sequence"] for e in page["events"]] == [2, 3] and page["next_after_sequence"] == 3
    first = page["events"][0]
    assert first["before"] is None and first["after"]["name"] == "ci-runner"
    assert "secret_sha256" not in first["after"]

    everything = "\n".join(shell.printed)
    for token in (*TOKENS.values(), secret, reader["token"]):
        assert token not in everything
        # not even the secret part (after "pmt_<12 hex>_"; it may itself contain "_")
        assert (token[len("pmt_") + 13 :] if token.startswith("pmt_") else token) not in everything


def test_refused_credentials_are_one_line_that_never_shows_the_token(
    authed: RunningSidecar, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shell = Shell(authed, capsys)
    code, _, err = shell("budgets", "list")
    assert (code, err.count("\n")) == (1, 1)
    assert err.startswith(
        "paymaster budgets: the sidecar refused the credentials (no token was sent; give --token-file or "
        "--token, or set PAYMASTER_TOKEN_FILE or PAYMASTER_TOKEN): credentials are required"
    )
    wrong = "pmt_0123456789ab_" + "Q" * 43
    code, _, err = shell("audit", "--token", wrong)
    assert err.strip() == (
        "paymaster audit: the sidecar refused the credentials (the token given by --token): the bearer "
        "token is not valid"
    )
    code, _, err = shell("--token", TOKENS["reader"], "tokens", "create", "--name", "x", "--role", "admin",
                         "--grant", "*")  # fmt: skip
    assert err.strip() == (
        "paymaster tokens: not permitted with these credentials: reader may not manage tokens: it needs "
        "the role admin (it has reader)"
    )
    code, _, err = shell("--token", TOKENS["admin"], "tokens", "create", "--name", "x", "--role", "admin",
                         "--grant", "*")  # fmt: skip
    assert err.strip().startswith(
        "paymaster tokens: not permitted with these credentials: grants: * reach beyond"
    )
    assert "Q" * 43 not in "".join(shell.printed)
    assert all(t not in "".join(shell.printed) for t in TOKENS.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--token-file", "{tmp}/none", "audit"), "paymaster audit: --token-file: cannot read {tmp}/none (No such file"),
        (("--token", "has space", "audit"), "paymaster audit: --token: the token must be printable ASCII without spaces"),
        (("--ca", "{tmp}/none.crt", "audit"), "paymaster audit: --ca: no such file: {tmp}/none.crt"),
        (("--cert", "{tmp}/ca.crt", "audit"), "paymaster audit: --cert: a client certificate needs both"),
        (("tokens", "create", "--name", "a", "--role", "reader", "--grant", "*", "--expires", "soon"),
         "paymaster tokens: --expires: expected a duration such as 30m, 12h, 90d or 2w (or never), got 'soon'"),
        (("audit", "--limit", "0"), "paymaster audit: --limit: expected a positive number of events, got 0"),
    ],
)  # fmt: skip
def test_bad_credential_flags_are_refused_before_calling(
    args: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Authority().write(tmp_path)
    code = main(["--target", "127.0.0.1:1", *(a.format(tmp=tmp_path) for a in args)])
    assert code == 2
    assert capsys.readouterr().err.startswith(message.format(tmp=tmp_path))


def test_tokens_new_makes_a_token_the_sidecar_accepts_from_its_hash(
    backing: StoreFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No sidecar is asked (the target is nowhere); the tokens file holds only the hash."""
    assert main(["--target", "127.0.0.1:1", "tokens", "new", "--name", "ops", "--role", "admin",
                 "--role", "reader", "--grant", "*"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    token = out.splitlines()[0].removeprefix("token:  ")
    digest = out.splitlines()[1].removeprefix("sha256: ")
    assert token_id_of(token) is not None and hash_token(token) == digest
    entry = out[out.index("[[tokens]]") :]
    assert token not in entry
    assert main(["tokens", "new", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert sorted(made) == ["sha256", "token", "tokens_file_entry"] and made["token"] != token

    tokens_file = tmp_path / "bootstrap.toml"
    tokens_file.write_text(entry)
    running = start_sidecar(
        backing, ManualClock(START), f'[auth]\nenabled = true\ntokens_file = "{tokens_file}"\n'
    )
    try:
        assert main(["--target", running.address, "--token", token, "tokens", "list"]) == 0
        assert main(["--target", running.address, "audit"]) == 1
    finally:
        running.channel.close()
        running.sidecar.stop(0)


def test_tls_and_mtls_flags_reach_a_sidecar_that_requires_them(
    backing: StoreFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = Authority()
    ca_file = ca.write(tmp_path)
    cert, key = ca.server().write(tmp_path, "server")
    admin_cert, admin_key = ca.client(common_name="ops-laptop").write(tmp_path, "ops")
    running = start_authed(
        backing, ManualClock(START), tmp_path,
        f'[[auth.clients]]\nname = "ops"\ncommon_name = "ops-laptop"\nroles = ["admin"]\ngrants = ["*"]\n'
        f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nclient_ca_file = "{ca_file}"\n',
    )  # fmt: skip
    try:
        target = ("--target", running.address)
        mtls = ("--ca", str(ca_file), "--cert", str(admin_cert), "--key", str(admin_key))
        assert main([*target, *mtls, "tokens", "list"]) == 0
        monkeypatch.setenv("PAYMASTER_SIDECAR_CA", str(ca_file))
        monkeypatch.setenv("PAYMASTER_SIDECAR_CERT", str(admin_cert))
        monkeypatch.setenv("PAYMASTER_SIDECAR_KEY", str(admin_key))
        assert main([*target, "audit"]) == 0
        capsys.readouterr()
        # Without a client certificate the handshake fails; with a plaintext channel, too.
        monkeypatch.delenv("PAYMASTER_SIDECAR_CERT")
        monkeypatch.delenv("PAYMASTER_SIDECAR_KEY")
        assert main([*target, "--timeout", "2", "audit"]) == 1
        assert f"cannot reach the sidecar at {running.address}" in capsys.readouterr().err
    finally:
        running.channel.close()
        running.sidecar.stop(0)


def test_durations() -> None:
    assert [parse_duration(t, "--expires") for t in ("30m", "12h", "90d", "2w", "45s", "never", "0")] == [
        1800, 43200, 7_776_000, 1_209_600, 45, 0, 0,
    ]  # fmt: skip


def test_a_token_expires_by_the_same_clock_that_stamped_it(
    backing: StoreFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = start_authed(backing, ManualClock(START), tmp_path)
    try:
        root = ("--target", running.address, "--token", TOKENS["root"])
        assert main([*root, "--json", "tokens", "create", "--name", "a", "--role", "reader",
                     "--grant", "*", "--expires", "1h"]) == 0  # fmt: skip
        token = json.loads(capsys.readouterr().out)["token"]
        # An hour of life left on the sidecar's clock: it must be accepted.
        assert main(["--target", running.address, "--token", token, "budgets", "list"]) == 0
    finally:
        running.channel.close()
        running.sidecar.stop(0)


def test_health_answers_without_a_token_and_speaks_tls_with_a_server_name(
    backing: StoreFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the Kubernetes readiness probe runs: TLS to 127.0.0.1 with a certificate for the Service."""
    ca = Authority()
    ca_file = ca.write(tmp_path)
    service = "paymaster-sidecar.paymaster.svc"
    cert, key = ca.server(common_name=service, dns_names=(service,)).write(tmp_path, "server")
    running = start_authed(
        backing, ManualClock(START), tmp_path, f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    try:
        target = ("--target", running.address, "--timeout", "2", "--ca", str(ca_file))
        assert main([*target, "--server-name", service, "health"]) == 0
        assert capsys.readouterr().out == "SERVING\n"
        assert main([*target, "--server-name", service, "--json", "health", "--service", ""]) == 0
        assert json.loads(capsys.readouterr().out) == {"service": "", "status": "SERVING"}
        # The certificate is not for 127.0.0.1: without the name, TLS refuses the connection.
        assert main([*target, "health"]) == 1
        assert "cannot reach the sidecar" in capsys.readouterr().err
        assert main([*target, "--server-name", service, "health", "--service", "nope"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    finally:
        running.channel.close()
        running.sidecar.stop(0)


def test_sidecar_listen_overrides_the_address_of_the_default_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "collector_processor", "--listen", "127.0.0.1:0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    printed = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until it listens, or exits
            printed.append(line)
            if "listening on" in line:
                break
    finally:
        process.terminate()
        process.wait(10)
    assert "listening on 127.0.0.1:" in printed[-1], "".join(printed)


# -- paymaster sidecar --listen ---------------------------------------------------------------------
def _start_sidecar_process(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``paymaster sidecar ARGS`` as its own process, and the address its first line says it serves on."""
    process = subprocess.Popen(
        [sys.executable, "-m", "paymaster.cli", "sidecar", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as waiting:
        waiting.register(process.stdout, selectors.EVENT_READ)
        ready = waiting.select(timeout=60)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("paymaster sidecar listening on "):
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"the sidecar did not start (exit {process.returncode}): {line}{err}")
    return process, line.split()[4]


def _stop(process: subprocess.Popen[str]) -> int:
    """SIGTERM, and the exit status; a process still running 30 s later fails the test with its output."""
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)  # reads the pipes, so a chatty process never blocks on them
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"the sidecar was still running 30 s after SIGTERM; it wrote:\n{err}")
    return process.returncode


@pytest.mark.parametrize("with_config", [False, True], ids=["defaults", "config"])
def test_sidecar_listen_overrides_the_address_and_the_process_answers_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_config: bool
) -> None:
    args = ["--listen", "127.0.0.1:0"]
    if with_config:
        config = tmp_path / "sidecar.toml"
        config.write_text(
            '[server]\nlisten = "127.0.0.1:1"\n[store]\npath = "ledger.db"\nbusy_timeout_ms = 100\n'
            '[[budgets]]\nid = "search-daily"\nscope = "team"\nscope_id = "search"\nlimit_usd = 250\n'
            'period = "daily"\non_exceed = "block"\n'
        )
        args += ["--config", str(config)]
    process, address = _start_sidecar_process(tmp_path, *args)
    try:
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) not in (0, 1, 7310)
        assert main(["--target", address, "--json", "budgets", "list"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [b["id"] for b in listed] == (["search-daily"] if with_config else [])
    finally:
        assert _stop(process) == 0
    assert (tmp_path / ("ledger.db" if with_config else "paymaster-sidecar.db")).exists()


def test_sidecar_listen_is_checked_like_the_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "paymaster.cli", "sidecar", "--listen", "localhost"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("paymaster sidecar: --listen: must be host:port")
