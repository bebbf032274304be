"""The SQLite store's schema, connection settings and row conversions.

Money is kept in integer micro-dollars (spend, holds, reservations) and budget limits as exact decimal
strings. The database runs in WAL mode: a committed transaction is in the log before the call returns,
so it survives ``kill -9`` of the sidecar; ``synchronous=FULL`` also survives power loss at the price
of an fsync per transaction. Several processes may open the same file: writers take the database lock
with ``BEGIN IMMEDIATE`` and wait up to the busy timeout.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

from collector_processor.domain.budgets import Budget, OnExceed, Scope, decode_tiers, encode_tiers
from collector_processor.domain.periods import parse_period
from collector_processor.store.sqlite.access import ACCESS_SCHEMA
from collector_processor.store.sqlite.requests import REQUEST_SCHEMA

__all__ = [
    "BUDGET_COLUMNS",
    "SCHEMA_VERSION",
    "TOTAL_OUT_OF_RANGE",
    "budget_from_row",
    "budget_to_row",
    "connect",
    "decode_holds",
    "encode_holds",
]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counters VALUES ('schema', 1), ('budgets', 0);

CREATE TABLE IF NOT EXISTS budgets (
    id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    scope_id TEXT,
    limit_usd TEXT NOT NULL,
    period TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    on_exceed TEXT NOT NULL,
    thresholds TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    declared_in_config INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budgets_by_scope ON budgets (scope, scope_id);

-- Committed spend per budget, entity and bucket (a calendar period, or a slice of a rolling window).
CREATE TABLE IF NOT EXISTS spend (
    budget_id TEXT NOT NULL,
    entity TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    used_micros INTEGER NOT NULL,
    PRIMARY KEY (budget_id, entity, bucket_ms)
) WITHOUT ROWID;

-- What reservations in flight hold per budget and entity; the generation keeps a re-created budget
-- from being debited by reservations made against its deleted namesake.
CREATE TABLE IF NOT EXISTS holds (
    budget_id TEXT NOT NULL,
    entity TEXT NOT NULL,
    generation INTEGER NOT NULL,
    reserved_micros INTEGER NOT NULL,
    PRIMARY KEY (budget_id, entity, generation)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT,
    state INTEGER NOT NULL,
    organization TEXT NOT NULL,
    team TEXT NOT NULL,
    agent TEXT NOT NULL,
    workflow TEXT NOT NULL,
    user TEXT NOT NULL,
    held_micros INTEGER NOT NULL,
    holds TEXT NOT NULL,
    decision TEXT NOT NULL,
    awaiting INTEGER NOT NULL,
    deciding_budget_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    warnings TEXT NOT NULL,
    estimate_tokens INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    settled_ms INTEGER,
    charged_micros INTEGER,
    released_micros INTEGER,
    late INTEGER,
    owner TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL DEFAULT ''
);
-- Partial indexes: a reservation without a key, or no longer held, costs no index entry.
CREATE UNIQUE INDEX IF NOT EXISTS reservations_by_key ON reservations (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS reservations_due ON reservations (expires_ms) WHERE state = 1;

-- One row per threshold that has fired per budget, entity and period: the de-duplication record.
CREATE TABLE IF NOT EXISTS alert_marks (
    budget_id TEXT NOT NULL,
    entity TEXT NOT NULL,
    period_key INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    PRIMARY KEY (budget_id, entity, period_key, threshold)
) WITHOUT ROWID;

-- The alert log: WatchAlerts reads it by sequence; notifiers lease undelivered rows.
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    budget_id TEXT NOT NULL,
    budget_name TEXT NOT NULL,
    scope TEXT NOT NULL,
    entity TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    used_micros INTEGER NOT NULL,
    limit_micros INTEGER NOT NULL,
    action TEXT NOT NULL,
    period_start_ms INTEGER NOT NULL,
    period_end_ms INTEGER NOT NULL,
    fired_ms INTEGER NOT NULL,
    message TEXT NOT NULL,
    claimed_by TEXT,
    claim_until_ms INTEGER,
    delivered_ms INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (seq) WHERE delivered_ms IS NULL;

-- Every committed reservation and recorded usage: the source of usage reports, and the idempotency
-- record of RecordUsage.
CREATE TABLE IF NOT EXISTS usage_events (
    usage_id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    organization TEXT NOT NULL,
    team TEXT NOT NULL,
    agent TEXT NOT NULL,
    workflow TEXT NOT NULL,
    user TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    cost_micros INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    reservation_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_time ON usage_events (ts_ms);

-- Idempotency keys of usage recorded in batches (OTLP spans): the instant leads the key, so the keys
-- of one batch land next to each other, and pruning is a range delete. ``stamp`` tells the keys one
-- batch inserted from those that were there before.
CREATE TABLE IF NOT EXISTS usage_keys (
    ts_ms INTEGER NOT NULL,
    uid BLOB NOT NULL,
    stamp INTEGER NOT NULL,
    PRIMARY KEY (ts_ms, uid)
) WITHOUT ROWID;

-- The largest totals recorded per running series (cumulative OTLP metrics), charged by their growth.
CREATE TABLE IF NOT EXISTS usage_series (
    id BLOB PRIMARY KEY,
    cost_micros INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_series_by_time ON usage_series (updated_ms);

-- SQLite turns an integer sum past 2^63 - 1 into an inexact REAL. Spend and holds refuse such a value:
-- the statement fails, and the store rolls the whole operation back and refuses it (TOTAL_OUT_OF_RANGE).
CREATE TRIGGER IF NOT EXISTS spend_exact_insert BEFORE INSERT ON spend
    WHEN typeof(NEW.used_micros) <> 'integer' BEGIN SELECT RAISE(ABORT, 'paymaster: total out of range'); END;
CREATE TRIGGER IF NOT EXISTS spend_exact_update BEFORE UPDATE ON spend
    WHEN typeof(NEW.used_micros) <> 'integer' BEGIN SELECT RAISE(ABORT, 'paymaster: total out of range'); END;
CREATE TRIGGER IF NOT EXISTS holds_exact_insert BEFORE INSERT ON holds
    WHEN typeof(NEW.reserved_micros) <> 'integer' BEGIN SELECT RAISE(ABORT, 'paymaster: total out of range'); END;
CREATE TRIGGER IF NOT EXISTS holds_exact_update BEFORE UPDATE ON holds
    WHEN typeof(NEW.reserved_micros) <> 'integer' BEGIN SELECT RAISE(ABORT, 'paymaster: total out of range'); END;
"""

