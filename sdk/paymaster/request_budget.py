"""``RequestBudget``: one limit for one request, across every service it touches.

```python
budget = SidecarBudget(scopes=Scopes(team="planner"))
with budget.request_budget(limit_usd="0.50", name="question 42") as request:
    answer = runner.run(question)          # and every service this run calls over HTTP or gRPC
print(request.id)
```

Entering the block opens a request budget in the sidecar (``OpenRequestBudget``) and puts its id in the
OpenTelemetry baggage entry ``paymaster.request_budget`` for as long as the block runs. Every governed
step inside it — in this process, and in any service an instrumented HTTP or gRPC client calls from
inside it, since baggage crosses process boundaries in the W3C ``baggage`` header through the standard
propagators — reserves against the request budget *in addition to* its own scopes. A denial anywhere
raises ``BudgetExceededError`` there, naming the request budget (``deciding_budget_id``). A request
budget opened inside another is its child: at most ``limit_usd`` or ``fraction`` of what the parent has
left, and both are charged.

The request budget lives in the sidecar, not here: leaving the block only takes its id out of the
context (downstream work still in flight keeps charging it); the sidecar forgets it once nothing has
happened to it for its idle TTL. The SDK's spans carry the id as ``paymaster.request_budget``, so a
trace view shows where the request's money went. Steps under a request budget take per-step
reservations, not leases: a lease's slice would hold most of a small request budget at once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import baggage
from opentelemetry import context as otel_context

from paymaster.exceptions import ConfigError, SidecarUnavailableError
from paymaster.money import to_decimal

if TYPE_CHECKING:
    from paymaster.budget import SidecarBudget

__all__ = ["REQUEST_BUDGET_KEY", "RequestBudget", "current_request_budget"]

REQUEST_BUDGET_KEY: Final = "paymaster.request_budget"
"""The baggage entry (and span attribute) that carries a request budget's id between services."""
_ACTIONS: Final = ("warn", "downgrade", "block")


def current_request_budget(ctx: Any = None) -> str | None:
    """The id of the request budget in the OpenTelemetry baggage of ``ctx`` (or the current context)."""
    value = baggage.get_baggage(REQUEST_BUDGET_KEY, ctx)
    return str(value) if value else None


