"""The errors the sidecar raises, in one shallow tree, each mapped to one gRPC status by the servicer.

Misconfiguration at start is ``paymaster.exceptions.ConfigError`` (shared with the SDK: the message
names the file and key). Everything here is a refusal of one request, raised by the ledger or the
store and translated by the servicer; none of them ever stops the server.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "BatchAbortedError",
    "FailedPreconditionError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "SidecarError",
    "StoreUnavailableError",
    "UnauthenticatedError",
]


class SidecarError(Exception):
    """Base class of the sidecar's request errors."""


class InvalidRequestError(SidecarError, ValueError):
    """A request field is malformed or out of range (gRPC ``INVALID_ARGUMENT``).

    ``field`` is the path of the offending field as the API spells it (``budget.limit_usd``); the
    message starts with it so that a client sees at once what to fix.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFoundError(SidecarError, LookupError):
    """A budget or reservation id is unknown (gRPC ``NOT_FOUND``)."""


class AlreadyExistsError(SidecarError):
    """A budget with that id exists already (gRPC ``ALREADY_EXISTS``)."""


class FailedPreconditionError(SidecarError):
    """The request is well formed but does not fit the current state (gRPC ``FAILED_PRECONDITION``)."""


class UnauthenticatedError(SidecarError):
    """The caller presented no valid credentials (gRPC ``UNAUTHENTICATED``, HTTP 401)."""


class PermissionDeniedError(SidecarError):
    """The caller may not do this, or not to these scopes (gRPC ``PERMISSION_DENIED``, HTTP 403).

    ``reason`` is a fixed word (``role``, ``scope``, ``owner``) for the denial metrics.
    """

    def __init__(self, message: str, reason: str = "scope") -> None:
        super().__init__(message)
        self.reason = reason


class StoreUnavailableError(SidecarError):
    """The store could not be reached or stayed locked past its timeout (gRPC ``UNAVAILABLE``); retry."""


class BatchAbortedError(SidecarError):
    """A transaction shared by several operations was rolled back because one of them failed part-way.

    None of them took effect; the caller runs each again on its own. Never reaches a client.
    """
