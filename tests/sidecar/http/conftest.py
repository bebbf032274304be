"""A real sidecar with its HTTP API on a free loopback port, with or without ``[auth]``, on both
stores; and a small client that calls it as one of the test principals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector_processor.api.http import HttpApi
from collector_processor.domain.clock import ManualClock
from tests.sidecar.auth.conftest import TOKENS, start_authed
from tests.sidecar.conftest import START, RunningSidecar, StoreFactory, start_sidecar

HTTP_ON = '[http]\nenabled = true\nlisten = "127.0.0.1:0"\n'


def http_api(running: RunningSidecar) -> HttpApi:
    return next(c for c in running.sidecar.components if isinstance(c, HttpApi))


def base_url(running: RunningSidecar) -> str:
    api = http_api(running)
    return f"{'https' if api.tls is not None else 'http'}://{api.address}"


def headers(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"} if who in TOKENS else {}


@dataclass
class Http:
    """Calls the HTTP API as one principal (``none``: without credentials)."""

    running: RunningSidecar
    who: str = "root"

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        extra = kwargs.pop("headers", {})
        with httpx.Client(base_url=base_url(self.running), timeout=10) as client:
            return client.request(method, path, headers={**headers(self.who), **extra}, **kwargs)


def start_http(backing: StoreFactory, tmp: Path, *, auth: bool = True, extra: str = "") -> RunningSidecar:
    clock = ManualClock(START)
    if auth:
        return start_authed(backing, clock, tmp, HTTP_ON + extra)
    return start_sidecar(backing, clock, HTTP_ON + extra)


@pytest.fixture
def http_sidecar(backing: StoreFactory, tmp_path: Path) -> Iterator[RunningSidecar]:
    """A sidecar with ``[auth]`` on and the test principals' tokens, HTTP on."""
    running = start_http(backing, tmp_path)
    yield running
    running.channel.close()
    running.sidecar.stop(0)
