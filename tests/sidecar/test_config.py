"""Configuration is validated at start: every mistake fails with the file and the key named."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from collector_processor.api.server import create_sidecar
from collector_processor.config import create_default_config, load_config, parse_config
from paymaster.exceptions import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sidecar.example.toml"


def test_the_documented_example_config_is_valid_and_declares_its_budgets() -> None:
    config = load_config(EXAMPLE)
    assert config.server.listen == "127.0.0.1:7310"
    assert [b.id for b in config.budgets] == ["acme-monthly", "search-daily", "per-user-24h"]
    assert config.budgets[1].limit_usd == Decimal(250)
    assert config.budgets[2].scope_id is None  # a wildcard: every user has their own spend


def test_the_example_configs_redis_store_is_valid_once_uncommented() -> None:
    text = EXAMPLE.read_text()
    start = text.index('# [store]\n# kind = "redis"')
    block = text[start : text.index("\n\n", start)]
    section = "\n".join(line[2:] for line in block.splitlines() if re.match(r"# (\[|\w+ = )", line))
    store = parse_config(section, source="example").store
    assert (store.kind, store.namespace, store.cluster, store.backoff_max_seconds) == (
        "redis",
        "paymaster",
        False,
        5,
    )
    assert store.url.startswith("redis://")


def test_defaults_without_a_file_use_ports_clear_of_a_collector_prometheus_and_grafana() -> None:
    config = create_default_config().validate_all()
    ports = {
        int(a.rsplit(":", 1)[1])
        for a in (
            config.server.listen,
            config.receivers.otlp.grpc_listen,
            config.receivers.otlp.http_listen,
            config.metrics.listen,
        )
    }
    assert ports == {7310, 7317, 7318, 7319}
    assert not ports & {4317, 4318, 8888, 9090, 3000, 13133}


def test_decimal_numbers_in_the_file_are_read_exactly() -> None:
    config = parse_config(
        '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = 10.1\nperiod = "daily"\non_exceed = "warn"\n'
    )
    assert config.budgets[0].limit_usd == Decimal("10.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlisten = 'localhost'\n", "cfg.toml: server.listen: must be host:port"),
        ("[server]\nlistn = '127.0.0.1:1'\n", "cfg.toml: server.listn: unknown key"),
        (
            "[store]\nsynchronous = 'sometimes'\n",
            "cfg.toml: store.synchronous: Input should be 'normal' or 'full'",
        ),
        ("[ledger]\ntime_zone = 'Mars/Base'\n", "cfg.toml: ledger.time_zone: unknown time zone 'Mars/Base'"),
        (
            "[ledger]\ndefault_ttl_seconds = 7200\n",
            "cfg.toml: ledger.default_ttl_seconds: 7200 is above ledger.max_ttl_seconds",
        ),
        (
            "[ledger]\ndefault_alert_thresholds = [0]\n",
            "cfg.toml: ledger.default_alert_thresholds: each threshold",
        ),
        (
            "[alerts.webhook]\nurl = 'ftp://x'\n",
            "cfg.toml: alerts.webhook.url: must be an http:// or https:// URL",
        ),
        (
            "[metrics]\nmax_entities_per_budget = 0\n",
            "cfg.toml: metrics.max_entities_per_budget: must be a whole number from 1 to 10000, got 0",
        ),
        (
            "[metrics.otlp]\nendpoint = 'collector:4317'\n",
            "cfg.toml: metrics.otlp.endpoint: must be an http:// or https:// URL, got 'collector:4317'",
        ),
        (
            "[metrics.otlp]\nprotocol = 'thrift'\n",
            "cfg.toml: metrics.otlp.protocol: Input should be 'grpc' or 'http/protobuf'",
        ),
        (
            "[metrics]\nlisten = '127.0.0.1:7310'\n",
            "cfg.toml: metrics.listen: port 7310 is already used by server.listen",
        ),
        ("[server\n", "cfg.toml: invalid TOML"),
        ("[store]\nkind = 'redis'\n", 'cfg.toml: store.url: is required with kind = "redis"'),
        ("[store]\nkind = 'redis'\nurl = 'http://x:1'\n", "cfg.toml: store.url: must be redis://"),
        ("store = 'http://x:1'\n", "cfg.toml: store: Value error, must be a redis:// URL or a [store] table"),
        ("[store]\nkind = 'mongo'\n", "cfg.toml: store.kind: Input should be 'sqlite' or 'redis'"),
        ("[store]\nurl = 'redis://h:1'\n", 'cfg.toml: store.url: applies to kind = "redis" only'),
        (
            "[store]\nkind = 'redis'\nurl = 'redis://h:1'\npath = 'x.db'\n",
            'cfg.toml: store.path: applies to kind = "sqlite" only',
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis://h:1'\nnamespace = 'a{b}'\n",
            "cfg.toml: store.namespace: must be 1-64 characters",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis://h:1'\nbackoff_initial_seconds = 9\n",
            "cfg.toml: store.backoff_initial_seconds: 9 is above store.backoff_max_seconds",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis://h:1'\nwait_replicas = 1\nwait_timeout_ms = 2000\n",
            "cfg.toml: store.wait_timeout_ms: 2000 ms must be shorter than store.socket_timeout_seconds (2 s)",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis://h:1'\ncluster = true\nwait_replicas = 1\n",
            "cfg.toml: store.wait_replicas: is not supported with cluster = true",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis+sentinel://s1:26379'\n",
            "cfg.toml: store.url: must be redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis+sentinel://s1,s2:26379/pm'\n",
            "cfg.toml: store.url: sentinel 's1' must be host:port",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis+sentinel://s1:26379/pm'\ncluster = true\n",
            "cfg.toml: store.cluster: a Redis Cluster is not reached through sentinels",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'unix:///run/redis.sock'\ncluster = true\n",
            "cfg.toml: store.cluster: a Redis Cluster is reached over redis:// or rediss://",
        ),
        (
            "[store]\nkind = 'redis'\nurl = 'redis://h:1'\nsocket_timeout_seconds = 0\n",
            "cfg.toml: store.socket_timeout_seconds: must be from 0.01 to 60, got 0",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = "-1"\nperiod = "daily"\non_exceed = "warn"\n',
            "cfg.toml: budgets[0].limit_usd: must not be negative",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "tribe"\nlimit_usd = "1"\nperiod = "daily"\non_exceed = "warn"\n',
            "cfg.toml: budgets[0].scope: Input should be 'organization', 'team'",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = "1"\nperiod = "hourly"\non_exceed = "warn"\n',
            "cfg.toml: budgets[0].period: unknown period 'hourly'",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = "1"\nperiod = "daily"\n',
            "cfg.toml: budgets[0].on_exceed: is required: one of warn, block, downgrade (or give tiers)",
        ),
        (
            "[ledger]\nrequest_idle_ttl_seconds = 7200\nmax_request_idle_ttl_seconds = 3600\n",
            "cfg.toml: ledger.request_idle_ttl_seconds: 7200 is above ledger.max_request_idle_ttl_seconds (3600)",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = "x"\nperiod = "daily"\non_exceed = "warn"\n',
            "cfg.toml: budgets[0].limit_usd: must be from 0 to 1000000000, got 'x'",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = 1\nperiod = "daily"\non_exceed = "warn"\ntime_zone = "X/Y"\n',
            "cfg.toml: budgets[0].time_zone: unknown time zone",
        ),
        (
            '[[budgets]]\nid = "a"\nscope = "team"\nlimit_usd = 1\nperiod = "daily"\non_exceed = "warn"\n'
            * 2,
            "cfg.toml: budgets[1].id: 'a' is declared already at budgets[0]",
        ),
    ],
)
def test_invalid_config_fails_with_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="cfg.toml")
    assert str(info.value).startswith(message), str(info.value)


def test_a_redis_store_is_a_url_or_a_table() -> None:
    short = parse_config('store = "redis://cache.internal:6379/2"\n')
    table = parse_config('[store]\nkind = "redis"\nurl = "redis://cache.internal:6379/2"\nnamespace = "eu"\n')
    assert (short.store.kind, short.store.url, short.store.namespace) == (
        "redis",
        "redis://cache.internal:6379/2",
        "paymaster",
    )
    assert (table.store.kind, table.store.namespace) == ("redis", "eu")
    secret = parse_config('store = "redis://app:s3cret@cache.internal:6379/0"\n').store.describe()
    assert (
        secret == "redis redis://cache.internal:6379/0 namespace paymaster"
    )  # the password is never printed


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.toml: cannot read the config file"):
        load_config("nowhere.toml")


_LISTENERS = ("server.listen", "receivers.otlp.grpc_listen", "receivers.otlp.http_listen", "metrics.listen")


@pytest.mark.parametrize("key", _LISTENERS)
def test_a_port_in_use_fails_at_start_naming_its_key_and_port(tmp_path: Path, key: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = {k: f"127.0.0.1:{port}" if k == key else "127.0.0.1:0" for k in _LISTENERS}
        config = parse_config(
            f"""
            [server]
            listen = "{listen["server.listen"]}"
            [store]
            path = "{tmp_path / "s.db"}"
            [receivers.otlp]
            enabled = true
            grpc_listen = "{listen["receivers.otlp.grpc_listen"]}"
            http_listen = "{listen["receivers.otlp.http_listen"]}"
            [metrics]
            enabled = true
            listen = "{listen["metrics.listen"]}"
            """,
            source="b.toml",
        )
        sidecar = create_sidecar(config)
        with pytest.raises(ConfigError) as refused:
            sidecar.start()
        assert str(refused.value).startswith(f"b.toml: {key}: cannot serve on 127.0.0.1:{port}: "), str(
            refused.value
        )


def test_a_port_another_sidecar_holds_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    first = create_sidecar(
        parse_config(f'[server]\nlisten = "127.0.0.1:0"\n[store]\npath = "{tmp_path / "a.db"}"\n')
    ).start()
    try:
        clash = parse_config(
            f'[server]\nlisten = "{first.address}"\n[store]\npath = "{tmp_path / "b.db"}"\n', source="b.toml"
        )
        with pytest.raises(ConfigError, match=rf"b\.toml: server\.listen: cannot serve on {first.address}"):
            create_sidecar(clash).start()
    finally:
        first.stop(0)


def test_a_config_budget_that_collides_with_an_api_budget_fails_at_start(tmp_path: Path) -> None:
    from collector_processor.domain.budgets import BudgetDraft, OnExceed, Scope

    db = f'[store]\npath = "{tmp_path / "s.db"}"\n[server]\nlisten = "127.0.0.1:0"\n'
    sidecar = create_sidecar(parse_config(db))
    sidecar.ledger.create_budget(
        BudgetDraft(
            id="mine", scope=Scope.TEAM, limit_usd=Decimal(1), period="daily", on_exceed=OnExceed.WARN
        )
    )
    sidecar.store.close()
    declared = (
        db
        + '[[budgets]]\nid = "mine"\nscope = "team"\nlimit_usd = 1\nperiod = "daily"\non_exceed = "block"\n'
    )
    with pytest.raises(ConfigError, match="budgets: budget 'mine' exists already, created through the API"):
        create_sidecar(parse_config(declared, source="s.toml"))


def test_the_console_script_refuses_a_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "sidecar.toml"
    bad.write_text(
        '[[budgets]]\nid = "x"\nscope = "team"\nlimit_usd = "-3"\nperiod = "daily"\non_exceed = "block"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "paymaster.cli", "sidecar", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}: budgets[0].limit_usd: must not be negative, got '-3'" in result.stderr
