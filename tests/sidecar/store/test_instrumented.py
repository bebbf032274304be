"""InstrumentedStore: every operation of any store timed, failures (not refusals) counted by kind."""

from __future__ import annotations

import pytest

from collector_processor.errors import BatchAbortedError, NotFoundError, StoreUnavailableError
from collector_processor.store import SqliteStore
from collector_processor.store.instrumented import STORE_ERRORS, STORE_SECONDS, InstrumentedStore, error_kind
from collector_processor.telemetry.selfmetrics import SelfMetrics


def test_operations_are_timed_and_refusals_are_not_errors(tmp_path) -> None:
    metrics = SelfMetrics()
    store = InstrumentedStore(SqliteStore(tmp_path / "s.db"), metrics)
    try:
        with pytest.raises(NotFoundError):
            store.get_budget("nope")
        with store.batch():
            assert store.held_reservations() == (0, 0)
        assert store.path == tmp_path / "s.db", "the inner store's attributes stay reachable"
    finally:
        store.close()
    snap = metrics.snapshot()
    timed = {dict(k)["operation"]: h.count for k, h in snap.histograms[STORE_SECONDS].items()}
    assert timed == {"get_budget": 1, "held_reservations": 1, "batch": 1}
    assert STORE_ERRORS not in snap.counters
    assert "Duration of ledger store operations" in snap.help[STORE_SECONDS]


def test_a_failing_store_counts_errors_by_operation_and_kind(tmp_path) -> None:
    metrics = SelfMetrics()
    inner = SqliteStore(tmp_path / "s.db")
    store = InstrumentedStore(inner, metrics)
    inner.close()
    with pytest.raises(Exception, match="closed"):
        store.last_alert_sequence()
    errors = metrics.snapshot().counters[STORE_ERRORS]
    assert errors == {(("kind", "internal"), ("operation", "last_alert_sequence")): 1}


def test_error_kinds() -> None:
    assert error_kind(StoreUnavailableError("busy")) == "unavailable"
    assert error_kind(BatchAbortedError("x")) == "batch_aborted"
    assert error_kind(NotFoundError("x")) is None
    assert error_kind(RuntimeError("x")) == "internal"
