"""``paymaster tokens`` and ``paymaster audit``: bearer tokens and the audit log, from a shell.

``tokens create`` asks the sidecar for a token and prints its secret this once (the sidecar keeps
only its hash); ``tokens list`` and ``tokens revoke`` never see a secret; ``tokens new`` makes a
token locally, without a sidecar, for a bootstrap tokens file or Secret, with the SHA-256 the tokens
file may hold instead of the token. ``audit`` prints the changes to budgets and tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from paymaster.cli import CliError, _choose, emit, table
from paymaster.vocabulary import ROLES, to_json

__all__ = ["add_parsers", "cmd_audit", "cmd_tokens", "new_token", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_TOKEN_HEADERS = ("ID", "NAME", "ROLES", "GRANTS", "CREATED", "EXPIRES", "REVOKED")
_AUDIT_HEADERS = ("SEQ", "TIME", "PRINCIPAL", "ADDRESS", "ACTION", "TARGET")
_MAX_AUDIT_PAGE = 1000


def parse_duration(text: str, flag: str) -> int:
    """Seconds in ``30m``, ``12h``, ``90d``, ``2w`` (``never`` or ``0``: 0)."""
    if text.strip().lower() in ("never", "0"):
        return 0
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise CliError(f"{flag}: expected a duration such as 30m, 12h, 90d or 2w (or never), got {text!r}", 2)
    return int(match.group(1)) * _UNITS[match.group(2)]


def new_token() -> str:
    """A fresh token in the form the sidecar issues (``pmt_<12 hex id>_<43 characters of secret>``)."""
    return f"pmt_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


# -- rendering -------------------------------------------------------------------------------------
def _when(ts: Any, empty: str) -> str:
    if not ts.seconds and not ts.nanos:
        return empty
    return datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def token_json(t: Any) -> dict[str, Any]:
    """A token as ``--json`` prints it: every field of ``Token`` (``null`` when unset), never a secret."""
    return to_json(t)


def _token_row(t: Any) -> list[Any]:
    roles = ",".join(t.roles)
    grants = ",".join(t.grants)
    if t.trust_reported_cost:
        roles += " (trusts reported cost)"
    return [
        t.id,
        t.name,
        roles,
        grants,
        _when(t.created_at, "-"),
        _when(t.expires_at, "never") if t.HasField("expires_at") else "never",
        _when(t.revoked_at, "-") if t.HasField("revoked_at") else "-",
    ]


def _state(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _event_json(e: Any) -> dict[str, Any]:
    """An audit event: the fields of ``AuditEvent``, with the states before and after as JSON values
    (``null`` for a creation's before and a deletion's after) rather than strings."""
    shown = to_json(e)
    del shown["before_json"], shown["after_json"]
    return {**shown, "before": _state(e.before_json), "after": _state(e.after_json)}


# -- commands --------------------------------------------------------------------------------------
def cmd_tokens(args: argparse.Namespace, client: Any) -> None:
    pb = client.pb
    action = args.tokens_command
    if action == "create":
        request = pb.CreateTokenRequest(
            name=args.name, roles=args.role, grants=args.grant, trust_reported_cost=args.trust_reported_cost
        )
        seconds = parse_duration(args.expires, "--expires") if args.expires else 0
        if seconds:
            request.expires_in.seconds = seconds
        created = client.call("CreateToken", request)
        emit(args, {**token_json(created.token), "token": created.secret}, lambda: _created(created))
    elif action == "list":
        tokens = client.call("ListTokens", pb.ListTokensRequest(include_inactive=args.all)).tokens
        emit(
            args,
            [token_json(t) for t in tokens],
            lambda: table(_TOKEN_HEADERS, [_token_row(t) for t in tokens]),
        )
    elif action == "revoke":
        revoked = client.call("RevokeToken", pb.RevokeTokenRequest(id=args.id))
        emit(
            args,
            token_json(revoked),
            lambda: (
                f"revoked token {revoked.id} ({revoked.name}); every sidecar sharing the store refuses "
                "it within its auth.refresh_seconds"
            ),
        )


def _created(created: Any) -> str:
    return "\n".join(
        [
            table(_TOKEN_HEADERS, [_token_row(created.token)]),
            "",
            f"token: {created.secret}",
            "",
            "This is the only time the token is shown: the sidecar keeps only its hash. Store it now",
            "(a secret manager, or a Kubernetes Secret mounted as a file for PAYMASTER_TOKEN_FILE).",
        ]
    )


def cmd_tokens_new(args: argparse.Namespace) -> None:
    """A token made here, for a bootstrap tokens file or Secret; no sidecar is asked."""
    token = new_token()
    digest = hashlib.sha256(token.encode()).hexdigest()
    roles = args.role or ["admin"]
    grants = args.grant or ["*"]
    entry = "\n".join(
        [
            "[[tokens]]",
            f"name = {json.dumps(args.name)}",
            f'sha256 = "{digest}"',
            f"roles = {json.dumps(roles)}",
            f"grants = {json.dumps(grants)}",
        ]
    )
    emit(
        args,
        {"token": token, "sha256": digest, "tokens_file_entry": entry},
        lambda: "\n".join(
            [
                f"token:  {token}",
                f"sha256: {digest}",
                "",
                "This token is shown only here. Give it to its holder (PAYMASTER_TOKEN, or a file for",
                "PAYMASTER_TOKEN_FILE), and give the sidecar only its hash, in the tokens file that",
                "auth.tokens_file names:",
                "",
                entry,
            ]
        ),
    )


def cmd_audit(args: argparse.Namespace, client: Any) -> None:
    pb = client.pb
    if args.limit < 1:
        raise CliError(f"--limit: expected a positive number of events, got {args.limit}", 2)
    events: list[Any] = []
    cursor = args.after
    # A page holds at most page_size events, fewer when some lie outside the caller's grants: follow
    # pages until there are enough or the log has no more.
    while len(events) < args.limit:
        page = client.call(
            "ListAuditEvents",
            pb.ListAuditEventsRequest(
                after_sequence=cursor, page_size=min(args.limit - len(events), _MAX_AUDIT_PAGE)
            ),
        )
        events.extend(page.events)
        if page.next_after_sequence <= cursor:
            break
        cursor = page.next_after_sequence
    rows = [[e.sequence, _when(e.at, "-"), e.principal, e.address, e.action, e.target] for e in events]
    emit(
        args,
        {"events": [_event_json(e) for e in events], "next_after_sequence": cursor},
        lambda: table(_AUDIT_HEADERS, rows),
    )


# -- arguments -------------------------------------------------------------------------------------
def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``tokens`` and ``audit`` under the top-level subparsers ``sub``; ``common`` holds the flags
    every command that talks to the sidecar also takes after its name."""
    tokens = sub.add_parser("tokens", help="issue, list and revoke bearer tokens (admin)")
    verbs = tokens.add_subparsers(dest="tokens_command")
    _choose(tokens, verbs)
    create = verbs.add_parser(
        "create", parents=[common], help="issue a token; its secret is printed this once"
    )
    create.add_argument(
        "--name", required=True, help="who holds it: the principal in the audit log and metrics"
    )
    create.add_argument("--role", action="append", required=True, choices=ROLES,
                        help="repeat for several roles")  # fmt: skip
    create.add_argument("--grant", action="append", required=True,
                        help="scope grant, e.g. team=search, agent=support-*, user=* or *; repeatable")  # fmt: skip
    create.add_argument("--trust-reported-cost", action="store_true",
                        help="believe costs its OTLP spans report (else they are priced from tokens)")  # fmt: skip
    create.add_argument("--expires", help="lifetime such as 30m, 12h, 90d or 2w (default: never)")
    listing = verbs.add_parser("list", parents=[common], help="tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="also revoked and expired tokens")
    verbs.add_parser("revoke", parents=[common], help="revoke a token by its id").add_argument("id")
    new = verbs.add_parser(
        "new",
        help="make a token locally (no sidecar) for a bootstrap tokens file or Secret, with its sha256",
    )
    new.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    new.add_argument("--name", default="bootstrap-admin", help="name in the tokens file entry")
    new.add_argument("--role", action="append", choices=ROLES, help="roles of the entry (default admin)")
    new.add_argument("--grant", action="append", help="grants of the entry (default *)")

    audit = sub.add_parser(
        "audit", parents=[common], help="the audit log: who changed which budget or token, when, from where"
    )
    audit.add_argument("--after", type=int, default=0, help="only events after this sequence number")
    audit.add_argument("--limit", type=int, default=100, help="at most this many events (default 100)")
