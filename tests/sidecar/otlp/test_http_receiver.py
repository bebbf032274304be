"""What one OTLP/HTTP client can hold is bounded: connections beyond the cap are answered 503 at once,
a slow or half-sent request loses its connection after its deadline, and a client that goes away is
one counted log line, never a traceback. Real sockets against a real sidecar on loopback."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager

import pytest

from tests.sidecar.otlp.conftest import OtlpSidecar, eventually
from tests.sidecar.otlp.payloads import export, span
from tests.sidecar.otlp.test_bad_input import GOOD, assert_still_serving, charged, message, post

DISCONNECTS = "paymaster_otlp_http_disconnects_total"
REFUSED = "paymaster_otlp_http_connections_refused_total"
HALF_SENT = (
    b"POST /v1/traces HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-protobuf\r\n"
    b"Content-Length: 100000\r\n\r\nten bytes!"
)


def connect(running: OtlpSidecar) -> socket.socket:
    host, port = running.receiver.http.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    parts = []
    while True:
        try:
            got = sock.recv(65536)
        except ConnectionResetError:
            break
        if not got:
            break
        parts.append(got)
    return b"".join(parts)


@contextmanager
def held(running: OtlpSidecar, count: int) -> Iterator[list[socket.socket]]:
    sockets = [connect(running) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_connections_beyond_the_cap_are_answered_503_at_once_and_threads_stay_bounded(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(otlp="http_max_connections = 4")
    threads_before = threading.active_count()
    with held(running, 40) as sockets:
        for sock in sockets:
            sock.sendall(HALF_SENT)
        eventually(lambda: running.counter(REFUSED) == 36)
        # Four connections wait for their bodies, each on its own thread; the rest were refused.
        assert threading.active_count() - threads_before <= 4
        answers = [read_to_end(sock) for sock in sockets[4:]]
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in head
        assert message(body) == (
            "all 4 OTLP/HTTP connections are in use (receivers.otlp.http_max_connections); retry"
        )
    eventually(lambda: threading.active_count() <= threads_before)
    assert_still_serving(running)


def test_a_request_that_does_not_arrive_whole_in_time_loses_its_connection_even_if_it_trickles(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(otlp="http_request_timeout_seconds = 0.5")
    with closing(connect(running)) as stalled, closing(connect(running)) as trickling:
        stalled.sendall(HALF_SENT)
        trickling.sendall(b"POST /v1/traces HTTP/1.1\r\n")
        # One header byte every 50 ms: each read is quick, the request as a whole never ends.
        sent = 0
        for _ in range(400):
            try:
                trickling.sendall(b"X")
            except OSError:
                break
            sent += 1
            time.sleep(0.05)
            if running.counter(DISCONNECTS, reason="timeout") == 2:
                break
        assert read_to_end(stalled) == b""
        assert read_to_end(trickling) == b""
    assert running.counter(DISCONNECTS, reason="timeout") == 2
    assert sent < 400
    assert_still_serving(running)


def test_an_idle_keep_alive_connection_is_closed_quietly_after_the_idle_timeout(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar(otlp="http_idle_timeout_seconds = 0.2")
    with closing(connect(running)) as idle:
        assert read_to_end(idle) == b""
    assert running.counter(DISCONNECTS) == 0


def test_a_client_that_goes_away_before_its_answer_is_one_counted_line_not_a_traceback(
    otlp_sidecar: Callable[..., OtlpSidecar],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    running = otlp_sidecar()
    body = export([span(GOOD)]).SerializeToString()
    request = (
        b"POST /v1/traces HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-protobuf\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    caplog.set_level(logging.INFO, logger="paymaster.sidecar.otlp")
    for _ in range(5):
        sock = connect(running)
        sock.sendall(request)
        # Close with a reset at once, as a client killed mid-export does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    eventually(lambda: running.counter(DISCONNECTS, reason="closed") == 5)
    lines = [
        r for r in caplog.records if r.name == "paymaster.sidecar.otlp" and "went away" in r.getMessage()
    ]
    assert len(lines) == 5
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    assert "Traceback" not in capfd.readouterr().err
    assert (
        charged(running) == "0.012500"
    )  # the spend was charged once; the client's retry is not charged again


def test_a_negative_chunk_size_is_refused_not_read_to_the_end(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()
    with closing(connect(running)) as sock:
        sock.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-protobuf\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n-1\r\nmore and more"
        )
        head, _, body = read_to_end(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert message(body) == "malformed chunked body"
    assert_still_serving(running)


def test_the_413_for_a_body_that_inflates_past_the_limit_reads_correctly(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    import gzip

    running = otlp_sidecar(extra="[receivers.otlp.charging]\nmax_message_bytes = 4096")
    bomb = gzip.compress(b"\x00" * 1_000_000)
    status, body, _ = post(running, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert status == 413
    assert message(body) == (
        "the export is larger than the 4,096 bytes this receiver accepts "
        "(receivers.otlp.charging.max_message_bytes); send smaller batches"
    )


def test_stopping_closes_idle_keep_alive_connections_instead_of_waiting_for_them(
    otlp_sidecar: Callable[..., OtlpSidecar],
) -> None:
    running = otlp_sidecar()  # idle connections may wait 60 s for their next request
    with closing(connect(running)) as idle:
        stopping = threading.Thread(target=running.receiver.http.stop, args=(30.0,))
        stopping.start()
        stopping.join(10)
        assert not stopping.is_alive(), "the stop waited on an idle connection"
        assert read_to_end(idle) == b""
    assert running.counter(DISCONNECTS) == 0
