"""``Quota``: reserve before a step runs, reconcile after, split deterministically for parallel branches.

A quota holds a cost and a token limit and tracks what is *spent* and what is *reserved*. A
reservation is granted only when ``spent + reserved + estimate`` fits under the limit of this quota
**and of every ancestor** (a step's own ``usage_limits`` are a child quota of the run's quota), and
it is taken from all of them at once, under one lock, so concurrent branches never spend the same
money twice. Reconciling replaces the reservation with the actual usage; an actual that overruns
is still recorded (the spend really happened) and reported as a breach so the run halts.

``split(n)`` is the deterministic alternative for parallel branches: the remaining budget is cut into
``n`` detached parts that sum exactly to it (weighted by the branches' estimates when given), the
parent is zeroed while they run, and ``merge`` returns what they did not spend.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Final

from paymaster._estimate import UsageEstimate
from paymaster.limits import UsageLimits
from paymaster.money import MICRO, ZERO, format_usd

__all__ = ["LimitBreach", "Quota", "QuotaDecision", "UsageEstimate"]

COST_LIMIT: Final = "cost_limit"
TOKEN_LIMIT: Final = "token_limit"


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitBreach:
    """The limit a reservation would pass (or an actual did), with the figures at that moment.

    Amounts are USD for ``cost_limit`` and tokens for ``token_limit``."""

    reason_code: str
    """``cost_limit`` or ``token_limit``."""
    limit_name: str
    """Which limit, in words: ``the run's cost limit of $0.10``, ``the token limit of 2,000 on step
    'refine'``, ``the cost share of $0.03 of parallel branch 'web' of 'research'``."""
    limit: Decimal | int
    """The limit."""
    spent: Decimal | int
    """What had been spent against it before this amount."""
    reserved: Decimal | int
    """What other steps in flight held against it."""
    amount: Decimal | int
    """The estimate that was refused, or the actual that passed the limit."""

    def denied(self, step: str) -> str:
        """Why ``step`` was not run: ``step 'draft' was not run: its estimate $0.04 would take spend
        from $0.09 to $0.13, over the run's cost limit of $0.10``."""
        what = "its estimate " + self._show(self.amount)
        return f"step {step!r} was not run: {what} would take {self._from_to()}, over {self.limit_name}"

    def exceeded(self, subject: str, *, estimate: Decimal | int | None = None) -> str:
        """Why the run halted after ``subject`` (``step 'draft'``) ran: ``step 'draft' spent $0.05
        (estimated $0.00), taking spend from $0.06 to $0.11, over the run's cost limit of $0.10``."""
        verb = "spent" if self.reason_code == COST_LIMIT else "used"
        told = f" (estimated {self._show(estimate)})" if estimate is not None else ""
        return (
            f"{subject} {verb} {self._show(self.amount)}{told}, taking {self._from_to()}, "
            f"over {self.limit_name}"
        )

    def _from_to(self) -> str:
        noun = "spend" if self.reason_code == COST_LIMIT else "usage"
        held = f" (+ {self._show(self.reserved)} held by steps in flight)" if self.reserved else ""
        total = self.spent + self.reserved + self.amount  # type: ignore[operator]
        return f"{noun} from {self._show(self.spent)}{held} to {self._show(total)}"

    def _show(self, value: Decimal | int | None) -> str:
        if self.reason_code == COST_LIMIT:
            return format_usd(Decimal(value or 0), places=None)
        return f"{int(value or 0):,} tokens"


class QuotaDecision:
    """The answer to ``reserve`` or ``reconcile``: truthy when granted / within limits."""

    __slots__ = ("breach", "granted")

    def __init__(self, granted: bool, breach: LimitBreach | None = None) -> None:
        self.granted = granted
        """True when the reservation was taken (or the reconciled actual fits)."""
        self.breach = breach
        """The limit and the figures, when refused (or passed)."""

    @property
    def reason_code(self) -> str | None:
        """``cost_limit`` or ``token_limit`` when refused."""
        return None if self.breach is None else self.breach.reason_code

    @property
    def message(self) -> str | None:
        """``over the run's cost limit of $0.25``: the limit, without the step."""
        return None if self.breach is None else f"over {self.breach.limit_name}"

    def __bool__(self) -> bool:
        return self.granted

    def __repr__(self) -> str:
        return f"QuotaDecision(granted={self.granted}, reason_code={self.reason_code!r})"


GRANTED: Final = QuotaDecision(True)


