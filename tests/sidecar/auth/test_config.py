"""The ``[auth]`` section and the listeners' ``tls`` blocks: refused at start, naming the key, never a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector_processor.config import load_config, parse_config
from paymaster.exceptions import ConfigError
from tests.certs import Authority


def refused(text: str, tmp: Path) -> str:
    path = tmp / "sidecar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[server]\nlisten = "0.0.0.0:7310"', "server.listen"),
        ('[server]\nlisten = "10.1.2.3:7310"', "server.listen"),
        ('[receivers.otlp]\nenabled = true\ngrpc_listen = "0.0.0.0:7317"', "receivers.otlp.grpc_listen"),
        ('[receivers.otlp]\nenabled = true\nhttp_listen = "[::]:7318"', "receivers.otlp.http_listen"),
        ('[metrics]\nenabled = true\nlisten = "0.0.0.0:7319"', "metrics.listen"),
    ],
)
def test_a_listener_open_to_other_hosts_without_auth_refuses_to_start(
    section: str, key: str, tmp_path: Path
) -> None:
    message = refused(section + "\n", tmp_path)
    assert f"sidecar.toml: {key}: " in message
    assert "callers are not authenticated" in message and "allow_unauthenticated = true" in message
    assert not (tmp_path / "paymaster-sidecar.db").exists()


def test_allow_unauthenticated_or_auth_lets_it_start(tmp_path: Path) -> None:
    parse_config('[server]\nlisten = "0.0.0.0:7310"\nallow_unauthenticated = true\n')
    parse_config('[server]\nlisten = "0.0.0.0:7310"\n[auth]\nenabled = true\n')
    parse_config('[server]\nlisten = "127.0.0.1:7310"\n')
    parse_config('[server]\nlisten = "localhost:7310"\n')
    parse_config('[server]\nlisten = "[::1]:7310"\n')
    # /metrics is authenticated only when it says so
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config('[auth]\nenabled = true\n[metrics]\nenabled = true\nlisten = "0.0.0.0:7319"\n')
    parse_config(
        '[auth]\nenabled = true\n[metrics]\nenabled = true\nlisten = "0.0.0.0:7319"\nrequire_token = true\n'
    )


def test_a_tokens_file_is_checked_at_start_and_never_echoed(tmp_path: Path) -> None:
    secret = "s3cret-" + "z" * 40
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ci"\ntoken = "{secret}"\nroles = ["spender", "owner"]\ngrants = ["*"]\n'
    )
    message = refused(f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n', tmp_path)
    assert (
        "auth.tokens_file: " in message and "tokens[0].roles" in message and "unknown role 'owner'" in message
    )
    assert secret not in message
    tokens.write_text(
        f'[[tokens]]\nname = "ci"\ntoken = "{secret}"\nsha256 = "{"0" * 64}"\nroles = ["spender"]\ngrants = ["*"]\n'
    )
    assert "set exactly one of token or sha256" in refused(
        f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n', tmp_path
    )
    tokens.write_text('[[tokens]]\nname = "ci"\ntoken = "short"\nroles = ["spender"]\ngrants = ["*"]\n')
    assert "at least 32 printable characters" in refused(
        f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n', tmp_path
    )
    message = refused('[auth]\nenabled = true\ntokens_file = "missing.toml"\n', tmp_path)
    assert "auth.tokens_file: cannot read" in message and str(tmp_path / "missing.toml") in message


def test_a_relative_tokens_file_is_found_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "tokens.toml").write_text(
        f'[[tokens]]\nname = "ci"\ntoken = "{"t" * 40}"\nroles = ["reader"]\ngrants = ["team=search"]\n'
    )
    path = tmp_path / "sidecar.toml"
    path.write_text('[auth]\nenabled = true\ntokens_file = "tokens.toml"\n')
    config = load_config(path)
    assert [t.principal.name for t in config.auth.bootstrap(config.base_dir)] == ["ci"]


def test_an_admin_token_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = refused('[auth]\nenabled = true\nadmin_token_env = "PM_TEST_ADMIN"\n', tmp_path)
    assert "auth.admin_token_env: the environment variable PM_TEST_ADMIN is not set" in message
    monkeypatch.setenv("PM_TEST_ADMIN", "too-short")
    message = refused('[auth]\nenabled = true\nadmin_token_env = "PM_TEST_ADMIN"\n', tmp_path)
    assert "at least 32" in message and "too-short" not in message
    monkeypatch.setenv("PM_TEST_ADMIN", "a" * 40)
    config = parse_config('[auth]\nenabled = true\nadmin_token_env = "PM_TEST_ADMIN"\n')
    (boot,) = config.auth.bootstrap(None)
    assert boot.principal.grants.unrestricted and boot.principal.name == "env:PM_TEST_ADMIN"


@pytest.mark.parametrize(
    ("tls", "key", "message"),
    [
        ('cert_file = "{cert}"', "server.tls.key_file", "is required when TLS is configured"),
        ('key_file = "{key}"', "server.tls.cert_file", "is required when TLS is configured"),
        ('cert_file = "{cert}"\nkey_file = "nope.key"', "server.tls.key_file", "no such file"),
        (
            'cert_file = "{cert}"\nkey_file = "{key}"\nclient_ca_file = "nope.crt"',
            "server.tls.client_ca_file",
            "no such file",
        ),
    ],
)
def test_a_half_or_missing_tls_block_names_the_key(tls: str, key: str, message: str, tmp_path: Path) -> None:
    cert, private = Authority().server().write(tmp_path, "server")
    text = "[server.tls]\n" + tls.format(cert=cert, key=private) + "\n"
    got = refused(text, tmp_path)
    assert f"{key}: {message}" in got


def test_client_mappings_are_checked(tmp_path: Path) -> None:
    ca = Authority()
    cert, key = ca.server().write(tmp_path, "server")
    ca_file = ca.write(tmp_path)
    tls = f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nclient_ca_file = "{ca_file}"\n'
    both = '[[auth.clients]]\nname = "x"\nuri = "spiffe://a"\ncommon_name = "x"\nroles = ["spender"]\ngrants = ["*"]\n'
    assert "auth.clients[0]: set exactly one of uri" in refused(
        "[auth]\nenabled = true\n" + both + tls, tmp_path
    )
    dup = '[[auth.clients]]\nname = "x"\nuri = "spiffe://a"\nroles = ["spender"]\ngrants = ["*"]\n' * 2
    assert "auth.clients[1]: 'spiffe://a' is mapped already" in refused(
        "[auth]\nenabled = true\n" + dup + tls, tmp_path
    )
    one = '[[auth.clients]]\nname = "x"\nuri = "spiffe://a"\nroles = ["spender"]\ngrants = ["*"]\n'
    assert "auth.clients: maps client certificates, but no listener verifies them" in refused(
        "[auth]\nenabled = true\n" + one, tmp_path
    )
    bad_grant = (
        '[[auth.clients]]\nname = "x"\nuri = "spiffe://a"\nroles = ["spender"]\ngrants = ["tenant=x"]\n'
    )
    assert "auth.clients[0].grants[0]: unknown scope 'tenant'" in refused(
        "[auth]\nenabled = true\n" + bad_grant + tls, tmp_path
    )


def test_a_listener_allowed_to_serve_anyone_off_loopback_is_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from collector_processor.api.server import create_sidecar

    config = parse_config(
        f'[server]\nlisten = "0.0.0.0:0"\nallow_unauthenticated = true\ngrace_seconds = 0\n'
        f'[store]\npath = "{tmp_path / "l.db"}"\n[alerts]\notel_logs = false\n',
        source="s.toml",
    )
    with caplog.at_level("WARNING", logger="paymaster.sidecar.auth"):
        sidecar = create_sidecar(config)
    try:
        gauges = sidecar.metrics.snapshot().gauges["paymaster_listener_unauthenticated"]
        assert gauges == {(("listener", "server.listen"),): 1}
        assert "server.listen: 0.0.0.0:0 serves callers without credentials" in caplog.text
    finally:
        sidecar.stop(0)
