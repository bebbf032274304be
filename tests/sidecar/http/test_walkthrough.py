"""docs/http.md's curl walk-through, run as written against a real sidecar: every ``sh walkthrough``
block in order, in one shell, each answer compared with the one the page shows after it.

Shown JSON is compared by its keys: every key shown must be there with the value shown (``…``
stands for anything); lists must have the shown length. Shown text must match line by line, ``…``
again standing for the rest of a line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar.conftest import RunningSidecar, StoreFactory
from tests.sidecar.http.conftest import TOKENS, base_url, start_http

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[3] / "docs" / "http.md"
_BLOCK = re.compile(r"```(\w+)( walkthrough)?\n(.*?)```", re.S)


def steps() -> list[tuple[str, str | None, str | None]]:
    """``(commands, kind of the answer shown, answer shown)`` for every walk-through block."""
    out: list[tuple[str, str | None, str | None]] = []
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        kind, walk, text = match.groups()
        if walk:
            out.append((text, None, None))
        elif out and out[-1][1] is None and kind in ("json", "text"):
            out[-1] = (out[-1][0], kind, text)
    return out


def like(shown: Any, got: Any, where: str = "answer") -> None:
    if shown == "…":
        return
    if isinstance(shown, dict):
        assert isinstance(got, dict), f"{where}: {got!r}"
        for key, value in shown.items():
            assert key in got, f"{where}.{key} is missing from {got!r}"
            like(value, got[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), f"{where}: {got!r}"
        for i, (a, b) in enumerate(zip(shown, got, strict=True)):
            like(a, b, f"{where}[{i}]")
    else:
        assert shown == got, f"{where}: shown {shown!r}, got {got!r}"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[RunningSidecar]:
    running = start_http(StoreFactory(backend="sqlite", path=tmp_path / "ledger.db"), tmp_path)
    yield running
    running.channel.close()
    running.sidecar.stop(0)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_walkthrough_runs_and_answers_as_shown(live: RunningSidecar) -> None:
    walk = steps()
    assert len(walk) >= 10
    script = ["set -euo pipefail"]
    for i, (commands, _, _) in enumerate(walk):
        script += [commands, f"echo; echo '@@step {i}@@'"]
    env = {**os.environ, "PAYMASTER_HTTP": base_url(live), "TOKEN": TOKENS["root"]}
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    outputs = re.split(r"\n?@@step \d+@@\n", done.stdout)
    for (commands, kind, shown), got in zip(walk, outputs, strict=False):
        got = got.strip()
        if kind == "json":
            assert shown is not None
            like(json.loads(shown), json.loads(got), commands.splitlines()[0][:60])
        elif kind == "text":
            assert shown is not None
            for want, line in zip(shown.strip().splitlines(), got.splitlines(), strict=True):
                assert re.fullmatch(re.escape(want).replace("…", ".*"), line), (want, line)
