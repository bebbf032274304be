"""The committed gRPC code is generated from proto/, up to date, and matched exactly by the servicer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from collector_processor.api.protogen import DEFAULT_OUT, stale_files
from collector_processor.api.servicer import BudgetServicer
from paymaster.v1 import budget_pb2, budget_pb2_grpc

GENERATED = DEFAULT_OUT / "paymaster" / "v1"


def test_committed_generated_code_matches_a_fresh_generation() -> None:
    """Regenerating into a temporary directory yields byte-identical files: nobody edited them, nobody forgot `./dev proto`."""
    assert stale_files() == [], "run `./dev proto` and commit the result"


def test_every_generated_file_says_do_not_edit() -> None:
    files = sorted(GENERATED.glob("*.py*"))
    assert {f.name for f in files} >= {"__init__.py", "budget_pb2.py", "budget_pb2.pyi", "budget_pb2_grpc.py"}
    for path in files:
        assert path.read_text().startswith("# DO NOT EDIT"), path


def test_servicer_implements_exactly_the_rpcs_the_proto_declares() -> None:
    declared = {m.name for m in budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].methods}
    generated_base = {n for n in vars(budget_pb2_grpc.BudgetServiceServicer) if not n.startswith("_")}
    implemented = {n for n in vars(BudgetServicer) if n in generated_base or n[0].isupper()}
    assert declared == generated_base
    assert implemented == declared


def test_importing_paymaster_loads_neither_grpc_nor_the_generated_code() -> None:
    code = (
        "import sys, paymaster, paymaster.cli; "
        "bad = [m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'paymaster.v1', 'collector_processor'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
