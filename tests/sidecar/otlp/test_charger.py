"""The charging thread: exports queued together share one transaction; one that fails fails alone."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from collector_processor.domain.budgets import ScopeSet
from collector_processor.domain.types import RecordUsageCommand
from collector_processor.errors import InvalidRequestError
from collector_processor.ledger import Ledger
from collector_processor.otlp.charger import Charger
from collector_processor.store import SqliteStore
from tests.sidecar.conftest import draft


def usage(usage_id: str, cost: str = "1") -> RecordUsageCommand:
    return RecordUsageCommand(usage_id=usage_id, scopes=ScopeSet(team="search"), cost_usd=Decimal(cost))


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    store = SqliteStore(tmp_path / "charger.db")
    ledger = Ledger(store)
    ledger.create_budget(draft("team", limit="100"))
    yield ledger
    store.close()


def held_charger(ledger: Ledger) -> tuple[Charger, threading.Event]:
    """A charger whose thread is busy until the event is set, so that what is submitted queues up."""
    charger = Charger(ledger.store)
    gate = threading.Event()
    charger.submit(gate.wait)
    return charger, gate


def test_jobs_queued_together_commit_in_one_transaction_and_a_refused_one_fails_alone(ledger: Ledger) -> None:
    charger, gate = held_charger(ledger)
    committer = ledger.store._committer  # type: ignore[attr-defined]
    good = [charger.submit(lambda i=i: ledger.record_usage(usage(f"u{i}"))) for i in range(3)]
    refused = charger.submit(lambda: ledger.record_usage(usage("bad", "-1")))
    before = committer.transaction
    gate.set()
    assert [f.result(timeout=10).charged_usd for f in good] == [Decimal("1.000000")] * 3
    with pytest.raises(InvalidRequestError, match="cost_usd: must be a finite amount >= 0"):
        refused.result(timeout=10)
    assert committer.transaction == before + 1
    assert ledger.budget_status("team").used_usd == Decimal("3.000000")
    charger.close()


def test_a_job_that_fails_part_way_is_rolled_back_and_the_others_run_again_alone(ledger: Ledger) -> None:
    charger, gate = held_charger(ledger)

    def half_done() -> None:
        ledger.record_usage(usage("half"))
        raise RuntimeError("the process lost its marbles")

    first = charger.submit(lambda: ledger.record_usage(usage("a")))
    broken = charger.submit(half_done)
    last = charger.submit(lambda: ledger.record_usage(usage("b")))
    gate.set()
    assert first.result(timeout=10).charged_usd == last.result(timeout=10).charged_usd == Decimal("1.000000")
    with pytest.raises(RuntimeError, match="lost its marbles"):
        broken.result(timeout=10)
    # Run alone, the broken job's own write stood (it raised after committing it); nothing twice.
    assert ledger.budget_status("team").used_usd == Decimal("3.000000")
    charger.close()
