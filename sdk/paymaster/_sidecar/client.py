"""The transport to the sidecar: one gRPC channel, a deadline per operation, retries with jittered
exponential backoff, and the circuit breaker.

Every budget RPC the SDK makes is safe to repeat (Reserve carries an idempotency key, Commit and
Release are idempotent, RecordUsage is idempotent by its usage id), so every one is retried on
transport failures until its deadline.

Channels. One synchronous ``grpc.Channel`` is thread-safe and bound to no event loop, so one connection
serves every run of every runner in the process; async callers await its futures through the running
loop. That costs a thread handoff per call, and more: gRPC completes such a call on a thread it starts
whenever no other call is in flight on the channel, so a run that makes one call at a time pays for a
new thread per call. An event loop that keeps calling (a service's loop, ``run_async`` runs, the
shared leases' own loop) therefore gets a ``grpc.aio`` channel of its own after its first
``_OWN_CHANNEL_AFTER`` calls, which completes its calls inside the loop. The loop of ``Runner.run`` is
new for each run and usually ends before then, so short runs do not open a connection each. A loop's
channel is closed when the client is, and dropped once the loop has closed.

Outcomes: a response; ``Unreachable`` (no answer within the deadline, or the breaker is open — the
fail policy decides what happens next); ``Unauthenticated``, a kind of ``Unreachable`` (the sidecar
refused this client's credentials: not retried, and the fail policy decides as for an outage, so
spend kept for replay waits for valid credentials instead of being dropped); or ``Refused`` (the
sidecar answered that the request is wrong — a bug or a misconfiguration, reported as is). The
channel and the token sent with every call come from ``credentials.Credentials``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc

from paymaster._sidecar.breaker import CircuitBreaker
from paymaster._sidecar.credentials import Connection, Credentials

__all__ = ["Refused", "SidecarClient", "Unauthenticated", "Unreachable"]

# Transport-level failures: the request may not have been decided. All are retried.
_UNREACHABLE: Final = {
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
    grpc.StatusCode.UNKNOWN: "unknown",
    grpc.StatusCode.CANCELLED: "cancelled",
    grpc.StatusCode.ABORTED: "aborted",
    grpc.StatusCode.INTERNAL: "internal",
}
_CHANNEL_OPTIONS: Final = (
    # Notice a sidecar that is back within a fraction of a second instead of gRPC's default of up to
    # two minutes of reconnect backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)

_OWN_CHANNEL_AFTER: Final = 8
"""Calls an event loop makes through the shared synchronous channel before it gets a channel of its own."""

Count = Callable[[str, str], None]


class Unreachable(Exception):
    """No answer from the sidecar: ``kind`` is ``breaker_open``, ``unavailable``, ``deadline_exceeded`` ..."""

    remedy = "Start (or reach) the sidecar"
    """What to do about it, as the start of a sentence."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail

    @property
    def situation(self) -> str:
        """What happened, to follow "the budget sidecar at <target>"."""
        return f"did not answer ({self})"


class Unauthenticated(Unreachable):
    """The sidecar answered ``UNAUTHENTICATED``: no credentials, or a token it does not accept
    (unknown, revoked, expired) or a client certificate it does not map."""

    remedy = (
        "Give the SidecarBudget a valid token (token=, token_file=, $PAYMASTER_TOKEN or "
        "$PAYMASTER_TOKEN_FILE) or client certificate"
    )

    def __init__(self, detail: str) -> None:
        super().__init__("unauthenticated", detail)

    @property
    def situation(self) -> str:
        return f"refused this client's credentials ({self.detail})"


