"""The replay journal: spend the sidecar has not heard of yet, kept until ``RecordUsage`` lands.

Spend goes in here when the sidecar could not take it at the time: steps run under ``fail_open``
while the sidecar was unreachable, and commits (of a step's reservation or of a lease) that failed
after the money was spent. Each entry is replayed with ``RecordUsage``, idempotent by its
``usage_id`` (and, for a reservation, by the reservation: a held one is committed with the cost, a
committed one is not charged again), so replaying twice never charges twice.

With a directory, every entry is appended to this process's own file (JSON lines, fsynced before
the step returns) and marked done after the sidecar confirmed it, so pending spend survives the
process. The file is locked while its process lives; a later process on the same host adopts the
files of dead ones (their lock is gone) that name the same sidecar, so nothing is lost when a
process ends before the sidecar is back. Without a directory the journal lives in memory only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: files are written but never adopted
    fcntl = None  # type: ignore[assignment]

__all__ = ["Journal", "PendingUsage", "default_journal_dir"]

log = logging.getLogger("paymaster")
_FORMAT: Final = 1
_PREFIX: Final = "pending-"


def default_journal_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$PAYMASTER_STATE_DIR/journal``, else ``$XDG_STATE_HOME/paymaster/journal``, else
    ``~/.local/state/paymaster/journal``. Nothing is created until spend has to be kept."""
    env = os.environ if environ is None else environ
    if env.get("PAYMASTER_STATE_DIR"):
        return Path(env["PAYMASTER_STATE_DIR"]).expanduser() / "journal"
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "paymaster" / "journal"


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingUsage:
    """One unit of spend waiting to be replayed to the sidecar with ``RecordUsage``."""

    usage_id: str
    """Idempotency key of the replay."""
    target: str
    """The sidecar it belongs to."""
    scopes: dict[str, str]
    """Scope ids the spend is attributed to."""
    cost_usd: Decimal
    """What was spent."""
    total_tokens: int = 0
    """Tokens used."""
    usage: dict[str, Any] = field(default_factory=dict)
    """Model facts (provider, model, token counts) for the sidecar's reports."""
    occurred_ms: int = 0
    """When it was spent (epoch ms), so it lands in the right period."""
    reservation_id: str = ""
    """The reservation it settles, when it had one (a failed commit)."""
    reason: str = "fail_open"
    """``fail_open``, ``commit_failed`` or ``lease_commit_failed``."""
    request_budget: str = ""
    """The request budget the spend belongs to as well (a step run under fail_open inside one)."""
    service: str = ""
    """The service that spent it, for the request budget's spend by service."""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["cost_usd"] = format(self.cost_usd, "f")
        return {"op": "usage", "v": _FORMAT, **doc}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PendingUsage:
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in doc.items() if k in names}
        values["cost_usd"] = Decimal(str(values["cost_usd"]))
        return cls(**values)


