"""The ``paymaster`` console script: run the budget sidecar, manage budgets and read usage from a shell.

``paymaster sidecar --config sidecar.toml`` runs the sidecar; ``paymaster budgets ...``,
``paymaster usage``, ``paymaster tokens ...`` and ``paymaster audit`` talk to a running one over gRPC
(``--target``, or ``PAYMASTER_SIDECAR``, default ``127.0.0.1:7310``) and print tables (or JSON with
``--json``). With ``[auth]`` on, they present a token (``--token``, ``--token-file``, or
``PAYMASTER_TOKEN`` / ``PAYMASTER_TOKEN_FILE``) and, for TLS, verify the sidecar with ``--ca`` and
present a client certificate with ``--cert`` and ``--key`` (``PAYMASTER_SIDECAR_CA``, ``_CERT``,
``_KEY``). These flags go before the command or after it. A refused credential is reported on one
line that never shows the token. grpc, the generated API and the sidecar are imported inside the
commands, so ``import paymaster`` never pays for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from paymaster import vocabulary

__all__ = ["CliError", "emit", "main", "table"]

DEFAULT_TARGET = "127.0.0.1:7310"
SCOPES = vocabulary.SPEND_SCOPES
ACTIONS = vocabulary.ON_EXCEED
DIMENSIONS = vocabulary.DIMENSIONS
_TIERS_HELP = "ordered tiers instead of one action, e.g. 50:warn,80:downgrade,100:block"


class CliError(Exception):
    """A problem to report on one line and exit 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- output ----------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; what every listing command prints."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def emit(args: argparse.Namespace, payload: Any, render: Callable[[], str]) -> None:
    """JSON with ``--json`` (``payload``, in the shape of ``paymaster.vocabulary``), else what
    ``render`` returns."""
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print(render())


