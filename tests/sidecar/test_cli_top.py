"""``paymaster top`` against a real sidecar: driven in a pseudo-terminal, its screen read back through a
terminal emulator (pyte), it shows every budget's spend, reserve, bar, burn rate and projection, the
alerts as they fire, sorts on a key, and quits on another; piped, it prints a plain table once."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyte
import pytest

from collector_processor.domain.clock import SystemClock
from paymaster.cli import main
from paymaster.v1 import budget_pb2 as pb
from tests.certs import Authority
from tests.fresh import loads_module
from tests.sidecar.auth.conftest import TOKENS, bearer, start_authed
from tests.sidecar.conftest import RunningSidecar, StoreFactory

pytestmark = pytest.mark.slow

COLUMNS, LINES = 170, 30


class Terminal:
    """A command in a pseudo-terminal of COLUMNS x LINES, its output kept on an emulated screen."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.screen = pyte.Screen(COLUMNS, LINES)
        self._stream = pyte.ByteStream(self.screen)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self._stream.feed(chunk)

    def text(self) -> str:
        with self._lock:
            return "\n".join(line.rstrip() for line in self.screen.display)

    def row(self, first_cell: str, entity: str) -> list[str]:
        """The cells of the table row of budget ``first_cell`` and ``entity`` (split on spaces)."""
        for line in self.text().splitlines():
            cells = line.split()
            if cells[:1] == [first_cell] and cells[2:3] == [entity]:
                return cells
        raise AssertionError(f"no row {first_cell} {entity} on the screen:\n{self.text()}")

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.text()
            if condition(screen):
                return screen
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"never saw {what}; the screen:\n{screen}")
            time.sleep(0.05)

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        os.close(self.master)
        self._reader.join(5)


@pytest.fixture
def authed(tmp_path: Path) -> Iterator[RunningSidecar]:
    """A sidecar with [auth] on and the real clock (top asks for usage since a moment ago)."""
    backing = StoreFactory(backend="sqlite", path=tmp_path / "sidecar.db")
    running = start_authed(backing, SystemClock(), tmp_path)  # type: ignore[arg-type]
    yield running
    running.channel.close()
    running.sidecar.stop(0)


def create(running: RunningSidecar, **fields: object) -> None:
    running.stub.CreateBudget(pb.CreateBudgetRequest(budget=pb.Budget(**fields)), metadata=bearer("root"))


def spend(running: RunningSidecar, usage_id: str, cost: str, **scopes: str) -> None:
    request = pb.RecordUsageRequest(usage_id=usage_id, scopes=pb.ScopeIds(**scopes), cost_usd=cost)
    running.stub.RecordUsage(request, metadata=bearer("root"))


def budgets_with_spend(running: RunningSidecar) -> None:
    create(running, id="search-daily", scope=pb.SCOPE_TEAM, scope_id="search", limit_usd="1.00",
           period="daily", on_exceed=pb.ON_EXCEED_BLOCK, alert_thresholds=[50, 100])  # fmt: skip
    create(running, id="per-user", scope=pb.SCOPE_USER, limit_usd="2", period="rolling_24h",
           on_exceed=pb.ON_EXCEED_DOWNGRADE, alert_thresholds=[90])  # fmt: skip
    spend(running, "a", "0.30", team="search", user="ada")
    spend(running, "b", "1.50", user="bob")
    running.stub.Reserve(
        pb.ReserveRequest(scopes=pb.ScopeIds(team="search"), estimate_usd="0.10", ttl={"seconds": 600}),
        metadata=bearer("root"),
    )


def status(running: RunningSidecar, budget: str, entity: str = "") -> pb.BudgetStatus:
    return running.stub.GetBudgetStatus(
        pb.GetBudgetStatusRequest(budget_id=budget, scope_id=entity), metadata=bearer("root")
    )


