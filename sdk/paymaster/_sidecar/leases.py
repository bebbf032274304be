"""Lease bookkeeping: a slice of budget held in the sidecar by one reservation, spent locally.

Pure accounting, no I/O: ``LeaseDesk`` does the calls. A lease admits a step's estimate with the
sidecar's own rule (``spent + reserved + estimate`` may reach the slice, and a zero estimate needs
room left), records each step's actual spend by model (so that the sidecar's reports by model stay
exact when the lease is committed), and knows when it is done: retired (exhausted, stale, or the run
ended) and no step drawing from it still running.
"""

from __future__ import annotations

from decimal import Decimal
from time import monotonic
from typing import Any, Final

from paymaster._metering import MeasuredUsage
from paymaster._sidecar import wire
from paymaster.budget import BudgetOutcome
from paymaster.scopes import Scopes

__all__ = ["Lease", "ModelSpend", "Pool"]

_ZERO: Final = Decimal(0)


class ModelSpend:
    """What a lease spent on one provider and model."""

    __slots__ = (
        "cache_read_tokens",
        "cache_write_tokens",
        "cost",
        "input_tokens",
        "model",
        "output_tokens",
        "provider",
        "reasoning_tokens",
        "total_tokens",
    )

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.cost = _ZERO
        self.total_tokens = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0

    def add(self, cost: Decimal, usage: MeasuredUsage) -> None:
        self.cost += cost
        self.total_tokens += usage.total_tokens
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read_tokens += usage.cached_input_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        self.reasoning_tokens += usage.reasoning_tokens

    def facts(self) -> dict[str, Any]:
        """The ``UsageFacts`` fields of this spend."""
        return {
            "provider": self.provider,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


class Lease:
    """One slice: ``held`` in the sidecar under ``reservation_id``; see the module docstring."""

    __slots__ = (
        "attributes",
        "free",
        "held",
        "inflight",
        "last_bucket",
        "low_water",
        "outcome",
        "overruns",
        "reservation_id",
        "retired",
        "scopes",
        "settled",
        "spend",
        "spent",
        "stale_at",
    )

    def __init__(
        self,
        reservation_id: str,
        held: Decimal,
        scopes: Scopes,
        budget_info: Any,
        *,
        refill_at: Decimal,
        age_limit_s: float,
    ) -> None:
        self.reservation_id = reservation_id
        self.held = held
        self.scopes = scopes
        self.free = held
        """Neither spent nor drawn by a step in flight: ``held - spent - drawn``."""
        self.spent = _ZERO
        self.inflight = 0
        self.low_water = held * refill_at
        """Top up (take the next slice in the background) once less than this is free."""
        self.stale_at = monotonic() + age_limit_s
        self.retired = False
        self.settled = False
        self.spend: dict[tuple[str, str], ModelSpend] = {}
        self.last_bucket: ModelSpend | None = None
        self.overruns: list[Any] = []
        """Overruns being charged on their own; the lease is committed only after they landed."""
        # Every step drawn from the lease has the same outcome: built once, shared.
        self.outcome = BudgetOutcome(
            decision="allow",
            mode="lease",
            scopes=scopes,
            reservation_id=reservation_id,
            budget_ids=tuple(i.budget_id for i in budget_info),
            budget_info=wire.budget_infos(budget_info),
        )
        self.attributes = self.outcome.attributes()

    def fits(self, estimate: Decimal) -> bool:
        """May a step with this estimate draw from the lease? The sidecar's rule, applied locally:
        ``spent + drawn + estimate`` may reach the slice, and a zero estimate needs room left."""
        free = self.free
        return estimate < free or (estimate == free and estimate > 0)

    @property
    def stale(self) -> bool:
        """Old enough to be committed and replaced (see ``LeasePolicy.max_age_s``)."""
        return monotonic() >= self.stale_at

    @property
    def low(self) -> bool:
        """Less than the low-water mark is free."""
        return self.free < self.low_water

    def draw(self, estimate: Decimal) -> None:
        self.free -= estimate
        self.inflight += 1

    def give_back(self, estimate: Decimal) -> None:
        """A draw whose step did not run to the end."""
        self.free += estimate
        self.inflight -= 1

    def spend_on(self, estimate: Decimal, cost: Decimal, usage: MeasuredUsage) -> Decimal:
        """Replace a draw with its actual cost; returns the overrun past the slice (usually zero)."""
        self.free += estimate - cost
        self.inflight -= 1
        before = self.spent
        self.spent = spent = before + cost
        bucket = self.last_bucket
        if bucket is None or bucket.provider != (usage.provider or "") or bucket.model != (usage.model or ""):
            key = (usage.provider or "", usage.model or "")
            bucket = self.spend.get(key)
            if bucket is None:
                bucket = self.spend[key] = ModelSpend(*key)
            self.last_bucket = bucket
        bucket.add(cost, usage)
        held = self.held
        if spent <= held:
            return _ZERO
        return spent - (before if before > held else held)

    def take_overrun(self, amount: Decimal, usage: MeasuredUsage) -> None:
        """``amount`` of the last step's cost is charged to the sidecar on its own, not with the lease."""
        self.spent -= amount
        self.free += amount
        self.spend[(usage.provider or "", usage.model or "")].cost -= amount

    @property
    def done(self) -> bool:
        """Retired and no step is drawing from it: time to commit."""
        return self.retired and self.inflight == 0 and not self.settled

    def pieces(self) -> list[ModelSpend]:
        """The spend by model, dearest first (the first is committed with the reservation)."""
        return sorted(
            (s for s in self.spend.values() if s.cost or s.total_tokens),
            key=lambda s: (-s.cost, s.provider, s.model),
        )


class Pool:
    """The leases of one set of scopes within a run (or, shared, of a budget)."""

    __slots__ = ("current", "headroom", "lock", "next", "prefetch", "refilling", "scopes")

    def __init__(self, scopes: Scopes) -> None:
        self.scopes = scopes
        self.current: Lease | None = None
        """The lease steps draw from."""
        self.next: Lease | None = None
        """A slice taken ahead, while ``current`` ran low."""
        self.prefetch: Any = None
        """The task taking ``next``, while it runs."""
        self.headroom: Decimal | None = None
        """Room the matching budgets had left after the last response (``None``: unknown or unlimited)."""
        self.lock: Any = None
        self.refilling: Any = None
        """A budget's shared pool: the future of the call making a fresh slice current, while it runs."""

    def roomy(self, size: Decimal, slices: int) -> bool:
        """Do the budgets have room for ``slices`` more slices of ``size``, as far as we know?"""
        return self.headroom is None or self.headroom >= size * slices