class Journal:
    """Pending spend of one sidecar target; see the module docstring. Thread-safe."""

    def __init__(self, directory: str | Path | None, *, target: str) -> None:
        self.directory = None if directory is None else Path(directory)
        self.target = target
        self._lock = threading.Lock()
        """Guards ``_pending``; never held while the file is written, so readers never wait on an fsync."""
        self._file_lock = threading.Lock()
        """Serialises the writes to the file (each fsynced) with the changes of ``_pending`` they record."""
        self._pending: dict[str, PendingUsage] = {}
        self._file: IO[str] | None = None
        self.path: Path | None = None
        self._adopted = False

    # ------------------------------------------------------------------ reading
    def pending(self) -> list[PendingUsage]:
        """Entries not yet confirmed by the sidecar, oldest first."""
        with self._lock:
            return list(self._pending.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_usd(self) -> Decimal:
        """Total USD waiting to be replayed."""
        with self._lock:
            return sum((e.cost_usd for e in self._pending.values()), Decimal(0))

    # ------------------------------------------------------------------ writing
    def append(self, entry: PendingUsage) -> None:
        """Keep ``entry`` (durably, when there is a directory: written and fsynced before this returns)
        until ``done``. Blocks for the fsync: call it from a thread, never from an event loop."""
        with self._file_lock:
            with self._lock:
                if entry.usage_id in self._pending:
                    return
            self._write(entry.to_json())
            with self._lock:
                self._pending[entry.usage_id] = entry

    def keep_in_memory(self, entry: PendingUsage) -> None:
        """Keep ``entry`` without writing it (the file could not be written); it is replayed all the same."""
        with self._lock:
            self._pending.setdefault(entry.usage_id, entry)

    def done(self, usage_id: str) -> None:
        """The sidecar confirmed the entry (charged, or a duplicate of an earlier charge)."""
        with self._file_lock:
            with self._lock:
                if self._pending.pop(usage_id, None) is None:
                    return
                empty = not self._pending
            self._write({"op": "done", "usage_id": usage_id})
            if empty:
                self._truncate()

    def rejected(self, usage_id: str, error: str) -> None:
        """The sidecar refused the entry for good; it stays in the file with the error, for an operator."""
        with self._file_lock:
            with self._lock:
                entry = self._pending.pop(usage_id, None)
            if entry is None:
                return
            self._write({"op": "rejected", "usage_id": usage_id, "error": error})
            if self.path is not None:
                with open(self.path.with_suffix(".rejected"), "a", encoding="utf-8") as out:
                    out.write(json.dumps({**entry.to_json(), "error": error}) + "\n")

    def adopt_orphans(self) -> int:
        """Take over the pending entries for this target from files whose process has ended."""
        if self.directory is None or fcntl is None or not self.directory.is_dir():
            return 0
        adopted = 0
        for path in sorted(self.directory.glob(f"{_PREFIX}*.jsonl")):
            if path == self.path:
                continue
            adopted += self._adopt(path)
        return adopted

    def close(self) -> None:
        """Close this process's file (its entries stay for the next process to adopt)."""
        with self._file_lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                if not len(self) and self.path is not None:
                    self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the file
    def _write(self, doc: dict[str, Any]) -> None:
        if self.directory is None:
            return
        handle = self._open()
        handle.write(json.dumps(doc, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

    def _open(self) -> IO[str]:
        if self._file is None:
            assert self.directory is not None
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{_PREFIX}{os.uname().nodename}-{os.getpid()}-{os.urandom(4).hex()}.jsonl"
            self.path = self.directory / name
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the process's life
            if fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.write(json.dumps({"op": "open", "v": _FORMAT, "target": self.target}) + "\n")
        return self._file

    def _truncate(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            self._file.seek(0)
            self._file.write(json.dumps({"op": "open", "v": _FORMAT, "target": self.target}) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def _adopt(self, path: Path) -> int:
        assert fcntl is not None
        try:
            handle = open(path, "r+", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError:
            return 0
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # its process is alive and replays it itself
            ours, others, corrupt = _read_pending(path, handle.read(), self.target)
            for entry in ours:
                self.append(entry)
            if corrupt:
                with open(path.with_suffix(".corrupt"), "a", encoding="utf-8") as out:
                    out.writelines(line + "\n" for line in corrupt)
            if others:
                handle.seek(0)
                handle.truncate(0)
                handle.writelines(json.dumps(e.to_json()) + "\n" for e in others)
                handle.flush()
                os.fsync(handle.fileno())
            else:
                path.unlink(missing_ok=True)
        if ours:
            log.info("adopted %d pending usage record(s) for %s from %s", len(ours), self.target, path)
        return len(ours)


def _read_pending(
    path: Path, text: str, target: str
) -> tuple[list[PendingUsage], list[PendingUsage], list[str]]:
    """Entries of ``target``, entries of other targets, and lines that could not be read."""
    entries: dict[str, PendingUsage] = {}
    corrupt: list[str] = []
    lines = text.split("\n")
    complete = lines[:-1]  # the last piece has no newline: a write cut short by a crash, or empty
    if lines[-1].strip():
        log.warning("%s: ignoring an incomplete last line (a write cut short)", path)
    for line in complete:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            op = doc.get("op")
            if op == "usage":
                entry = PendingUsage.from_json(doc)
                entries[entry.usage_id] = entry
            elif op in ("done", "rejected"):
                entries.pop(str(doc["usage_id"]), None)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            log.warning("%s: a line cannot be read (%s); kept in %s", path, exc, path.with_suffix(".corrupt"))
            corrupt.append(line)
    ours = [e for e in entries.values() if e.target == target]
    others = [e for e in entries.values() if e.target != target]
    return ours, others, corrupt


def iter_files(directory: Path) -> Iterator[Path]:
    """The journal files in ``directory`` (for tools and tests)."""
    return iter(sorted(directory.glob(f"{_PREFIX}*.jsonl")))
