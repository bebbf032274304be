"""The dashboards as the tests read them: the generator module and every panel's PromQL."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

from tests.ops.conftest import GRAFANA


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paymaster_grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def variables_in(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([a-zA-Z_]+)", text))