class RequestBudget:
    """A request budget opened in the sidecar for the duration of a ``with`` (or ``async with``) block;
    build it with ``SidecarBudget.request_budget``. See the module docstring."""

    def __init__(
        self,
        budget: SidecarBudget,
        limit_usd: Any = None,
        *,
        fraction: Any = None,
        name: str = "",
        request_id: str | None = None,
        idle_ttl_s: float | None = None,
        tiers: Sequence[tuple[int, str]] = (),
        nested: bool = True,
    ) -> None:
        where = "request_budget"
        self._budget = budget
        self.limit_usd: Decimal | None = _amount(limit_usd, "limit_usd")
        self.fraction: Decimal | None = _amount(fraction, "fraction")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"{where}: fraction must be above 0 and at most 1, got {self.fraction}")
        if idle_ttl_s is not None and not 0 < idle_ttl_s <= 604_800:
            raise ConfigError(f"{where}: idle_ttl_s must be in (0, 604800] seconds, got {idle_ttl_s!r}")
        for at, action in tiers:
            if isinstance(at, bool) or not isinstance(at, int) or not 1 <= at <= 1000:
                raise ConfigError(f"{where}: a tier's percentage must be a whole number 1-1000, got {at!r}")
            if action not in _ACTIONS:
                raise ConfigError(f"{where}: a tier's action must be one of {list(_ACTIONS)}, got {action!r}")
        self.name = name
        self.id: str | None = request_id or f"rq_{secrets.token_hex(16)}"
        """The request budget's id while the block runs (``None`` if it could not be opened under a fail
        policy that runs on without one)."""
        self.parent_id: str | None = None
        """The enclosing request budget it was opened inside, if any."""
        self.granted_usd: Decimal | None = None
        """Its limit as the sidecar opened it (a child's may be cut to what its parent had left)."""
        self.expires_at: datetime | None = None
        """When the sidecar forgets it unless something is reserved, committed or charged against it."""
        self._idle_ttl_s = idle_ttl_s
        self._tiers = tuple(tiers)
        self._nested = nested
        self._token: object | None = None

    def __repr__(self) -> str:
        return f"RequestBudget(id={self.id!r}, limit_usd={self.granted_usd or self.limit_usd})"

    # ------------------------------------------------------------------ the block
    def __enter__(self) -> RequestBudget:
        request = self._request()
        client = self._budget.client
        response: Any = None
        try:
            response = _sync_call(client, request, self._budget.deadline_s, self._budget.count_call)
        except Exception as exc:
            self._unopened(exc)
        return self._entered(response)

    async def __aenter__(self) -> RequestBudget:
        request = self._request()
        response: Any = None
        try:
            response = await self._budget.client.call(
                "OpenRequestBudget", request, count=self._budget.count_call
            )
        except Exception as exc:
            self._unopened(exc)
        return self._entered(response)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    # ------------------------------------------------------------------ helpers
    def _request(self) -> Any:
        from paymaster._sidecar.wire import request_budget_request

        parent = current_request_budget() if self._nested else None
        if parent is None and self.limit_usd is None:
            raise ConfigError(
                "request_budget: give limit_usd (a request budget opened outside another needs its own limit)"
            )
        self.parent_id = parent
        return request_budget_request(
            request_id=self.id or "",
            name=self.name,
            parent_id=parent or "",
            limit_usd=self.limit_usd,
            fraction=self.fraction,
            tiers=self._tiers,
            idle_ttl_s=self._idle_ttl_s,
        )

    def _unopened(self, exc: Exception) -> None:
        """The sidecar could not open it: the fail policy decides, as for a step it could not decide."""
        from paymaster._sidecar.client import Refused, Unreachable

        if isinstance(exc, Refused):
            raise ConfigError(
                f"the sidecar at {self._budget.target} refused to open a request budget: {exc}"
            ) from None
        if not isinstance(exc, Unreachable):
            raise exc
        if self._budget.fail_policy == "fail_closed":
            raise SidecarUnavailableError(
                f"The budget sidecar at {self._budget.target} {exc.situation}; fail_policy='fail_closed' does not "
                f"run a request without its request budget. {exc.remedy}."
            ) from None
        import logging

        logging.getLogger("paymaster").warning(
            "paymaster: could not open a request budget at %s (%s); fail_policy=%r runs the request without one",
            self._budget.target,
            exc,
            self._budget.fail_policy,
        )
        self.id = None

    def _entered(self, response: Any) -> RequestBudget:
        if response is not None:
            from paymaster._sidecar.wire import usd

            self.id = response.id
            self.granted_usd = usd(response.limit_usd)
            if response.expires_at.seconds:
                self.expires_at = datetime.fromtimestamp(response.expires_at.seconds, tz=UTC)
        if self.id is not None:
            self._token = otel_context.attach(baggage.set_baggage(REQUEST_BUDGET_KEY, self.id))
        return self


def _amount(value: Any, what: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return to_decimal(value, what=what)
    except ValueError as exc:
        raise ConfigError(f"request_budget: {exc}") from None


def _sync_call(client: Any, request: Any, deadline_s: float, count: Any) -> Any:
    """Open it from synchronous code: attempts until the deadline (the id makes a retry a replay)."""
    from paymaster._sidecar.client import Unreachable

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.call_sync(
                "OpenRequestBudget", request, timeout_s=max(deadline - time.monotonic(), 0.001), count=count
            )
        except Unreachable as exc:
            if exc.kind in ("breaker_open", "unauthenticated") or time.monotonic() + 0.05 >= deadline:
                raise
            time.sleep(0.05)
