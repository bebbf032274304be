"""``paymaster top``: the budgets' spend, live, in a terminal.

Every ``--interval`` seconds (default 1) it asks the sidecar for its budgets (``ListBudgets``, filtered
by ``--scope`` / ``--scope-id``) and the standing of each (``GetBudgetStatus``): used, reserved, the
limit, a bar of used and reserved, the burn rate and the spend projected for the end of the period.
A wildcard budget (each entity its own spend) shows the ``--entities`` entities that spent most in
its period, found through ``GetUsage``. Alerts appear as they fire (``WatchAlerts``). On a terminal
it is drawn with ``rich`` (the ``cli`` extra); keys: ``s`` sorts by the next column, ``r`` reverses,
``q`` quits. Not on a terminal — piped, in a script — it prints the table once in plain text (``--count``
more times if asked), and ``--json`` prints the statuses as JSON. It takes the credentials of every
other command (``--token-file``, ``--ca``, ``--cert`` ...).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from paymaster import vocabulary
from paymaster.cli import CliError, table

__all__ = ["add_parser", "cmd_top"]

SORTS = ("used", "spend", "burn", "projected", "budget")
"""Sort keys, in the order ``s`` cycles through them: percentage used, USD used, burn rate,
projected spend, budget id."""
_BAR = 20
_ALERTS_SHOWN = 8
_DISCOVERY_S = 10.0  # how often a wildcard budget's entities are looked up again
_PERIOD_DAYS = {"daily": 1, "weekly": 7, "monthly": 31, "quarterly": 92, "yearly": 366}
_UNIT_DAYS = {"m": 1 / 1440, "h": 1 / 24, "d": 1}


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the view: a budget, or one entity of a wildcard budget."""

    status: Any
    """The ``BudgetStatus`` message."""

    @property
    def budget(self) -> Any:
        return self.status.budget

    def figure(self, name: str) -> Decimal:
        try:
            return Decimal(getattr(self.status, name) or "0")
        except ArithmeticError:
            return Decimal(0)

    @property
    def limit(self) -> Decimal:
        return Decimal(self.budget.limit_usd or "0")

    def sort_key(self, by: str) -> Any:
        if by == "budget":
            return (self.budget.id, self.status.scope_id)
        name = {"used": "percentage", "spend": "used_usd", "burn": "burn_rate_usd_per_hour"}.get(
            by, "projected_usd"
        )
        return self.figure(name)


# -- reading the sidecar ---------------------------------------------------------------------------
class Snapshot:
    """What one refresh read: the rows, and why not, if it could not."""

    def __init__(self, rows: list[Row], error: str | None = None, at: datetime | None = None) -> None:
        self.rows = rows
        self.error = error
        self.at = at or datetime.now(UTC)


