"""Every number in the sidecar's file is finite and within a documented range, checked before anything
is created: a value outside it stops the sidecar with the file and key named, and no database file
is written and no port opened."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_processor.api.server import create_sidecar
from collector_processor.config import NumericKey, load_config, numeric_keys
from paymaster.exceptions import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sidecar.md"

_SQLITE_KEYS = {"store.path", "store.synchronous", "store.busy_timeout_ms"}
_BUDGET = {"id": '"b"', "scope": '"team"', "limit_usd": "1", "period": '"daily"', "on_exceed": '"warn"'}


def _bad_values(numeric: NumericKey) -> Iterator[str]:
    """inf, nan, negative, absurdly large and tiny, as TOML spells them."""
    yield from ("inf", "-inf", "nan", "-1", "1e300", "-1e300")
    if numeric.whole or numeric.low > 0:
        yield "1e-9"  # zero is allowed where the range starts at 0, and so is anything this close to it


def _cases() -> Iterator[tuple[str, str]]:
    for numeric in numeric_keys():
        for value in _bad_values(numeric):
            yield numeric.key, value


def _toml(key: str, value: str, db: Path) -> str:
    """A file setting ``key`` to ``value`` and nothing else that matters (the store file under ``db``)."""
    tables: dict[str, dict[str, str]] = {"store": {"path": f'"{db}"'}}
    if key.startswith("store.") and key not in _SQLITE_KEYS:  # a Redis key: refused with SQLite anyway
        tables["store"] = {"kind": '"redis"', "url": '"redis://127.0.0.1:1/0"'}
    budget = dict(_BUDGET)
    table, _, name = key.rpartition(".")
    literal = f"[{value}]" if name.endswith("alert_thresholds") else value
    if table == "budgets[]":
        budget[name] = literal
    elif table == "budgets[].tiers[]":
        budget["tiers"] = f'[{{ {name} = {value}, action = "warn" }}]'
        del budget["on_exceed"]
    else:
        tables.setdefault(table, {})[name] = literal
        if table == "alerts.webhook":
            tables[table]["url"] = '"http://127.0.0.1:9/hook"'
    lines = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    lines.append("[[budgets]]")
    lines += [f"{k} = {v}" for k, v in budget.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("key", "value"), list(_cases()))
def test_a_number_out_of_its_range_is_refused_naming_file_and_key_before_anything_is_created(
    tmp_path: Path, key: str, value: str
) -> None:
    file = tmp_path / "sidecar.toml"
    file.write_text(_toml(key, value, tmp_path / "ledger.db"))
    with pytest.raises(ConfigError) as refused:
        sidecar = create_sidecar(load_config(file))
        sidecar.store.close()  # reached only when the value was accepted
    where = re.escape(key.replace("[]", "[0]"))
    assert re.match(rf"{re.escape(str(file))}: {where}(\[0\])?: ", str(refused.value)), str(refused.value)
    assert os.listdir(tmp_path) == ["sidecar.toml"]


def test_the_refusal_names_the_range() -> None:
    from collector_processor.config import parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config("[ledger]\nmax_ttl_seconds = inf\n", source="sidecar.toml")
    assert (
        str(refused.value)
        == "sidecar.toml: ledger.max_ttl_seconds: must be finite, from 0.001 to 2592000, got inf"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config("[alerts.webhook]\nurl = 'http://h'\nmax_attempts = 2.5\n", source="sidecar.toml")
    assert str(refused.value) == (
        "sidecar.toml: alerts.webhook.max_attempts: must be a whole number from 1 to 100, got 2.5"
    )


def test_every_number_and_its_range_is_documented() -> None:
    """docs/sidecar.md lists every numeric key with the range the code enforces, and nothing else."""
    text = DOCS.read_text()
    rows = re.findall(r"^\| `([a-z_.\[\]]+)` \| (whole number|number) \| (\S+) \| (\S+) \|", text, re.M)
    documented = {key: (kind, low, high) for key, kind, low, high in rows}
    enforced = {
        n.key: ("whole number" if n.whole else "number", *n.range().split(" to ")) for n in numeric_keys()
    }
    assert documented == enforced


def test_a_bad_price_file_creates_no_database(tmp_path: Path) -> None:
    file = tmp_path / "sidecar.toml"
    file.write_text(
        f'[store]\npath = "{tmp_path / "ledger.db"}"\n[receivers.otlp]\nenabled = true\n'
        '[receivers.otlp.pricing]\nconfig = "missing.toml"\n'
    )
    with pytest.raises(
        ConfigError, match=r"sidecar\.toml: receivers\.otlp\.pricing\.config: .*missing\.toml"
    ):
        create_sidecar(load_config(file))
    assert os.listdir(tmp_path) == ["sidecar.toml"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[ledger]\nmax_ttl_seconds = inf", "ledger.max_ttl_seconds: must be finite, from 0.001 to 2592000, got inf"),
        ("[ledger]\nusage_retention_days = 1e300", "ledger.usage_retention_days: must be from 0.01 to 36500, got 1E+300"),
        ("[alerts.webhook]\nurl = 'http://h'\nbackoff_max_seconds = inf", "alerts.webhook.backoff_max_seconds: must be finite"),
        ("[ledger]\ndefault_ttl_seconds = 1e-9", "ledger.default_ttl_seconds: must be from 0.001 to 2592000, got 1E-9"),
    ],
)  # fmt: skip
def test_the_console_script_refuses_such_a_number_in_one_line_with_exit_code_2(
    tmp_path: Path, line: str, message: str
) -> None:
    file = tmp_path / "sidecar.toml"
    file.write_text(line + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "paymaster.cli", "sidecar", "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"paymaster sidecar: {file}: {message}")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert os.listdir(tmp_path) == ["sidecar.toml"]