def _time(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- talking to the sidecar ------------------------------------------------------------------------
_FLAGS = {"token": "--token", "token_file": "--token-file", "ca_file": "--ca", "cert_file": "--cert",
          "key_file": "--key"}  # fmt: skip


class _Client:
    """A stub with the CLI's credentials, deadline and error reporting."""

    def __init__(self, target: str, timeout: float, args: argparse.Namespace) -> None:
        import grpc

        from paymaster._sidecar.credentials import Credentials
        from paymaster.exceptions import ConfigError
        from paymaster.v1 import budget_pb2

        try:
            self._credentials = Credentials.resolve(
                token=args.token, token_file=args.token_file, ca_file=args.ca, cert_file=args.cert,
                key_file=args.key, label=_FLAGS.__getitem__,
            )  # fmt: skip
        except ConfigError as exc:
            raise CliError(str(exc), 2) from None
        self.pb = budget_pb2
        self._grpc = grpc
        self._target = target
        self._timeout = timeout
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        self._connection = self._credentials.connect(target, options)

    @property
    def target(self) -> str:
        return self._target

    def call(self, method: str, request: Any) -> Any:
        return self._invoke(getattr(self._connection.stub(), method), request)

    def stream(self, method: str, request: Any) -> _Stream:
        """A server stream with the CLI's credentials and no deadline; ``cancel()`` it to stop. Its
        errors are reported as ``call``'s are, when iterated."""
        rpc = getattr(self._connection.stub(), method)
        return _Stream(rpc(request, metadata=self._credentials.metadata()), self)

    def health(self, service: str) -> str:
        """The sidecar's gRPC health status of ``service`` (``SERVING``, ``NOT_SERVING`` ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._connection.channel())
        reply = self._invoke(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def _invoke(self, rpc: Any, request: Any) -> Any:
        try:
            return rpc(request, timeout=self._timeout, metadata=self._credentials.metadata())
        except self._grpc.RpcError as exc:
            raise self.failure(exc) from None

    def failure(self, exc: Any) -> CliError:
        """The one-line error for a refused or failed call."""
        codes = self._grpc.StatusCode
        code = exc.code()
        if code in (codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED):
            return CliError(f"cannot reach the sidecar at {self._target}: {exc.details()}")
        if code == codes.UNAUTHENTICATED:
            return CliError(f"the sidecar refused the credentials ({self._whose()}): {exc.details()}")
        if code == codes.PERMISSION_DENIED:
            return CliError(f"not permitted with these credentials: {exc.details()}")
        return CliError(f"{code.name}: {exc.details()}")

    def _whose(self) -> str:
        if not self._credentials.has_token:
            return "no token was sent; give --token-file or --token, or set PAYMASTER_TOKEN_FILE or PAYMASTER_TOKEN"
        return self._credentials.describe_token()

    def close(self) -> None:
        self._connection.close()


class _Stream:
    """A server stream whose failures read like the other commands' (``CliError``); a cancelled one
    just ends."""

    def __init__(self, call: Any, client: _Client) -> None:
        self._call, self._client = call, client

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except self._client._grpc.RpcError as exc:
            if exc.code() != self._client._grpc.StatusCode.CANCELLED:
                raise self._client.failure(exc) from None

    def cancel(self) -> None:
        self._call.cancel()


def _budget_row(b: Any) -> list[Any]:
    pb = sys.modules["paymaster.v1.budget_pb2"]
    return [
        b.id,
        b.name,
        vocabulary.enum_word(pb.Scope, b.scope),
        b.scope_id if b.HasField("scope_id") else "*",
        b.limit_usd,
        b.period,
        _tiers_or_action(pb, b),
        ",".join(str(t) for t in b.alert_thresholds) or "-",
        "yes" if b.enabled else "no",
        "config" if b.declared_in_config else "api",
    ]


def _tiers_or_action(pb: Any, b: Any) -> str:
    from paymaster._cli_budgets import tiers_text

    return tiers_text(pb, b.tiers) or vocabulary.enum_word(pb.OnExceed, b.on_exceed) or "-"


_BUDGET_HEADERS = (
    "ID",
    "NAME",
    "SCOPE",
    "SCOPE ID",
    "LIMIT USD",
    "PERIOD",
    "ON EXCEED",
    "ALERTS %",
    "ENABLED",
    "SOURCE",
)


def _as_dict(message: Any) -> dict[str, Any]:
    return vocabulary.to_json(message)


# -- budgets ---------------------------------------------------------------------------------------
def _thresholds(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CliError(
            f"--thresholds: expected whole percentages separated by commas, got {text!r}", 2
        ) from None


def cmd_budgets(args: argparse.Namespace, client: _Client) -> None:
    pb = client.pb
    action = args.budgets_command
    if action == "create":
        from paymaster._cli_budgets import parse_tiers

        if not args.on_exceed and not args.tiers:
            raise CliError("give --on-exceed or --tiers", 2)
        budget = pb.Budget(
            id=args.id or "",
            name=args.name or "",
            scope=vocabulary.enum_number(pb.Scope, args.scope),
            limit_usd=args.limit,
            period=args.period,
            time_zone=args.time_zone or "",
            on_exceed=(
                vocabulary.enum_number(pb.OnExceed, args.on_exceed)
                if args.on_exceed
                else pb.ON_EXCEED_UNSPECIFIED
            ),
            alert_thresholds=_thresholds(args.thresholds) if args.thresholds else [],
            tiers=parse_tiers(pb, args.tiers or ""),
            enabled=not args.disabled,
        )
        if args.scope_id:
            budget.scope_id = args.scope_id
        created = client.call("CreateBudget", pb.CreateBudgetRequest(budget=budget))
        emit(args, _as_dict(created), lambda: table(_BUDGET_HEADERS, [_budget_row(created)]))
    elif action == "get":
        found = client.call("GetBudget", pb.GetBudgetRequest(id=args.id))
        emit(args, _as_dict(found), lambda: table(_BUDGET_HEADERS, [_budget_row(found)]))
    elif action == "list":
        budgets = _list_budgets(args, client)
        emit(
            args,
            [_as_dict(b) for b in budgets],
            lambda: table(_BUDGET_HEADERS, [_budget_row(b) for b in budgets]),
        )
    elif action == "update":
        updated = client.call("UpdateBudget", _update_request(args, pb))
        emit(args, _as_dict(updated), lambda: table(_BUDGET_HEADERS, [_budget_row(updated)]))
    elif action == "delete":
        client.call("DeleteBudget", pb.DeleteBudgetRequest(id=args.id))
        emit(args, {"deleted": args.id}, lambda: f"deleted budget {args.id}")
    elif action == "status" and args.request:
        from paymaster._cli_budgets import request_status

        request_status(args, client)
    elif action == "status":
        if not args.id:
            raise CliError("give a budget id, or --request ID for a request budget", 2)
        status = client.call(
            "GetBudgetStatus", pb.GetBudgetStatusRequest(budget_id=args.id, scope_id=args.scope_id or "")
        )
        emit(args, _as_dict(status), lambda: _status_table(status))


def _list_budgets(args: argparse.Namespace, client: _Client) -> list[Any]:
    pb = client.pb
    request = pb.ListBudgetsRequest(page_size=args.page_size)
    if args.scope:
        request.scope = vocabulary.enum_number(pb.Scope, args.scope)
    if args.scope_id:
        request.scope_id = args.scope_id
    budgets: list[Any] = []
    while True:
        page = client.call("ListBudgets", request)
        budgets.extend(page.budgets)
        if not page.next_page_token or not args.all:
            return budgets
        request.page_token = page.next_page_token


def _update_request(args: argparse.Namespace, pb: Any) -> Any:
    request = pb.UpdateBudgetRequest(id=args.id)
    if args.name is not None:
        request.name = args.name
    if args.limit is not None:
        request.limit_usd = args.limit
    if args.on_exceed is not None:
        request.on_exceed = vocabulary.enum_number(pb.OnExceed, args.on_exceed)
    if args.thresholds is not None:
        request.alert_thresholds.CopyFrom(pb.AlertThresholds(percent=_thresholds(args.thresholds)))
    if args.tiers is not None:
        from paymaster._cli_budgets import parse_tiers

        request.tiers.CopyFrom(pb.Tiers(tiers=parse_tiers(pb, args.tiers)))
    if args.enabled is not None:
        request.enabled = args.enabled
    return request


def _status_table(s: Any) -> str:
    rows = [
        ("budget", f"{s.budget.id} ({s.budget.name})"),
        ("entity", s.scope_id),
        ("period", f"{s.budget.period}: {_time(s.period_start)} to {_time(s.period_end)}"),
        ("used USD", s.used_usd),
        ("reserved USD", s.reserved_usd),
        ("remaining USD", s.remaining_usd),
        ("limit USD", s.budget.limit_usd),
        ("used %", s.percentage),
        ("exceeded", "yes" if s.exceeded else "no"),
        ("burn USD/hour", s.burn_rate_usd_per_hour),
        ("projected USD", s.projected_usd),
        ("alerts fired %", ",".join(str(t) for t in s.alerts_fired) or "-"),
    ]
    return table(("FIELD", "VALUE"), rows)


# -- usage -----------------------------------------------------------------------------------------
def _parse_time(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{flag}: expected an ISO date or time such as 2025-03-01 or 2025-03-01T12:00Z, got {text!r}", 2
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_usage(args: argparse.Namespace, client: _Client) -> None:
    pb = client.pb
    dims = [d.strip() for d in args.by.split(",") if d.strip()] if args.by else []
    for d in dims:
        if d not in DIMENSIONS:
            raise CliError(f"--by: unknown dimension {d!r}; expected some of {', '.join(DIMENSIONS)}", 2)
    request = pb.GetUsageRequest(
        scopes=pb.ScopeIds(**{s: getattr(args, s) or "" for s in SCOPES}),
        provider=args.provider or "",
        model=args.model or "",
        group_by=[vocabulary.enum_number(pb.Dimension, d) for d in dims],
        time_zone=args.time_zone or "",
    )
    for flag, field in (("--since", "start"), ("--until", "end")):
        when = _parse_time(getattr(args, flag[2:]), flag)
        if when is not None:
            getattr(request, field).FromDatetime(when)
    report = client.call("GetUsage", request)
    headers = [d.upper() for d in dims] + ["COST USD", "INPUT TOK", "OUTPUT TOK", "TOTAL TOK", "RECORDS"]

    def figures(t: Any) -> list[Any]:
        return [t.cost_usd, t.input_tokens, t.output_tokens, t.total_tokens, t.records]

    rows = [list(row.key) + figures(row.totals) for row in report.rows]
    rows.append(["TOTAL"] + [""] * (len(dims) - 1) + figures(report.total) if dims else figures(report.total))
    emit(args, {"group_by": dims, **_as_dict(report)}, lambda: table(headers, rows))


# -- sidecar and demo ------------------------------------------------------------------------------
def cmd_sidecar(args: argparse.Namespace) -> int:
    try:
        from collector_processor.workers import run_from_args
    except ImportError as exc:
        raise CliError(
            f"the sidecar needs the 'sidecar' extra: pip install 'paymaster[sidecar]' ({exc})", 2
        ) from None
    return run_from_args(args)


def cmd_health(args: argparse.Namespace, client: _Client) -> None:
    """Exit 0 when the sidecar reports SERVING; a Kubernetes exec probe where TLS rules out the
    kubelet's own gRPC probe."""
    status = client.health(args.service)
    emit(args, {"service": args.service, "status": status}, lambda: status)
    if status != "SERVING":
        raise CliError(f"{args.service or 'the server'} is {status}")


def cmd_demo(args: argparse.Namespace) -> int:
    from paymaster import demo

    return demo.main(args.demo_args)


# -- arguments -------------------------------------------------------------------------------------
def _client_flags(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The flags of every command that talks to the sidecar. Before the command they carry the
    defaults; after it (``after_command``) they are only set when given, so either place works."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    parser.add_argument("--target", default=default(os.environ.get("PAYMASTER_SIDECAR", DEFAULT_TARGET)),
                        help=f"sidecar address (env PAYMASTER_SIDECAR, default {DEFAULT_TARGET})")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=default(5.0),
                        help="seconds to wait for the sidecar (default 5)")  # fmt: skip
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON instead of tables")  # fmt: skip
    auth = parser.add_argument_group("credentials (a sidecar with [auth] and TLS)")
    auth.add_argument("--token-file", default=default(None), metavar="FILE",
                      help="file holding the bearer token, read for each call (env PAYMASTER_TOKEN_FILE)")  # fmt: skip
    auth.add_argument("--token", default=default(None),
                      help="bearer token (env PAYMASTER_TOKEN; prefer the env or --token-file: a command "
                           "line is visible to other users of the machine)")  # fmt: skip
    auth.add_argument("--ca", default=default(None), metavar="FILE",
                      help="CA certificate that signed the sidecar's: turns on TLS (env PAYMASTER_SIDECAR_CA)")  # fmt: skip
    auth.add_argument("--cert", default=default(None), metavar="FILE",
                      help="client certificate for mutual TLS (env PAYMASTER_SIDECAR_CERT)")  # fmt: skip
    auth.add_argument("--key", default=default(None), metavar="FILE",
                      help="its private key (env PAYMASTER_SIDECAR_KEY)")  # fmt: skip
    auth.add_argument("--server-name", default=default(None), metavar="NAME",
                      help="the name the sidecar's certificate is for, when --target's host differs "
                           "(e.g. through kubectl port-forward)")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    from paymaster import _cli_tokens, _cli_top

    parser = argparse.ArgumentParser(
        prog="paymaster", description="Paymaster: budget governance for LLM pipelines."
    )
    _client_flags(parser, after_command=False)
    common = argparse.ArgumentParser(add_help=False)
    _client_flags(common, after_command=True)
    sub = parser.add_subparsers(dest="command")
    _choose(parser, sub)

    sidecar = sub.add_parser("sidecar", help="run the budget sidecar")
    sidecar.add_argument("--config", help="sidecar.toml (default: built-in defaults)")
    sidecar.add_argument("--listen", help="override server.listen, e.g. 127.0.0.1:7310")

    _budget_parsers(sub.add_parser("budgets", help="create, read, change and delete budgets"), common)

    usage = sub.add_parser(
        "usage", parents=[common], help="spend and tokens, broken down by scope, model, provider or period"
    )
    usage.add_argument("--by", help=f"comma-separated dimensions: {', '.join(DIMENSIONS)}")
    usage.add_argument("--since", help="start (ISO date or time, UTC unless it names an offset)")
    usage.add_argument("--until", help="end, exclusive (default: now)")
    for scope in SCOPES:
        usage.add_argument(f"--{scope}", help=f"only spend of this {scope}")
    usage.add_argument("--provider")
    usage.add_argument("--model")
    usage.add_argument("--time-zone", help="IANA zone for day/week/month/quarter/year keys")

    _cli_tokens.add_parsers(sub, common)
    _cli_top.add_parser(sub, common)
    health = sub.add_parser(
        "health", parents=[common], help="the sidecar's gRPC health status; exit 0 when SERVING"
    )
    health.add_argument("--service", default="paymaster.v1.BudgetService",
                        help="service name to check (default paymaster.v1.BudgetService; '' for the server)")  # fmt: skip

    # The demo parses its own options (paymaster demo --help lists them).
    sub.add_parser("demo", help="run a governed pipeline and print its costs", add_help=False)
    return parser