TOTAL_OUT_OF_RANGE = "paymaster: total out of range"
"""The message of the error a spend or hold total past 2^63 - 1 micro-dollars raises."""

BUDGET_COLUMNS = (
    "id, generation, name, scope, scope_id, limit_usd, period, time_zone, on_exceed, thresholds, enabled, "
    "declared_in_config, created_ms, updated_ms, tiers"
)


def connect(path: Path | str, *, synchronous: str, busy_timeout_ms: int, create: bool) -> sqlite3.Connection:
    """Open (and, if ``create``, initialise) the database with the store's settings."""
    conn = sqlite3.connect(
        str(path),
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        check_same_thread=False,  # each connection is guarded by its own lock
        cached_statements=256,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch {path} to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    # Checkpoints copy the log into the database file and fsync it; run inline they would stall a
    # request every few hundred transactions. The store checkpoints from a background thread instead and
    # keeps SQLite's own automatic checkpoint only as a far-off backstop.
    conn.execute("PRAGMA wal_autocheckpoint = 20000")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA mmap_size = 268435456")
    conn.execute("PRAGMA cache_size = -16000")
    if create:
        conn.executescript(_SCHEMA)
        _add_columns(conn)
        conn.executescript(ACCESS_SCHEMA)
        conn.executescript(REQUEST_SCHEMA)
        version = conn.execute("SELECT value FROM counters WHERE name = 'schema'").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{path} has schema version {version}; this sidecar reads {SCHEMA_VERSION}"
            )
    return conn


# Columns added after the first release: a file made by an earlier sidecar gets them on open (its rows
# read as made without a principal and without a fingerprint, which the checks accept).
_ADDED_COLUMNS = (
    ("reservations", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("reservations", "fingerprint", "TEXT NOT NULL DEFAULT ''"),
    ("usage_events", "fingerprint", "TEXT NOT NULL DEFAULT ''"),
    ("budgets", "tiers", "TEXT NOT NULL DEFAULT ''"),
    ("alerts", "tier", "INTEGER NOT NULL DEFAULT 0"),
    ("reservations", "tier", "TEXT NOT NULL DEFAULT ''"),
    ("reservations", "request_holds", "TEXT NOT NULL DEFAULT ''"),
    ("reservations", "service", "TEXT NOT NULL DEFAULT ''"),
)


def _add_columns(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # another process may be opening the same file
    try:
        for table, column, kind in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def budget_from_row(row: tuple[Any, ...]) -> Budget:
    (bid, generation, name, scope, scope_id, limit_usd, period, tz, on_exceed, thresholds, enabled,
     declared, created_ms, updated_ms, tiers) = row  # fmt: skip
    return Budget(
        id=bid,
        name=name,
        scope=Scope(scope),
        scope_id=scope_id,
        limit_usd=Decimal(limit_usd),
        period=parse_period(period),
        time_zone=tz,
        on_exceed=OnExceed(on_exceed),
        alert_thresholds=tuple(int(t) for t in thresholds.split(",") if t),
        tiers=decode_tiers(tiers),
        enabled=bool(enabled),
        declared_in_config=bool(declared),
        generation=generation,
        created_ms=created_ms,
        updated_ms=updated_ms,
    )


def budget_to_row(b: Budget) -> tuple[Any, ...]:
    return (
        b.id,
        b.generation,
        b.name,
        b.scope.value,
        b.scope_id,
        str(b.limit_usd),
        b.period.spec,
        b.time_zone,
        b.on_exceed.value,
        ",".join(str(t) for t in b.alert_thresholds),
        int(b.enabled),
        int(b.declared_in_config),
        b.created_ms,
        b.updated_ms,
        encode_tiers(b.tiers),
    )


# Holds of a reservation: "budget_id \x1e generation \x1e entity" joined by \x1f. Ids and entities are
# validated to be printable, so the separators never occur inside them.
def encode_holds(holds: list[tuple[str, int, str]]) -> str:
    return "\x1f".join(f"{bid}\x1e{gen}\x1e{entity}" for bid, gen, entity in holds)


def decode_holds(text: str) -> list[tuple[str, int, str]]:
    out = []
    for item in text.split("\x1f") if text else ():
        bid, gen, entity = item.split("\x1e")
        out.append((bid, int(gen), entity))
    return out
