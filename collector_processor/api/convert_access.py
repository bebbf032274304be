"""Proto <-> domain for tokens and the audit log (the rest of the API's conversions are in ``convert``)."""

from __future__ import annotations

from collector_processor.api.convert import ts
from collector_processor.domain.access import AuditEvent, TokenRecord
from collector_processor.errors import InvalidRequestError
from paymaster.v1 import budget_pb2 as pb

__all__ = ["audit_to_pb", "expires_in_ms", "token_to_pb"]

_MAX_DURATION_S = 10**11  # far beyond any expiry allowed; keeps the arithmetic below in range


def token_to_pb(t: TokenRecord) -> pb.Token:
    msg = pb.Token(
        id=t.id,
        name=t.name,
        roles=list(t.roles),
        grants=list(t.grants),
        trust_reported_cost=t.trust_reported_cost,
        created_at=ts(t.created_ms),
        created_by=t.created_by,
    )
    if t.expires_ms is not None:
        msg.expires_at.CopyFrom(ts(t.expires_ms))
    if t.revoked_ms is not None:
        msg.revoked_at.CopyFrom(ts(t.revoked_ms))
    return msg


def audit_to_pb(e: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        sequence=e.sequence,
        at=ts(e.at_ms),
        principal=e.principal,
        address=e.address,
        action=e.action,
        target=e.target,
        before_json=e.before,
        after_json=e.after,
    )


def expires_in_ms(request: pb.CreateTokenRequest) -> int:
    """The request's expiry in milliseconds (0: never); negative or malformed durations are refused."""
    if not request.HasField("expires_in"):
        return 0
    d = request.expires_in
    if d.seconds < 0 or d.nanos < 0 or d.seconds > _MAX_DURATION_S or d.nanos >= 1_000_000_000:
        raise InvalidRequestError("expires_in", "must be a positive duration of at most 10 years")
    return int(d.seconds * 1000 + d.nanos // 1_000_000)
