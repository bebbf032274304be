"""The HTTP/JSON API is served by every worker like the gRPC API and the OTLP receivers: on one port
(``SO_REUSEPORT``), over the listener's TLS and only to callers with credentials on each worker; an
alert fired through one worker reaches the HTTP alert streams of every worker at once; the start-up
line is printed once, by the supervisor, with the ports every worker serves."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sidecar.auth.conftest import TOKENS, tokens_toml
from tests.sidecar.auth.test_tls import Pki
from tests.sidecar.conftest import StoreFactory
from tests.sidecar.workers.conftest import Workers, refused_on_a_busy_port, start_workers

pytestmark = pytest.mark.slow

ROOT = {"Authorization": f"Bearer {TOKENS['root']}"}
REQUESTS = "paymaster_http_requests_total"


@pytest.fixture
def http_workers(tmp_path: Path, pki: Pki) -> Iterator[Workers]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml())
    # Alert streams poll the store only twice a minute: what reaches them sooner was relayed.
    running = start_workers(
        StoreFactory(backend="sqlite", path=tmp_path / "ledger.db"),
        tmp_path,
        f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n'
        f'[http]\nenabled = true\nlisten = "127.0.0.1:0"\n[http.tls]\n{pki.tls_block(mutual=False)}\n',
        poll_s=30,
    )
    yield running
    running.close()


def http_port(running: Workers) -> int:
    return int(running.supervisor.config.http.listen.rsplit(":", 1)[1])


def served(running: Workers, status: str | None = None) -> dict[int, float]:
    """HTTP requests answered by each live worker (with ``status``, or any), by slot."""
    out: dict[int, float] = {}
    for slot, counts in running.supervisor.worker_counts().items():
        series = counts.counters.get(REQUESTS, {})
        out[slot] = sum(v for key, v in series.items() if status is None or ("status", status) in key)
    return out


def clients_on_each_worker(running: Workers, pki: Pki) -> dict[int, httpx.Client]:
    """One HTTPS client per worker (a client keeps its connection, so its worker): clients are
    opened until every worker serves one."""
    context = ssl.create_default_context(cadata=pki.ca.pem.decode())
    found: dict[int, httpx.Client] = {}
    spare: list[httpx.Client] = []
    for _ in range(64):
        client = httpx.Client(base_url=f"https://localhost:{http_port(running)}", verify=context, timeout=20)
        before = served(running)
        assert client.get("/v1/budgets", headers=ROOT).status_code == 200
        after = served(running)
        (slot,) = [s for s in after if after[s] > before.get(s, 0)]
        if slot in found:
            spare.append(client)
        else:
            found[slot] = client
        if len(found) == running.supervisor.workers:
            break
    for client in spare:
        client.close()
    assert len(found) == running.supervisor.workers, f"64 connections reached only workers {sorted(found)}"
    return found


def test_every_worker_serves_the_http_api_on_one_port_over_tls_and_only_to_callers_with_credentials(
    http_workers: Workers, pki: Pki
) -> None:
    clients = clients_on_each_worker(http_workers, pki)
    try:
        for client in clients.values():
            assert client.get("/v1/budgets").status_code == 401  # no token
            wrong = {"Authorization": "Bearer pm_nobody_" + "x" * 32}
            assert client.get("/v1/budgets", headers=wrong).status_code == 401
            assert (
                client.post("/v1/check", json={"scopes": {"team": "search"}}, headers=ROOT).status_code == 200
            )
        refused, allowed = served(http_workers, "401"), served(http_workers, "200")
        assert len(refused) == 2 and all(refused[slot] >= 2 for slot in clients), refused
        assert all(allowed[slot] >= 2 for slot in clients), allowed
        with pytest.raises(httpx.HTTPError):  # the port speaks only TLS, on every worker
            httpx.get(f"http://127.0.0.1:{http_port(http_workers)}/healthz", timeout=5)
        # The supervisor's start-up line names the HTTP API on the port every worker serves.
        (line,) = http_workers.supervisor.startup_lines()
        assert f"budget API, HTTP/JSON on 127.0.0.1:{http_port(http_workers)} (TLS, auth)" in line
    finally:
        for client in clients.values():
            client.close()


def test_an_alert_fired_through_one_worker_reaches_the_http_streams_of_every_worker_at_once(
    http_workers: Workers, pki: Pki
) -> None:
    clients = clients_on_each_worker(http_workers, pki)
    try:
        spender = clients[0]
        budget = {"id": "warned", "scope": "team", "scope_id": "search", "limit_usd": "10",
                  "period": "daily", "on_exceed": "warn", "alert_thresholds": [50]}  # fmt: skip
        assert spender.post("/v1/budgets", json=budget, headers=ROOT).status_code == 201
        received: dict[int, list[str]] = {slot: [] for slot in clients}
        positioned = threading.Barrier(len(clients) + 1, timeout=20)

        def watch(slot: int, client: httpx.Client) -> None:
            with client.stream("GET", "/v1/alerts/stream", headers=ROOT) as stream:
                lines = stream.iter_lines()
                assert next(lines) == ": positioned"
                positioned.wait()
                for text in lines:
                    if text.startswith("data: "):
                        received[slot].append(text)
                        return

        watchers = [threading.Thread(target=watch, args=item) for item in clients.items()]
        for watcher in watchers:
            watcher.start()
        positioned.wait()
        reservation = spender.post(
            "/v1/reservations", json={"scopes": {"team": "search"}, "estimate_usd": "6"}, headers=ROOT
        ).json()
        committed = spender.post(
            f"/v1/reservations/{reservation['reservation_id']}/commit", json={"actual_usd": "6"}, headers=ROOT
        )
        assert committed.status_code == 200, committed.text
        for watcher in watchers:
            watcher.join(25)
        for slot, events in received.items():
            assert len(events) == 1 and '"threshold_percent":50' in events[0], (slot, received)
    finally:
        for client in clients.values():
            client.close()


def test_the_start_up_line_is_printed_once_by_the_supervisor_with_every_port_the_workers_serve(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nworkers = 2\ngrace_seconds = 1\n[store]\npath = "{db}"\n'
        '[http]\nenabled = true\nlisten = "127.0.0.1:0"\n'
        '[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n[alerts]\notel_logs = false\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "paymaster.cli", "sidecar", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    try:
        match = re.search(r"budget API, HTTP/JSON on 127\.0\.0\.1:(\d+) \(plaintext, no auth\)", first)
        assert match is not None, first
        port = int(match.group(1))
        assert port != 0
        for _ in range(8):  # new connections, whichever worker takes them
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert re.search(
            r"listening on 127\.0\.0\.1:[1-9]\d* \(budget API, gRPC: plaintext, no auth\)", first
        )
        assert re.search(r"metrics on http://127\.0\.0\.1:[1-9]\d*/metrics", first)
        assert f"store: sqlite {db.resolve()}; 2 worker processes" in first
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    printed = [first, *rest.splitlines()]
    assert sum("listening on" in line for line in printed) == 1, printed


def test_an_http_port_in_use_stops_the_sidecar_naming_its_key_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    message, busy, supervisor = refused_on_a_busy_port(
        lambda busy: (
            f'[server]\nlisten = "127.0.0.1:0"\nworkers = 2\n[store]\npath = "{tmp_path / "ledger.db"}"\n'
            f'[http]\nenabled = true\nlisten = "127.0.0.1:{busy}"\n'
        )
    )
    assert message.startswith(f"sidecar.toml: http.listen: cannot serve on 127.0.0.1:{busy}: ")
    assert supervisor.pids() == {}
    assert not (tmp_path / "ledger.db").exists()