class Quota:
    """A cost and token budget with reservations; see the module docstring."""

    __slots__ = (
        "_allocated",
        "_lock",
        "cost_limit",
        "label",
        "limits",
        "parent",
        "reserved_cost",
        "reserved_tokens",
        "share_of",
        "spent_cost",
        "spent_tokens",
        "token_limit",
    )

    def __init__(
        self,
        limits: UsageLimits | None = None,
        *,
        parent: Quota | None = None,
        label: str = "run",
        _lock: threading.Lock | None = None,
    ) -> None:
        self.limits = limits or UsageLimits()
        self.cost_limit: Decimal | None = self.limits.total_cost_usd_limit
        self.token_limit: int | None = self.limits.total_tokens_limit
        self.parent = parent
        self.label = label
        self.spent_cost = ZERO
        self.spent_tokens = 0
        self.reserved_cost = ZERO
        self.reserved_tokens = 0
        self._allocated: UsageEstimate | None = None
        self.share_of: str | None = None
        """For a part made by ``split``: the parallel step it belongs to, so refusals say a share ran out."""
        # One lock per tree: a reservation touches every ancestor and must be atomic across them.
        self._lock: threading.Lock = _lock or (parent._lock if parent is not None else threading.Lock())

    # ------------------------------------------------------------------ views
    @property
    def remaining_cost(self) -> Decimal | None:
        """USD still available here and in every ancestor; ``None`` when no level limits cost."""
        with self._lock:
            return self._remaining()[0]

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens still available here and in every ancestor; ``None`` when no level limits tokens."""
        with self._lock:
            return self._remaining()[1]

    def _chain(self) -> list[Quota]:
        chain: list[Quota] = []
        node: Quota | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain

    def _remaining(self) -> tuple[Decimal | None, int | None]:
        cost: Decimal | None = None
        tokens: int | None = None
        node: Quota | None = self
        while node is not None:
            if node.cost_limit is not None:
                left = node.cost_limit - node.spent_cost - node.reserved_cost
                cost = left if cost is None else min(cost, left)
            if node.token_limit is not None:
                left_t = node.token_limit - node.spent_tokens - node.reserved_tokens
                tokens = left_t if tokens is None else min(tokens, left_t)
            node = node.parent
        return cost, tokens

    # ------------------------------------------------------------- operations
    def child(self, limits: UsageLimits, *, label: str) -> Quota:
        """A quota for one step's own ``usage_limits``: it draws from this one too."""
        return Quota(limits, parent=self, label=label)

    def reserve(self, estimate: UsageEstimate) -> QuotaDecision:
        """Take ``estimate`` from this quota and every ancestor, or nothing if any level would pass its limit."""
        cost, tokens = estimate.cost_usd, estimate.tokens
        with self._lock:
            node: Quota | None = self
            while node is not None:
                if (
                    node.cost_limit is not None
                    and node.spent_cost + node.reserved_cost + cost > node.cost_limit
                ):
                    return QuotaDecision(False, node._breach(COST_LIMIT, cost))
                if (
                    node.token_limit is not None
                    and node.spent_tokens + node.reserved_tokens + tokens > node.token_limit
                ):
                    return QuotaDecision(False, node._breach(TOKEN_LIMIT, tokens))
                node = node.parent
            node = self
            while node is not None:
                node.reserved_cost += cost
                node.reserved_tokens += tokens
                node = node.parent
        return GRANTED

    def reconcile(self, estimate: UsageEstimate, actual: UsageEstimate) -> QuotaDecision:
        """Replace the reservation ``estimate`` with the ``actual`` usage, at every level.

        The actual is always recorded, even when it overruns: the returned decision is then falsy
        and names the first (innermost) limit whose spent + reserved it pushed past the limit.
        """
        with self._lock:
            return self._settle(estimate, actual.cost_usd, actual.tokens)

    def release(self, estimate: UsageEstimate) -> None:
        """Give back a reservation whose step never ran (denied elsewhere, failed or cancelled)."""
        with self._lock:
            self._settle(estimate, ZERO, 0)

    def _breach(self, code: str, amount: Decimal | int, *, settled: bool = False) -> LimitBreach:
        """The facts of passing this level's ``code`` limit by ``amount``; ``settled``: the amount is
        already counted in the spend (a reconciled actual)."""
        cost = code == COST_LIMIT
        limit = self.cost_limit if cost else self.token_limit
        assert limit is not None
        spent = self.spent_cost if cost else self.spent_tokens
        shown = format_usd(Decimal(limit), places=None) if cost else f"{limit:,}"
        what = "cost" if cost else "token"
        if self.share_of is not None:
            name = f"the {what} share of {shown} of branch {self.label!r} of parallel step {self.share_of!r}"
        elif self.parent is None:
            whose = "the run's" if self.label == "run" else f"quota {self.label!r}'s"
            name = f"{whose} {what} limit of {shown}"
        else:
            name = f"the {what} limit of {shown} on step {self.label!r}"
        return LimitBreach(
            reason_code=code,
            limit_name=name,
            limit=limit,
            spent=spent - amount if settled else spent,  # type: ignore[operator]
            reserved=self.reserved_cost if cost else self.reserved_tokens,
            amount=amount,
        )

    def _settle(self, estimate: UsageEstimate, cost: Decimal, tokens: int) -> QuotaDecision:
        breach = GRANTED
        node: Quota | None = self
        while node is not None:
            node.reserved_cost -= estimate.cost_usd
            node.reserved_tokens -= estimate.tokens
            if node.reserved_cost < 0 or node.reserved_tokens < 0:
                raise ValueError(f"quota '{node.label}': settled more than was reserved ({estimate})")
            node.spent_cost += cost
            node.spent_tokens += tokens
            # An actual above its estimate can push spent + reserved past the limit while siblings
            # still hold reservations: that is a breach too, so they are cancelled before they spend.
            if breach.granted and (cost or tokens):
                if node.cost_limit is not None and node.spent_cost + node.reserved_cost > node.cost_limit:
                    breach = QuotaDecision(False, node._breach(COST_LIMIT, cost, settled=True))
                elif (
                    node.token_limit is not None
                    and node.spent_tokens + node.reserved_tokens > node.token_limit
                ):
                    breach = QuotaDecision(False, node._breach(TOKEN_LIMIT, tokens, settled=True))
            node = node.parent
        return breach

    def split(
        self,
        n: int,
        *,
        weights: Sequence[UsageEstimate] | None = None,
        labels: Sequence[str] | None = None,
        owner: str | None = None,
    ) -> list[Quota]:
        """Cut what remains into ``n`` detached quotas summing exactly to it; zero this one meanwhile.

        Parts are proportional to ``weights`` (the branches' estimates) per dimension when those
        are non-zero, else equal. Indivisible units (micro-dollars, tokens) go to the parts with the
        largest fractional shares, ties to the lowest index, so the same inputs always give the
        same parts. Call ``merge`` with the parts when the branches are done. ``owner`` names the
        parallel step whose branches the parts are, in refusals (default: this quota's label).
        """
        if n < 1:
            raise ValueError(f"split needs at least one part, got n={n}")
        if weights is not None and len(weights) != n:
            raise ValueError(f"split got {len(weights)} weights for n={n} parts")
        with self._lock:
            if self._allocated is not None:
                raise RuntimeError(f"quota '{self.label}' is already split; merge its parts first")
            cost_left, tokens_left = self._remaining()
            costs = _split_cost(cost_left, [w.cost_usd for w in weights] if weights else None, n)
            tokens = _split_tokens(tokens_left, [w.tokens for w in weights] if weights else None, n)
            allocated = UsageEstimate(cost_usd=max(cost_left or ZERO, ZERO), tokens=max(tokens_left or 0, 0))
            for node in self._chain():
                node.reserved_cost += allocated.cost_usd
                node.reserved_tokens += allocated.tokens
            self._allocated = allocated
            parts = []
            for i, (c, t) in enumerate(zip(costs, tokens, strict=True)):
                label = labels[i] if labels is not None else f"{self.label}[{i}]"
                part = Quota(
                    UsageLimits(total_cost_usd_limit=c, total_tokens_limit=t), label=label, _lock=self._lock
                )
                part.share_of = owner or self.label
                parts.append(part)
            return parts

    def merge(self, parts: Sequence[Quota]) -> QuotaDecision:
        """Take back the parts of ``split``: their spend is charged here, the rest is returned."""
        with self._lock:
            if self._allocated is None:
                raise RuntimeError(f"quota '{self.label}' was not split")
            spent_cost = sum((p.spent_cost for p in parts), ZERO)
            spent_tokens = sum(p.spent_tokens for p in parts)
            allocated, self._allocated = self._allocated, None
            return self._settle(allocated, spent_cost, spent_tokens)

    def __repr__(self) -> str:
        return (
            f"Quota({self.label!r}, cost {self.spent_cost}+{self.reserved_cost}/{self.cost_limit}, "
            f"tokens {self.spent_tokens}+{self.reserved_tokens}/{self.token_limit})"
        )


def _shares(total: int, weights: Sequence[Fraction], n: int) -> list[int]:
    """Largest-remainder apportionment of ``total`` units; deterministic, sums exactly."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [Fraction(1)] * n, Fraction(n)
    exact = [Fraction(total) * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(n), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _split_cost(left: Decimal | None, weights: list[Decimal] | None, n: int) -> list[Decimal | None]:
    if left is None:
        return [None] * n
    left = max(left, ZERO)
    micros = int(left / MICRO)
    residue = left - micros * MICRO  # sub-micro precision goes to the first part, keeping the sum exact
    ws = [Fraction(w) for w in weights] if weights else [Fraction(1)] * n
    parts = [Decimal(p) * MICRO for p in _shares(micros, ws, n)]
    parts[0] += residue
    # Plain notation (0.05, not 0.050000) so refusals quote shares the way people write money.
    return [Decimal(format(p.normalize(), "f")) for p in parts]


def _split_tokens(left: int | None, weights: list[int] | None, n: int) -> list[int | None]:
    if left is None:
        return [None] * n
    ws = [Fraction(w) for w in weights] if weights else [Fraction(1)] * n
    return list(_shares(max(left, 0), ws, n))
