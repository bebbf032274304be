"""The replay journal (``paymaster._sidecar.journal``): durable until confirmed, adopted by the next
process, never losing a record to a torn write or a corrupt line."""

from __future__ import annotations

import fcntl
import json
from decimal import Decimal
from pathlib import Path

from paymaster._sidecar.journal import Journal, PendingUsage, default_journal_dir


def entry(usage_id: str, cost: str = "0.1", target: str = "127.0.0.1:7310") -> PendingUsage:
    return PendingUsage(
        usage_id=usage_id,
        target=target,
        scopes={"team": "search"},
        cost_usd=Decimal(cost),
        total_tokens=10,
        usage={"provider": "openai", "model": "gpt-4o"},
        occurred_ms=1_700_000_000_000,
    )


def test_entries_are_written_before_append_returns_and_confirmed_ones_are_dropped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, target="127.0.0.1:7310")
    journal.append(entry("a", "0.1"))
    journal.append(entry("b", "0.0000001"))
    journal.append(entry("a", "0.1"))  # the same record twice is kept once
    assert journal.path is not None
    lines = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [line["op"] for line in lines] == ["open", "usage", "usage"]
    assert lines[2]["cost_usd"] == "0.0000001"  # exact, never exponent notation
    assert journal.pending_usd() == Decimal("0.1000001")
    journal.done("a")
    assert [e.usage_id for e in journal.pending()] == ["b"]
    journal.done("b")
    assert journal.pending() == []
    assert [json.loads(line)["op"] for line in journal.path.read_text().splitlines()] == ["open"]
    journal.close()
    assert not journal.path.exists()


def test_a_later_process_adopts_the_entries_of_a_dead_one_for_its_own_sidecar_only(tmp_path: Path) -> None:
    dead = Journal(tmp_path, target="127.0.0.1:7310")
    dead.append(entry("mine-1"))
    dead.append(entry("mine-2"))
    dead.append(entry("theirs", target="10.0.0.1:7310"))
    dead.done("mine-2")
    dead.close()
    alive = Journal(tmp_path, target="127.0.0.1:7310")
    assert alive.adopt_orphans() == 1
    assert [e.usage_id for e in alive.pending()] == ["mine-1"]
    assert alive.pending()[0] == entry("mine-1")
    other = Journal(tmp_path, target="10.0.0.1:7310")
    assert other.adopt_orphans() == 1 and [e.usage_id for e in other.pending()] == ["theirs"]


def test_a_live_processs_journal_is_left_alone(tmp_path: Path) -> None:
    live = Journal(tmp_path, target="t:1")
    live.append(entry("x", target="t:1"))
    assert live.path is not None
    with open(live.path) as handle:  # its lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("the journal file should be locked by its process")
        except BlockingIOError:
            pass
    assert Journal(tmp_path, target="t:1").adopt_orphans() == 0
    assert [e.usage_id for e in live.pending()] == ["x"]


def test_a_torn_last_line_is_ignored_and_corrupt_lines_are_kept_aside(tmp_path: Path) -> None:
    good = json.dumps(entry("ok").to_json())
    path = tmp_path / "pending-host-1-abcd.jsonl"
    path.write_text(f'{{"op":"open","v":1}}\n{good}\nnot json at all\n{good[:30]}')
    journal = Journal(tmp_path, target="127.0.0.1:7310")
    assert journal.adopt_orphans() == 1
    assert [e.usage_id for e in journal.pending()] == ["ok"]
    assert (tmp_path / "pending-host-1-abcd.corrupt").read_text() == "not json at all\n"
    assert not path.exists()


def test_the_default_directory_follows_the_environment(tmp_path: Path) -> None:
    assert default_journal_dir({"PAYMASTER_STATE_DIR": str(tmp_path)}) == tmp_path / "journal"
    assert default_journal_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "paymaster" / "journal"
    assert default_journal_dir({}).parts[-4:] == (".local", "state", "paymaster", "journal")


def test_without_a_directory_nothing_touches_the_disk(tmp_path: Path) -> None:
    journal = Journal(None, target="t:1")
    journal.append(entry("m"))
    assert journal.path is None and len(journal) == 1
    assert journal.adopt_orphans() == 0
