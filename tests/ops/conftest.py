"""Helpers for the ops tests: the repository's deploy/ and grafana/ trees, and the real tools they need.

A tool that is missing skips its test on a developer's machine but fails it under ``CI=true``: CI
installs them (``.ci/run``), so a missing one there is a broken setup, not a reason to pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GRAFANA = ROOT / "grafana"


def require_tool(name: str) -> str:
    """The path of the executable ``name``; skip (fail under CI) if it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
