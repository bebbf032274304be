"""The ``paymaster`` console script manages budgets and reads usage from a running sidecar, as tables."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from paymaster.cli import main, table
from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar


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
        "12.50",
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
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


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