class Refused(Exception):
    """The sidecar answered with an error status that retrying cannot fix (``INVALID_ARGUMENT`` ...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class SidecarClient:
    """See the module docstring. ``count(rpc, outcome)`` receives every call's outcome."""

    def __init__(
        self,
        target: str,
        *,
        deadline_s: float,
        retries: int,
        backoff_s: float,
        breaker: CircuitBreaker,
        channel_options: Sequence[tuple[str, Any]] = (),
        credentials: Credentials | None = None,
    ) -> None:
        self.target = target
        self.deadline_s = deadline_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.breaker = breaker
        self.credentials = credentials or Credentials.none()
        self._options = [*_CHANNEL_OPTIONS, *channel_options]
        self._connection = self.credentials.connect(target, self._options)
        self._closed = False
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, int | Connection] = {}
        """Per event loop: the calls it made through the shared channel, or its own connection."""

    @property
    def stub(self) -> Any:
        """The stub of the current channel (a new one after the TLS files change)."""
        return self._connection.stub()

    # ------------------------------------------------------------------ async
    async def call(
        self, method: str, request: Any, *, count: Count | None = None, deadline_s: float | None = None
    ) -> Any:
        """``method`` on the stub, with retries until the deadline; see the module docstring."""
        if not self.breaker.allow():
            _count(count, method, "breaker_open")
            raise Unreachable(
                "breaker_open", f"the circuit breaker is open after repeated failures to reach {self.target}"
            )
        metadata = self.credentials.metadata()
        loop = asyncio.get_running_loop()
        stub, own = self._stub_for(loop)
        rpc = getattr(stub, method)
        deadline = time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                if own:
                    response = await rpc(request, timeout=max(remaining, 0.001), metadata=metadata)
                else:
                    response = await _bridge(
                        loop, rpc.future(request, timeout=max(remaining, 0.001), metadata=metadata)
                    )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise self._unauthenticated(method, exc, count) from None
                kind = _UNREACHABLE.get(exc.code())
                if kind is None:
                    self.breaker.success()  # it answered: the transport is fine
                    _count(count, method, "refused")
                    raise Refused(exc.code().name, exc.details() or "") from None
                pause = self._pause(attempt, deadline)
                if pause is None:
                    self.breaker.failure()
                    _count(count, method, kind)
                    raise Unreachable(kind, exc.details() or "") from None
                _count(count, method, "retried")
                attempt += 1
                await asyncio.sleep(pause)
                continue
            self.breaker.success()
            _count(count, method, "ok")
            return response

    def _stub_for(self, loop: asyncio.AbstractEventLoop) -> tuple[Any, bool]:
        """The stub for a call from ``loop``, and whether it is a ``grpc.aio`` stub of the loop's own
        channel (see the module docstring)."""
        entry = self._loops.get(loop)
        if isinstance(entry, Connection):
            return entry.stub(), True
        with self._lock:
            entry = self._loops.get(loop)
            if isinstance(entry, Connection):
                return entry.stub(), True
            if entry is None:
                self._forget_closed_loops()
            if self._closed or (entry or 0) < _OWN_CHANNEL_AFTER:
                self._loops[loop] = (entry or 0) + 1
                return self.stub, False
            connection = self._loops[loop] = self.credentials.connect(self.target, self._options, aio=True)
        return connection.stub(), True

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._loops if loop.is_closed()]:
            entry = self._loops.pop(loop)
            if isinstance(entry, Connection):
                entry.close()

    def _pause(self, attempt: int, deadline: float) -> float | None:
        """The backoff before the next attempt, or ``None`` when no attempt is left in the deadline."""
        if attempt >= self.retries:
            return None
        pause: float = self.backoff_s * (2**attempt) * random.uniform(0.5, 1.0)
        if time.monotonic() + pause >= deadline:
            return None
        return pause

    # ------------------------------------------------------------------ sync
    def call_sync(self, method: str, request: Any, *, timeout_s: float, count: Count | None = None) -> Any:
        """One attempt from a plain thread (the replayer retries on its own schedule)."""
        if not self.breaker.allow():
            _count(count, method, "breaker_open")
            raise Unreachable("breaker_open", "the circuit breaker is open")
        try:
            response = getattr(self.stub, method)(
                request, timeout=timeout_s, metadata=self.credentials.metadata()
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise self._unauthenticated(method, exc, count) from None
            kind = _UNREACHABLE.get(exc.code())
            if kind is None:
                self.breaker.success()
                _count(count, method, "refused")
                raise Refused(exc.code().name, exc.details() or "") from None
            self.breaker.failure()
            _count(count, method, kind)
            raise Unreachable(kind, exc.details() or "") from None
        self.breaker.success()
        _count(count, method, "ok")
        return response

    def _unauthenticated(self, method: str, exc: grpc.RpcError, count: Count | None) -> Unauthenticated:
        # It answered, so the transport is fine; retrying the same credentials cannot help.
        self.breaker.success()
        _count(count, method, "unauthenticated")
        return Unauthenticated(f"{self.credentials.describe_token()}: {exc.details() or 'UNAUTHENTICATED'}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            own = [entry for entry in self._loops.values() if isinstance(entry, Connection)]
            self._loops.clear()
        self._connection.close()
        for connection in own:
            connection.close()


def _count(count: Count | None, method: str, outcome: str) -> None:
    if count is not None:
        count(method, outcome)


def _bridge(loop: asyncio.AbstractEventLoop, call: Any) -> asyncio.Future[Any]:
    """An asyncio future of the running loop that completes with the gRPC future ``call``."""
    future: asyncio.Future[Any] = loop.create_future()

    def transfer(done: Any) -> None:
        if future.done():
            return
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())

    def on_done(done: Any) -> None:
        # RuntimeError: the loop closed meanwhile (the session's close() waits, so it does not).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(transfer, done)

    call.add_done_callback(on_done)
    return future