def test_top_in_a_terminal_shows_spend_bars_and_alerts_live_sorts_and_quits(
    authed: RunningSidecar, tmp_path: Path
) -> None:
    budgets_with_spend(authed)
    token = tmp_path / "reader.token"
    token.write_text(TOKENS["reader"])
    term = Terminal([sys.executable, "-m", "paymaster.cli", "top", "--target", authed.address,
                     "--token-file", str(token), "--interval", "0.2"])  # fmt: skip
    try:
        term.wait_for(lambda s: "search-daily" in s and "bob" in s and "ada" in s, "every budget's rows")
        search = term.row("search-daily", "search")
        assert search[:7] == ["search-daily", "team", "search", "0.300000", "0.100000", "1.000000", "30.00"]
        # 30 % used and 10 % reserved of a 20-cell bar: 6 used, 2 reserved, 12 free.
        assert search[7] == "█" * 6 + "▒" * 2 + "·" * 12
        now = status(authed, "search-daily")
        # The burn rate and the projection move with the clock between two reads: their form only.
        assert re.fullmatch(r"[0-9]+\.[0-9]{6}", search[8]) and re.fullmatch(r"[0-9]+\.[0-9]{6}", search[9])
        assert search[10] == "block"
        assert search[11:] == ["-", *now.period_end.ToDatetime().strftime("%m-%d %H:%M").split(), "UTC"]
        bob = term.row("per-user", "bob")
        assert bob[:8] == [
            "per-user",
            "user",
            "bob",
            "1.500000",
            "0.000000",
            "2.000000",
            "75.00",
            "█" * 15 + "·" * 5,
        ]
        assert bob[-2:] == ["-", "rolling"] and bob[-3] == "downgrade"
        assert term.row("per-user", "ada")[3] == "0.300000"
        screen = term.text()
        assert screen.index("per-user      user   bob") < screen.index("search-daily") < screen.index(" ada ")
        assert "sort: used (descending)" in screen and "none fired since this view started" in screen

        spend(authed, "c", "0.30", team="search")  # 60 %: the 50 % alert fires
        term.wait_for(
            lambda s: "search-daily (team=search) reached 50%: $0.600000 of $1.000000" in s, "the alert"
        )
        term.wait_for(lambda s: term.row("search-daily", "search")[3] == "0.600000", "the new spend")
        assert term.row("search-daily", "search")[11] == "50"

        term.press("s")
        term.wait_for(lambda s: "sort: spend (descending)" in s, "the next sort key")
        term.press("r")
        screen = term.wait_for(lambda s: "sort: spend (ascending)" in s, "the reversed order")
        assert screen.index(" ada ") < screen.index("search-daily") < screen.index(" bob ")
        term.press("q")
        assert term.process.wait(10) == 0
    finally:
        term.close()


def test_piped_it_prints_one_plain_table_filtered_by_scope(
    authed: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    budgets_with_spend(authed)
    reader = ("--target", authed.address, "--token", TOKENS["reader"])
    assert main(["top", *reader, "--scope", "user", "--sort", "budget"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["BUDGET", "SCOPE", "ENTITY", "USED"]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["per-user", "user", "ada"],
        ["per-user", "user", "bob"],
    ]
    assert "[###############.....]" in lines[3]
    assert main(["top", *reader, "--scope-id", "search"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[2:]
    assert row.split()[:3] == ["search-daily", "team", "search"] and "[######++............]" in row


def test_top_json_is_the_budget_statuses_in_the_shared_vocabulary(
    authed: RunningSidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    budgets_with_spend(authed)
    assert main(["--json", "top", "--target", authed.address, "--token", TOKENS["reader"]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["budget"]["id"], r["scope_id"], r["used_usd"]) for r in shown["rows"]] == [
        ("per-user", "bob", "1.500000"), ("search-daily", "search", "0.300000"), ("per-user", "ada", "0.300000"),
    ]  # fmt: skip
    assert shown["rows"][1]["budget"]["on_exceed"] == "block" and shown["alerts"] == []


def test_top_takes_the_credentials_of_every_command(
    backing: StoreFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = Authority()
    ca_file = ca.write(tmp_path)
    cert, key = ca.server().write(tmp_path, "server")
    running = start_authed(
        backing, SystemClock(), tmp_path, f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    )  # type: ignore[arg-type]
    try:
        target = ("--target", running.address, "--ca", str(ca_file))
        assert main(["top", *target]) == 1
        assert re.search(
            r"paymaster top: the sidecar refused the credentials \(no token was sent", capsys.readouterr().err
        )
        assert main(["top", *target, "--token", TOKENS["reader"]]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith("BUDGET")
    finally:
        running.channel.close()
        running.sidecar.stop(0)


def test_the_sdk_and_the_cli_load_no_tui_library_until_top_draws() -> None:
    assert not loads_module("import paymaster, paymaster.cli, paymaster._cli_top", "rich")