class Reader:
    """Reads the budgets and their standing through the CLI's client, remembering the entities of
    wildcard budgets between refreshes."""

    def __init__(self, client: Any, args: argparse.Namespace) -> None:
        self.client, self.pb, self.args = client, client.pb, args
        self._entities: dict[str, tuple[float, list[str]]] = {}

    def read(self) -> Snapshot:
        try:
            rows: list[Row] = []
            for budget in self._budgets():
                rows.extend(self._rows(budget))
            return Snapshot(rows)
        except CliError as exc:
            return Snapshot([], str(exc))

    def _budgets(self) -> list[Any]:
        request = self.pb.ListBudgetsRequest(page_size=500)
        if self.args.scope:
            request.scope = vocabulary.enum_number(self.pb.Scope, self.args.scope)
        if self.args.scope_id:
            request.scope_id = self.args.scope_id
        budgets: list[Any] = []
        while True:
            page = self.client.call("ListBudgets", request)
            budgets.extend(page.budgets)
            if not page.next_page_token:
                return budgets
            request.page_token = page.next_page_token

    def _rows(self, budget: Any) -> list[Row]:
        if budget.HasField("scope_id"):
            entities = [""]
        elif self.args.scope_id:
            entities = [self.args.scope_id]
        else:
            entities = self._spenders(budget)
        rows = []
        for entity in entities:
            request = self.pb.GetBudgetStatusRequest(budget_id=budget.id, scope_id=entity)
            try:
                rows.append(Row(self.client.call("GetBudgetStatus", request)))
            except CliError as exc:
                if not str(exc).startswith("NOT_FOUND"):
                    raise
                # deleted since it was listed: it is gone from the next refresh too
        return rows

    def _spenders(self, budget: Any) -> list[str]:
        """The entities of a wildcard budget that spent most in (about) its period."""
        found = self._entities.get(budget.id)
        now = time.monotonic()
        if found is not None and now - found[0] < _DISCOVERY_S:
            return found[1]
        scope = vocabulary.enum_word(self.pb.Scope, budget.scope) or ""
        request = self.pb.GetUsageRequest(group_by=[vocabulary.enum_number(self.pb.Dimension, scope)])
        request.start.FromDatetime(datetime.now(UTC) - _period(budget.period))
        report = self.client.call("GetUsage", request)
        ranked = sorted(
            (r for r in report.rows if r.key and r.key[0]), key=lambda r: -Decimal(r.totals.cost_usd)
        )
        entities = [r.key[0] for r in ranked[: self.args.entities]]
        self._entities[budget.id] = (now, entities)
        return entities


def _period(period: str) -> timedelta:
    """A span at least as long as one ``period`` (a day more, for time zones), to find who spent in it."""
    if period in _PERIOD_DAYS:
        return timedelta(days=_PERIOD_DAYS[period] + 1)
    if period.startswith("rolling_") and period[-1:] in _UNIT_DAYS and period[8:-1].isdigit():
        return timedelta(days=int(period[8:-1]) * _UNIT_DAYS[period[-1]] + 1)
    return timedelta(days=367)


