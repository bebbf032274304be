"""A sidecar with ``[auth]`` on and one bootstrap token per role, all limited to team ``search`` but
a ``root`` admin that may do everything (to set up what the tests then try)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector_processor.domain.clock import ManualClock
from tests.sidecar.conftest import RunningSidecar, StoreFactory, start_sidecar

ROLES = ("admin", "spender", "reader", "ingester")
TOKENS = {role: f"test-{role}-token-{'x' * 24}" for role in ROLES} | {"root": "test-root-token-" + "r" * 24}


def tokens_toml() -> str:
    entries = [
        f'[[tokens]]\nname = "{role}"\ntoken = "{TOKENS[role]}"\nroles = ["{role}"]\ngrants = ["team=search", "user=*"]\n'
        for role in ROLES
    ]
    entries.append(
        f'[[tokens]]\nname = "root"\ntoken = "{TOKENS["root"]}"\nroles = ["admin", "reader", "spender"]\ngrants = ["*"]\n'
    )
    return "\n".join(entries)


def bearer(who: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[who]}")] if who in TOKENS else []


@dataclass
class Caller:
    """Calls the budget API as one principal (``none``: without credentials)."""

    running: RunningSidecar
    who: str

    def __call__(self, method: str, request: Any, **kwargs: Any) -> Any:
        return getattr(self.running.stub, method)(request, metadata=bearer(self.who), timeout=10, **kwargs)


def start_authed(
    backing: StoreFactory, clock: ManualClock, tmp: Path, extra_toml: str = ""
) -> RunningSidecar:
    tokens = tmp / "tokens.toml"
    tokens.write_text(tokens_toml())
    return start_sidecar(
        backing,
        clock,
        f'[auth]\nenabled = true\ntokens_file = "{tokens}"\nrefresh_seconds = 0.05\n{extra_toml}',
    )


@pytest.fixture
def authed(backing: StoreFactory, clock: ManualClock, tmp_path: Path) -> Iterator[RunningSidecar]:
    running = start_authed(backing, clock, tmp_path)
    yield running
    running.channel.close()
    running.sidecar.stop(0)


@pytest.fixture
def as_(authed: RunningSidecar) -> Callable[[str], Caller]:
    return lambda who: Caller(authed, who)
