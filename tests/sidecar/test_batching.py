"""Group commit: calls that share a transaction still succeed or fail on their own, and nothing is
answered before it is durable."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from collector_processor.batching import Batcher
from collector_processor.budgets import ScopeSet
from collector_processor.errors import NotFoundError
from collector_processor.ledger import Ledger
from collector_processor.ledger_types import CommitCommand, ReserveCommand
from tests.sidecar.conftest import StoreFactory, draft

SCOPES = ScopeSet(team="search")


def test_a_failing_call_rolls_back_alone_inside_a_shared_transaction(
    ledger: Ledger, store_factory: StoreFactory
) -> None:
    ledger.create_budget(draft("team", limit="10"))
    held = ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=Decimal(1)))
    batcher = Batcher(ledger.store)

    async def turn() -> list[object]:
        calls = [
            batcher.run(
                lambda: ledger.commit(
                    CommitCommand(reservation_id=held.reservation_id, actual_usd=Decimal("0.5"))
                )
            ),
            batcher.run(
                lambda: ledger.commit(CommitCommand(reservation_id="no-such", actual_usd=Decimal(9)))
            ),
            batcher.run(lambda: ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=Decimal(2)))),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    committed, failed, reserved = asyncio.run(turn())
    assert (batcher.batches, batcher.largest) == (1, 3)
    assert isinstance(failed, NotFoundError)
    assert committed.charged_usd == Decimal("0.5")  # type: ignore[attr-defined]
    # A fresh process sees exactly what the two good calls did, nothing of the bad one.
    reopened = Ledger(store_factory.open(), clock=ledger.clock)
    status = reopened.budget_status("team")
    assert (status.used_usd, status.reserved_usd) == (Decimal("0.5"), Decimal(2))
    assert reserved.reservation_id  # type: ignore[attr-defined]


def test_a_lone_call_runs_in_its_own_transaction(ledger: Ledger) -> None:
    ledger.create_budget(draft("team"))
    batcher = Batcher(ledger.store)

    async def one() -> object:
        return await batcher.run(
            lambda: ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=Decimal(1)))
        )

    assert asyncio.run(one()).reserved_usd == Decimal(1)  # type: ignore[attr-defined]
    assert (batcher.batches, batcher.largest) == (1, 1)


def test_a_validation_error_is_raised_to_its_own_caller_only(ledger: Ledger) -> None:
    batcher = Batcher(ledger.store)

    async def turn() -> list[object]:
        return await asyncio.gather(
            batcher.run(lambda: ledger.reserve(ReserveCommand(scopes=ScopeSet(), estimate_usd=Decimal(1)))),
            batcher.run(lambda: ledger.check(SCOPES)),
            return_exceptions=True,
        )

    bad, good = asyncio.run(turn())
    assert isinstance(bad, ValueError) and str(bad).startswith("scopes: at least one")
    assert good.decision.value == "allow"  # type: ignore[attr-defined]