class AlertFeed:
    """``WatchAlerts`` on a thread: the latest alerts, newest first, and the stream's trouble if any."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.alerts: collections.deque[Any] = collections.deque(maxlen=_ALERTS_SHOWN)
        self.error: str | None = None
        self._call: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="paymaster-top-alerts", daemon=True)

    def start(self) -> AlertFeed:
        self._thread.start()
        return self

    def latest(self) -> list[Any]:
        with self._lock:
            return list(self.alerts)

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        after: int | None = None
        while not self._stop.is_set():
            request = self.client.pb.WatchAlertsRequest()
            if after is not None:
                request.after_sequence = after
            try:
                self._call = self.client.stream("WatchAlerts", request)
                for alert in self._call:
                    after = alert.sequence
                    with self._lock:
                        self.alerts.appendleft(alert)
                    self.error = None
            except CliError as exc:
                self.error = f"alerts: {exc}"
            if self._stop.wait(2.0):  # the stream ended or failed: watch again shortly
                return


# -- drawing ---------------------------------------------------------------------------------------
_HEADERS = ("BUDGET", "SCOPE", "ENTITY", "USED", "RESERVED", "LIMIT", "USED %", "USED+RESERVED",
            "BURN/H", "PROJECTED", "ACTION", "ALERTS", "RESETS")  # fmt: skip


def _cells(row: Row) -> list[str]:
    status, budget = row.status, row.budget
    entity = status.scope_id or (budget.scope_id if budget.HasField("scope_id") else "*")
    end = status.period_end.seconds
    if budget.period.startswith("rolling_"):
        resets = "rolling"  # a window that moves with the clock never resets at once
    else:
        resets = datetime.fromtimestamp(end, tz=UTC).strftime("%m-%d %H:%M UTC") if end else ""
    return [
        budget.id,
        _scope(budget),
        entity,
        status.used_usd,
        status.reserved_usd,
        budget.limit_usd,
        status.percentage,
        "",
        status.burn_rate_usd_per_hour,
        status.projected_usd,
        _action(budget),
        ",".join(str(t) for t in status.alerts_fired) or "-",
        resets,
    ]


def _scope(budget: Any) -> str:
    pb = sys.modules["paymaster.v1.budget_pb2"]
    return vocabulary.enum_word(pb.Scope, budget.scope) or ""


def _action(budget: Any) -> str:
    pb = sys.modules["paymaster.v1.budget_pb2"]
    word = vocabulary.enum_word(pb.OnExceed, budget.on_exceed) or ""
    return word if budget.enabled else f"{word} (off)"


def bar_parts(row: Row, width: int = _BAR) -> tuple[int, int]:
    """How many of ``width`` cells are used and how many reserved (together at most ``width``)."""
    limit = row.limit
    used, reserved = row.figure("used_usd"), row.figure("reserved_usd")
    if limit <= 0:
        return (width, 0) if used or reserved else (0, 0)
    used_cells = min(width, int(used * width / limit + Decimal("0.5")))
    both = min(width, int((used + reserved) * width / limit + Decimal("0.5")))
    return used_cells, max(both - used_cells, 0)


def plain_bar(row: Row) -> str:
    used, reserved = bar_parts(row)
    return "[" + "#" * used + "+" * reserved + "." * (_BAR - used - reserved) + "]"


def _sorted(rows: list[Row], by: str, reverse: bool) -> list[Row]:
    # Highest first for figures, alphabetical for ids; ``reverse`` turns either round.
    descending = by != "budget"
    return sorted(rows, key=lambda r: r.sort_key(by), reverse=descending != reverse)


def plain(snapshot: Snapshot, by: str, reverse: bool) -> str:
    if snapshot.error:
        raise CliError(snapshot.error)
    rows = []
    for row in _sorted(snapshot.rows, by, reverse):
        cells = _cells(row)
        cells[7] = plain_bar(row)
        rows.append(cells)
    return table(_HEADERS, rows)


def _alert_line(alert: Any) -> str:
    when = datetime.fromtimestamp(alert.fired_at.seconds, tz=UTC).strftime("%H:%M:%S")
    pb = sys.modules["paymaster.v1.budget_pb2"]
    scope = vocabulary.enum_word(pb.Scope, alert.scope) or ""
    return (
        f"{when}  {alert.budget_id} ({scope}={alert.scope_id}) reached {alert.threshold_percent}%: "
        f"${alert.used_usd} of ${alert.limit_usd}"
    )


class Screen:
    """The live view, drawn with rich."""

    def __init__(self, target: str, by: str, reverse: bool) -> None:
        from rich.console import Console

        self.console = Console()
        self.target, self.by, self.reverse = target, by, reverse

    def render(self, snapshot: Snapshot, alerts: list[Any], alert_error: str | None) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        order = "ascending" if (self.by == "budget") != self.reverse else "descending"
        title = Text.assemble(
            ("paymaster top", "bold"),
            f"  {self.target}  {snapshot.at.strftime('%Y-%m-%d %H:%M:%S UTC')}  sort: {self.by} ({order})",
            ("   s: sort  r: reverse  q: quit", "dim"),
        )
        grid = Table(expand=False, box=None, header_style="bold", pad_edge=False)
        for header in _HEADERS:
            grid.add_column(header, no_wrap=True, justify="right" if header in _NUMERIC else "left")
        for row in _sorted(snapshot.rows, self.by, self.reverse):
            cells: list[Any] = _cells(row)
            cells[7] = self._bar(row)
            grid.add_row(*cells)
        parts: list[Any] = [title, grid]
        if snapshot.error:
            parts.append(Text(f"cannot read the sidecar: {snapshot.error}", style="bold red"))
        elif not snapshot.rows:
            parts.append(Text("no budgets to show"))
        parts.append(Text("\nAlerts", style="bold"))
        if alert_error:
            parts.append(Text(alert_error, style="red"))
        parts.extend(Text(_alert_line(a), style="yellow") for a in alerts)
        if not alerts and not alert_error:
            parts.append(Text("none fired since this view started", style="dim"))
        return Group(*parts)

    def _bar(self, row: Row) -> Any:
        from rich.text import Text

        used, reserved = bar_parts(row)
        percent = row.figure("percentage")
        colour = "red" if percent >= 100 else "yellow" if percent >= 80 else "green"
        return Text.assemble(
            ("█" * used, colour), ("▒" * reserved, "cyan"), ("·" * (_BAR - used - reserved), "dim")
        )


_NUMERIC = {"USED", "RESERVED", "LIMIT", "USED %", "BURN/H", "PROJECTED"}


# -- the command -----------------------------------------------------------------------------------
def cmd_top(args: argparse.Namespace, client: Any) -> None:
    if args.interval <= 0 or args.entities < 1 or (args.count is not None and args.count < 1):
        raise CliError("--interval must be positive, and --entities and --count at least 1", 2)
    reader = Reader(client, args)
    live = sys.stdout.isatty() and not args.json
    if not live:
        _print(args, reader)
        return
    try:
        import rich  # noqa: F401
    except ImportError:
        raise CliError("the live view needs the 'cli' extra: pip install 'paymaster[cli]' "
                       "(piped, paymaster top prints a plain table without it)", 2) from None  # fmt: skip
    _live(args, client, reader)


def _print(args: argparse.Namespace, reader: Reader) -> None:
    for i in range(args.count or 1):
        if i:
            time.sleep(args.interval)
        snapshot = reader.read()
        if args.json:
            if snapshot.error:
                raise CliError(snapshot.error)
            rows = [vocabulary.to_json(r.status) for r in _sorted(snapshot.rows, args.sort, args.reverse)]
            print(json.dumps({"rows": rows, "alerts": []}, indent=2, sort_keys=True))
        else:
            print(plain(snapshot, args.sort, args.reverse), flush=True)


def _live(args: argparse.Namespace, client: Any, reader: Reader) -> None:
    from rich.live import Live

    screen = Screen(client.target, args.sort, args.reverse)
    feed = AlertFeed(client).start()
    refreshes = 0
    try:
        with _keys() as keys, Live(console=screen.console, screen=True, auto_refresh=False) as view:
            while True:
                snapshot = reader.read()
                view.update(screen.render(snapshot, feed.latest(), feed.error), refresh=True)
                refreshes += 1
                if args.count is not None and refreshes >= args.count:
                    return
                deadline = time.monotonic() + args.interval
                while (left := deadline - time.monotonic()) > 0:
                    key = keys(left)
                    if key == "q":
                        return
                    if key in ("s", "r"):
                        if key == "s":
                            screen.by = SORTS[(SORTS.index(screen.by) + 1) % len(SORTS)]
                        else:
                            screen.reverse = not screen.reverse
                        view.update(screen.render(snapshot, feed.latest(), feed.error), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        feed.stop()


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function that waits up to N seconds for a key on the terminal (``None`` if none came), with
    the terminal in cbreak mode meanwhile (keys arrive one by one, unechoed)."""
    if not sys.stdin.isatty():
        yield lambda seconds: time.sleep(seconds)
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait(seconds: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 1).decode(errors="replace").lower() if ready else None

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    top = sub.add_parser(
        "top", parents=[common],
        help="budgets' spend, live: used, reserved, burn rate, projection, alerts as they fire",
    )  # fmt: skip
    top.add_argument("--scope", choices=vocabulary.SPEND_SCOPES, help="only budgets of this scope")
    top.add_argument("--scope-id", help="only budgets of this entity (and wildcard budgets, for it)")
    top.add_argument("--sort", choices=SORTS, default="used",
                     help="order: used (%% of the limit, the default), spend, burn, projected or budget")  # fmt: skip
    top.add_argument("--reverse", action="store_true", help="the other way round")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--entities", type=int, default=5,
                     help="entities shown per wildcard budget, those that spent most (default 5)")  # fmt: skip
    top.add_argument("--count", type=int, help="refreshes before exiting (default: until q; once when piped)")
