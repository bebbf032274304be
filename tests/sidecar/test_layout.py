"""The sidecar keeps its shape: every folder imports only from folders below it, never upward.

The house, from the top: the supervisor of worker processes and the process entry point (``workers``), the budget API receiver and the factory that wires a sidecar (``api``), the
config that composes every section (``config``), the OTLP receiver (``otlp``), the sidecar's own
telemetry (``telemetry``), authentication and authorization (``auth``), the ledger (``ledger``), alert delivery (``alerts``), the stores
(``store``), the vocabulary and rules (``domain``) and the errors (``errors``). The imports of every
module are read with ``ast`` (function-level and type-checking imports included) and checked
against that order; the SDK is reached only through its public modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import collector_processor

PACKAGE = Path(collector_processor.__file__).resolve().parent
ROOT = "collector_processor"

LAYERS: tuple[str, ...] = (
    "workers",
    "api",
    "config",
    "otlp",
    "telemetry",
    "auth",
    "ledger",
    "alerts",
    "store",
    "domain",
    "errors",
)
"""Folders (and top-level modules) from the top of the house to its ground."""

ENTRY = frozenset({"__init__", "__main__"})
"""The package's own entry points, above every layer."""


def room_of(module: str) -> str:
    """The first name under ``collector_processor`` (``store`` for ``collector_processor.store.redis``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"] or ["__init__"]
    return ".".join([ROOT, *parts]) if parts != ["__init__"] else ROOT


def imported_modules(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """Every module ``source`` imports, with its line, relative imports resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from collector_processor import convert`` imports a module, not only a name.
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What in ``source`` (the text of ``module``) breaks the house's import rules."""
    room = room_of(module)
    problems: list[str] = []
    reported: set[tuple[int, str]] = set()
    for line, target in imported_modules(source, module, is_package=is_package):
        if target.startswith("paymaster."):
            private = [p for p in target.split(".")[1:] if p.startswith("_") and not p.endswith("__")]
            if private and (line, "paymaster") not in reported:
                reported.add((line, "paymaster"))
                problems.append(f"{module}:{line}: imports the SDK's private module {target}")
            continue
        if not target.startswith(ROOT + ".") or room in ENTRY:
            continue
        other = room_of(target)
        if other not in LAYERS or other == room:
            continue
        if LAYERS.index(other) < LAYERS.index(room) and (line, other) not in reported:
            reported.add((line, other))
            problems.append(f"{module}:{line}: {room}/ imports {target}, which is above it ({other}/)")
    return problems


def test_every_folder_imports_only_from_folders_below_it() -> None:
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        problems += violations(path.read_text(), module, is_package=path.name == "__init__.py")
    assert problems == []


def test_every_module_lives_in_a_known_room() -> None:
    """A new top-level module or folder must be given its place in ``LAYERS`` (and in docs/architecture.md)."""
    rooms = {room_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert rooms - set(LAYERS) - ENTRY == set()


def test_an_upward_import_is_caught() -> None:
    store_importing_the_ledger = "from collector_processor.ledger import Ledger\n"
    assert violations(store_importing_the_ledger, "collector_processor.store.sqlite.store") == [
        "collector_processor.store.sqlite.store:1: store/ imports collector_processor.ledger, "
        "which is above it (ledger/)"
    ]


def test_a_function_level_or_relative_upward_import_is_caught() -> None:
    lazy = "def f():\n    from collector_processor.api import server\n"
    assert violations(lazy, "collector_processor.domain.money") == [
        "collector_processor.domain.money:2: domain/ imports collector_processor.api, which is above it (api/)"
    ]
    relative = "from ..ledger import Ledger\n"
    assert violations(relative, "collector_processor.store.shared") == [
        "collector_processor.store.shared:1: store/ imports collector_processor.ledger, "
        "which is above it (ledger/)"
    ]
    from_the_root = "from collector_processor import config\n"
    assert violations(from_the_root, "collector_processor.otlp.receiver") == [
        "collector_processor.otlp.receiver:1: otlp/ imports collector_processor.config, "
        "which is above it (config/)"
    ]


def test_the_domain_imports_nothing_but_itself_and_errors() -> None:
    allowed = {"domain", "errors"}
    for path in sorted((PACKAGE / "domain").rglob("*.py")):
        module = module_name(path)
        for line, target in imported_modules(path.read_text(), module, is_package=path.name == "__init__.py"):
            if target.startswith(ROOT + "."):
                assert room_of(target) in allowed, f"{module}:{line} imports {target}"


def test_the_sdk_is_reached_only_through_public_modules() -> None:
    assert violations("from paymaster._money import to_micros\n", "collector_processor.domain.money") == [
        "collector_processor.domain.money:1: imports the SDK's private module paymaster._money"
    ]
