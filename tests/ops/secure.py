"""The deploy/ configs with their secrets in place: deploy/compose/make-secrets.sh run into a folder,
and its files laid out under a root exactly where compose mounts them in each container, so a config
that names /etc/paymaster/tls/tls.crt reads it from <root>/etc/paymaster/tls/tls.crt."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.ops.conftest import DEPLOY, require_tool

COMPOSE = DEPLOY / "compose"
SECRET_FILES = {"ca.crt", "ca.key", "sidecar.crt", "sidecar.key", "admin.token", "collector.token",
                "prometheus.token", "tokens.toml"}  # fmt: skip


def make_secrets(folder: Path) -> Path:
    """Run the compose demo's script into ``folder``."""
    require_tool("openssl")
    done = subprocess.run(
        ["sh", str(COMPOSE / "make-secrets.sh"), str(folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return folder


def compose_mounts() -> dict[str, list[tuple[str, str]]]:
    """Per compose service, its ``./secrets/`` files and where they are mounted."""
    services = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    out: dict[str, list[tuple[str, str]]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./secrets/"):
                out.setdefault(name, []).append((source.removeprefix("./secrets/"), target))
    return out


def lay_out(secrets: Path, root: Path) -> Path:
    """Copy the secrets to ``root`` + each compose mount's path in the container."""
    for mounts in compose_mounts().values():
        for name, target in mounts:
            destination = root / target.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(secrets / name, destination)
    return root


def rooted(text: str, root: Path) -> str:
    """A config's container paths (/etc/...) moved under ``root``."""
    return text.replace('"/etc/', f'"{root}/etc/').replace(" /etc/", f" {root}/etc/")
