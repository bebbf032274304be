"""The Paymaster sidecar: a gRPC budget service holding live spend per scope and period.

Built like an OpenTelemetry Collector component: ``SidecarConfig`` (validated from TOML, with
``create_default_config()``), and ``create_sidecar(config)`` the factory that wires the budget API
receiver to the ``Ledger``, its ``LedgerStore`` (``SqliteStore`` by default) and the alert exporters.
Run it with ``paymaster sidecar --config sidecar.toml``.

Names are loaded on first use, so that ``python -m collector_processor.api.protogen`` works even before
the generated code it writes exists.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Ledger",
    "LedgerSettings",
    "LedgerStore",
    "ManualClock",
    "Sidecar",
    "SidecarConfig",
    "SqliteStore",
    "SystemClock",
    "create_default_config",
    "create_sidecar",
    "load_config",
]

_WHERE = {
    "Ledger": "collector_processor.ledger",
    "LedgerSettings": "collector_processor.ledger",
    "LedgerStore": "collector_processor.store",
    "SqliteStore": "collector_processor.store",
    "ManualClock": "collector_processor.domain.clock",
    "SystemClock": "collector_processor.domain.clock",
    "Sidecar": "collector_processor.api.server",
    "create_sidecar": "collector_processor.api.server",
    "SidecarConfig": "collector_processor.config",
    "create_default_config": "collector_processor.config",
    "load_config": "collector_processor.config",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'collector_processor' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