def _choose(parser: argparse.ArgumentParser, sub: Any) -> None:
    """What ``parser`` says when its command is left out: the choices, on the usage line and as an
    error (argparse would name its internal ``dest``). ``main`` calls it when the command is None."""

    def missing() -> None:
        parser.error(f"choose a command: {', '.join(sub.choices)}")

    parser.set_defaults(missing_command=missing)


def _budget_parsers(budgets: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = budgets.add_subparsers(dest="budgets_command")
    _choose(budgets, sub)
    create = sub.add_parser("create", parents=[common], help="create a budget")
    create.add_argument("--id", help="budget id (generated when omitted)")
    create.add_argument("--name")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument(
        "--scope-id", help="the entity; omit for a wildcard budget (each entity its own spend)"
    )
    create.add_argument("--limit", required=True, help="limit in USD per period, e.g. 50 or 12.50")
    create.add_argument(
        "--period", required=True, help="daily, weekly, monthly, quarterly, yearly, rolling_24h, ..."
    )
    create.add_argument("--time-zone", help="IANA zone for calendar periods (default: the sidecar's)")
    create.add_argument(
        "--on-exceed", choices=ACTIONS, help="what a request past the limit gets (or --tiers)"
    )
    create.add_argument("--tiers", help=_TIERS_HELP)
    create.add_argument("--thresholds", help="alert percentages, e.g. 50,80,100 (default: the sidecar's)")
    create.add_argument("--disabled", action="store_true", help="create it disabled")

    for name, text in (("get", "show one budget"), ("delete", "delete a budget and its spend")):
        sub.add_parser(name, parents=[common], help=text).add_argument("id")
    status = sub.add_parser(
        "status", parents=[common], help="used, reserved, remaining and projection for the current period"
    )
    status.add_argument("id", nargs="?")
    status.add_argument("--scope-id", help="the entity (required for a wildcard budget)")
    status.add_argument("--request", metavar="ID", help="a live request budget instead: its spend by service")

    listing = sub.add_parser("list", parents=[common], help="list budgets")
    listing.add_argument("--scope", choices=SCOPES)
    listing.add_argument("--scope-id")
    listing.add_argument("--page-size", type=int, default=100)
    listing.add_argument("--all", action="store_true", help="follow every page")

    update = sub.add_parser(
        "update", parents=[common], help="change a budget's name, limit, action, thresholds or enabled flag"
    )
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--limit")
    update.add_argument("--on-exceed", choices=ACTIONS)
    update.add_argument("--tiers", help=_TIERS_HELP + "; an empty string makes the budget single-action")
    update.add_argument(
        "--thresholds", help="new alert percentages, e.g. 50,80; an empty string turns them off"
    )
    toggle = update.add_mutually_exclusive_group()
    toggle.add_argument("--enable", dest="enabled", action="store_true", default=None)
    toggle.add_argument("--disable", dest="enabled", action="store_false")


def main(argv: Sequence[str] | None = None) -> int:
    # The demo's own options (--limit ...) pass through untouched; argparse's REMAINDER would take
    # them for this parser's.
    args, extra = _parser().parse_known_args(argv)
    if args.command is None or getattr(args, f"{args.command}_command", "") is None:
        args.missing_command()  # exits 2 naming the choices
    if extra and args.command != "demo":
        _parser().error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        args.demo_args = extra
    try:
        if args.command == "sidecar":
            return cmd_sidecar(args)
        if args.command == "demo":
            return cmd_demo(args)
        from paymaster import _cli_tokens, _cli_top

        if args.command == "tokens" and args.tokens_command == "new":
            _cli_tokens.cmd_tokens_new(args)
            return 0
        commands = {"budgets": cmd_budgets, "usage": cmd_usage, "tokens": _cli_tokens.cmd_tokens,
                    "audit": _cli_tokens.cmd_audit, "health": cmd_health, "top": _cli_top.cmd_top}  # fmt: skip
        client = _Client(args.target, args.timeout, args)
        try:
            commands[args.command](args, client)
        finally:
            client.close()
        return 0
    except CliError as exc:
        print(f"paymaster {args.command}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    # Through the package, so the command modules share this module's CliError.
    from paymaster.cli import main as _main

    sys.exit(_main())
