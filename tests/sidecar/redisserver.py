"""A real ``redis-server`` on a free loopback port with its own directory, for tests that need Redis.

Under ``CI=true`` a missing ``redis-server`` fails the tests that need it (``.ci/run`` installs it);
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "require_redis_server"]


def require_redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; .ci/run installs it, so CI must not skip these tests")
        pytest.skip(message)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` in a child process; ``stop()`` and ``start()`` again keep the port (an outage)."""

    def __init__(self, directory: Path, *, extra: tuple[str, ...] = (), conf: Path | None = None) -> None:
        self.exe = require_redis_server()
        self.conf = conf
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        for _ in range(5):  # another process may take a free port before redis-server binds it
            if not self.port:
                self.port = _free_port()
            self.proc = subprocess.Popen(
                [self.exe, *([str(self.conf)] if self.conf else []), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 *([] if self.conf else ["--save", "", "--appendonly", "no"]), "--protected-mode", "yes",
                 "--logfile", "redis.log", *self.extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if self._wait_ready():
                return self
            self.proc.kill()
            self.proc.wait(10)
            self.port = 0
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def _wait_ready(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
