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
from decimal import Decimal
from fractions import Fraction
from typing import Final

from paymaster._estimate import UsageEstimate
from paymaster.limits import UsageLimits
from paymaster.money import MICRO, ZERO

__all__ = ["Quota", "QuotaDecision", "UsageEstimate"]

COST_LIMIT: Final = "cost_limit"
TOKEN_LIMIT: Final = "token_limit"


class QuotaDecision:
    """The answer to ``reserve`` or ``reconcile``: truthy when granted / within limits."""

    __slots__ = ("granted", "message", "reason_code")

    def __init__(self, granted: bool, reason_code: str | None = None, message: str | None = None) -> None:
        self.granted = granted
        """True when the reservation was taken (or the reconciled actual fits)."""
        self.reason_code = reason_code
        """``cost_limit`` or ``token_limit`` when refused."""
        self.message = message
        """``Cost limit of $0.25 exceeded`` style, quoting the limit as the user wrote it."""

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
        """For a part made by ``split``: the parent's label, so refusals say a share ran out."""
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
                    return QuotaDecision(False, COST_LIMIT, node._message(COST_LIMIT))
                if (
                    node.token_limit is not None
                    and node.spent_tokens + node.reserved_tokens + tokens > node.token_limit
                ):
                    return QuotaDecision(False, TOKEN_LIMIT, node._message(TOKEN_LIMIT))
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

    def _message(self, code: str) -> str:
        if self.share_of is None:
            return self.limits.cost_message() if code == COST_LIMIT else self.limits.tokens_message()
        if code == COST_LIMIT:
            return f"Cost share of ${self.cost_limit} for parallel branch {self.label!r} of {self.share_of!r} exceeded"
        return f"Token share of {self.token_limit} for parallel branch {self.label!r} of {self.share_of!r} exceeded"

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
                    breach = QuotaDecision(False, COST_LIMIT, node._message(COST_LIMIT))
                elif (
                    node.token_limit is not None
                    and node.spent_tokens + node.reserved_tokens > node.token_limit
                ):
                    breach = QuotaDecision(False, TOKEN_LIMIT, node._message(TOKEN_LIMIT))
            node = node.parent
        return breach

    def split(
        self, n: int, *, weights: Sequence[UsageEstimate] | None = None, labels: Sequence[str] | None = None
    ) -> list[Quota]:
        """Cut what remains into ``n`` detached quotas summing exactly to it; zero this one meanwhile.

        Parts are proportional to ``weights`` (the branches' estimates) per dimension when those
        are non-zero, else equal. Indivisible units (micro-dollars, tokens) go to the parts with the
        largest fractional shares, ties to the lowest index, so the same inputs always give the
        same parts. Call ``merge`` with the parts when the branches are done.
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
                part.share_of = self.label
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
