"""``paymaster sidecar`` says on its first line every port it opened — the budget API over gRPC and
over HTTP/JSON, OTLP/gRPC, OTLP/HTTP, /metrics — with its transport and whether callers authenticate, and the store; and every
relative path in its config file is read from the file's folder, ``store.path`` included."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.certs import Authority
from tests.sidecar.auth.conftest import tokens_toml
from tests.sidecar.otlp.conftest import PRICES

pytestmark = pytest.mark.slow


def first_lines(config: Path | None, cwd: Path, count: int) -> list[str]:
    """Start ``paymaster sidecar [--config config]`` in ``cwd``, read ``count`` lines, stop it."""
    args = ["--config", str(config)] if config is not None else ["--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "paymaster.cli", "sidecar", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    watchdog = threading.Timer(60, process.kill)  # a sidecar that never prints ends the reading
    watchdog.start()
    try:
        while len(lines) < count and (line := process.stdout.readline()):
            lines.append(line.rstrip("\n"))
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert len(lines) == count, f"exit {process.returncode}: {lines} {err}"
    return lines


def test_the_first_line_names_every_listener_its_security_and_the_store(tmp_path: Path) -> None:
    folder, elsewhere = tmp_path / "etc", tmp_path / "run"
    folder.mkdir()
    elsewhere.mkdir()
    ca = Authority()
    ca.write(folder, "ca")
    ca.server().write(folder, "server")
    (folder / "tokens.toml").write_text(tokens_toml())
    (folder / "prices.toml").write_text(PRICES)
    # Every path relative: the TLS files, the tokens, the price file and the store, all in etc/.
    config = folder / "sidecar.toml"
    config.write_text(
        """
        [server]
        listen = "127.0.0.1:0"
        [auth]
        enabled = true
        tokens_file = "tokens.toml"
        [store]
        path = "ledger.db"
        [receivers.otlp]
        enabled = true
        grpc_listen = "127.0.0.1:0"
        http_listen = "127.0.0.1:0"
        [receivers.otlp.forward]
        endpoint = "http://127.0.0.1:9"
        [receivers.otlp.tls]
        cert_file = "server.crt"
        key_file = "server.key"
        [receivers.otlp.pricing]
        config = "prices.toml"
        [metrics]
        enabled = true
        listen = "127.0.0.1:0"
        [metrics.tls]
        cert_file = "server.crt"
        key_file = "server.key"
        client_ca_file = "ca.crt"
        [http]
        enabled = true
        listen = "127.0.0.1:0"
        [http.tls]
        cert_file = "server.crt"
        key_file = "server.key"
        """
    )
    line, forwarding = first_lines(config, elsewhere, 2)
    port = r"127\.0\.0\.1:(?!0\b)[0-9]+"
    assert re.fullmatch(
        f"paymaster sidecar listening on {port} \\(budget API, gRPC: plaintext, auth\\); "
        f"OTLP/gRPC on {port} \\(TLS, auth\\); OTLP/HTTP on {port} \\(TLS, auth\\); "
        f"budget API, HTTP/JSON on {port} \\(TLS, auth\\); "
        f"metrics on https://{port}/metrics \\(mutual TLS, no auth\\); "
        f"store: sqlite {re.escape(str((folder / 'ledger.db').resolve()))}",
        line,
    ), line
    assert forwarding == "paymaster sidecar: forwarding OTLP to http://127.0.0.1:9"
    assert (folder / "ledger.db").exists() and not (elsewhere / "ledger.db").exists()


def test_without_a_config_file_the_store_is_in_the_working_directory(tmp_path: Path) -> None:
    (line,) = first_lines(None, tmp_path, 1)
    assert re.fullmatch(
        r"paymaster sidecar listening on 127\.0\.0\.1:[0-9]+ \(budget API, gRPC: plaintext, no auth\); "
        f"store: sqlite {re.escape(str((tmp_path / 'paymaster-sidecar.db').resolve()))}",
        line,
    ), line
