"""The repository's front door: ``./dev`` and the package metadata a newcomer's first install reads."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "dev"), *args], capture_output=True, text=True, timeout=60)


def test_dev_help_lists_the_verbs_and_nothing_of_the_script_itself() -> None:
    done = dev("help")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("The few verbs a newcomer needs")
    assert [line.split()[0] for line in lines[1:]] == ["./dev"] * (len(lines) - 1)
    assert "set -euo" not in done.stdout
    assert dev().stdout == done.stdout, "no verb is help"


def test_an_unknown_verb_is_named_and_exits_2_with_the_list() -> None:
    done = dev("foo")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "dev: unknown command 'foo'"
    assert "./dev test" in done.stderr and done.stdout == ""


def test_the_license_is_an_spdx_expression_as_setuptools_asks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
