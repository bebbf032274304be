"""Group commit: calls that share a transaction still succeed or fail on their own, and nothing is
answered before it is durable."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from collector_processor.api.batching import Batcher
from collector_processor.domain.budgets import OnExceed, Scope, ScopeSet
from collector_processor.domain.types import CommitCommand, ReserveCommand
from collector_processor.errors import NotFoundError
from collector_processor.ledger import Ledger
from tests.sidecar.conftest import StoreFactory, draft

SCOPES = ScopeSet(team="search")


def fail_charges_to_team_boom(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make committing spend for team "boom" fail with an unexpected error: in SQLite after the
    reservation was settled in the shared transaction, in Redis as its commit script is sent."""
    if backend == "sqlite":
        from collector_processor.store.sqlite import spend as sqlite_spend

        real_charge = sqlite_spend.charge

        def charge(conn, index, scopes, amount, **kwargs):  # type: ignore[no-untyped-def]
            if scopes.team == "boom":  # after the reservation row and its holds were already written
                raise RuntimeError("disk on fire")
            return real_charge(conn, index, scopes, amount, **kwargs)

        monkeypatch.setattr(sqlite_spend, "charge", charge)
        return
    from collector_processor.store.redis.link import RedisLink

    real_script = RedisLink.script

    def script(self, name, args, keys=()):  # type: ignore[no-untyped-def]
        if name == "commit" and "boom" in args:
            raise RuntimeError("disk on fire")
        return real_script(self, name, args, keys)

    monkeypatch.setattr(RedisLink, "script", script)


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


def test_a_call_failing_part_way_aborts_the_shared_transaction_and_the_rest_run_again_alone(
    ledger: Ledger, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.create_budget(draft("team", limit="10"))
    ledger.create_budget(draft("boom", limit="10", scope_id="boom"))
    good = ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=Decimal(1)))
    bad = ledger.reserve(ReserveCommand(scopes=ScopeSet(team="boom"), estimate_usd=Decimal(1)))
    fail_charges_to_team_boom(store_factory.backend, monkeypatch)
    batcher = Batcher(ledger.store)

    async def turn() -> list[object]:
        return await asyncio.gather(
            batcher.run(
                lambda: ledger.commit(
                    CommitCommand(reservation_id=good.reservation_id, actual_usd=Decimal("0.5"))
                )
            ),
            batcher.run(
                lambda: ledger.commit(
                    CommitCommand(reservation_id=bad.reservation_id, actual_usd=Decimal("0.5"))
                )
            ),
            batcher.run(lambda: ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=Decimal(2)))),
            return_exceptions=True,
        )

    committed, failed, reserved = asyncio.run(turn())
    assert isinstance(failed, RuntimeError)
    assert committed.charged_usd == Decimal("0.5")  # type: ignore[attr-defined]
    reopened = Ledger(store_factory.open(), clock=ledger.clock)
    assert (reopened.budget_status("team").used_usd, reopened.budget_status("team").reserved_usd) == (
        Decimal("0.5"),
        Decimal(2),
    )
    # Nothing of the failed commit survived: its reservation is still held, its spend not charged.
    assert (reopened.budget_status("boom").used_usd, reopened.budget_status("boom").reserved_usd) == (
        Decimal(0),
        Decimal(1),
    )
    assert reserved.reservation_id  # type: ignore[attr-defined]


def test_threads_share_transactions_and_a_failure_part_way_fails_only_its_own_call(
    ledger: Ledger, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    ledger.create_budget(draft("team", Scope.TEAM, None, limit="1000"))
    fail_charges_to_team_boom(store_factory.backend, monkeypatch)
    start = threading.Barrier(16)
    results: dict[str, object] = {}

    def work(team: str) -> None:
        r = ledger.reserve(ReserveCommand(scopes=ScopeSet(team=team), estimate_usd=Decimal(1)))
        start.wait()
        try:
            results[team] = ledger.commit(
                CommitCommand(reservation_id=r.reservation_id, actual_usd=Decimal(1))
            )
        except Exception as exc:
            results[team] = exc

    teams = ["boom", *(f"t{i}" for i in range(15))]
    threads = [threading.Thread(target=work, args=(team,)) for team in teams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results.pop("boom"), RuntimeError)
    assert all(r.charged_usd == Decimal(1) for r in results.values())  # type: ignore[attr-defined]
    assert ledger.budget_status("team", "boom").reserved_usd == Decimal(1)  # still held, nothing charged
    assert sum(ledger.budget_status("team", t).used_usd for t in results) == Decimal(15)


def test_alerts_fired_in_a_shared_transaction_are_announced_once_it_has_committed(
    ledger: Ledger, store_factory: StoreFactory
) -> None:
    """The listener (which wakes alert streams here and, under a supervisor, in the other workers) is
    told only when another connection can read the alerts; told earlier, a stream woken by it finds
    nothing and waits for its next poll."""
    ledger.create_budget(draft("team", limit="10", on_exceed=OnExceed.WARN, thresholds=(50, 90)))
    other = store_factory.open()  # another process's view of the same store
    seen: list[int] = []
    ledger.set_alert_listener(lambda: seen.append(len(other.alerts_after(0, limit=10))))
    batcher = Batcher(ledger.store)

    async def turn() -> None:
        async def spend(usd: str) -> None:
            held = await batcher.run(
                lambda: ledger.reserve(ReserveCommand(scopes=SCOPES, estimate_usd=Decimal(usd)))
            )
            await batcher.run(
                lambda: ledger.commit(
                    CommitCommand(reservation_id=held.reservation_id, actual_usd=Decimal(usd))
                )
            )

        await asyncio.gather(spend("3"), spend("3"), spend("3.5"))

    asyncio.run(turn())
    assert batcher.largest > 1  # the commits shared a transaction
    assert seen and seen[-1] == 2 and all(seen), f"alerts visible when announced: {seen}"
