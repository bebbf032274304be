"""Regenerate the committed gRPC code of the budget API from ``proto/``.

``proto/paymaster/v1/*.proto`` is the single source of truth; the generated modules live in
``sdk/paymaster/v1/`` so that the SDK's client and the sidecar import the same code as
``paymaster.v1.budget_pb2``. Every generated file carries a ``DO NOT EDIT`` header naming its source,
and a test regenerates into a temporary directory and compares, so committed code is never stale.

Usage: ``python -m collector_processor.api.protogen [--out DIR] [--check]``
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["PROTO_ROOT", "generate", "main", "stale_files"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
DEFAULT_OUT = REPO_ROOT / "sdk"
PACKAGE_DIR = Path("paymaster") / "v1"

_HEADER = "# DO NOT EDIT: generated from proto/{source} by `python -m collector_processor.api.protogen`.\n"
_INIT = '''"""Generated code of the Paymaster budget API (package ``paymaster.v1``).

Import the modules explicitly (``from paymaster.v1 import budget_pb2``); importing ``paymaster``
alone never loads them or grpc.
"""
'''


def _proto_sources() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out: Path = DEFAULT_OUT) -> list[Path]:
    """Run protoc on every ``.proto`` file and write ``out/paymaster/v1/*``; return the files written."""
    from grpc_tools import protoc  # only the generator needs grpcio-tools

    sources = _proto_sources()
    if not sources:
        raise SystemExit(f"protogen: no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    target = out / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protogen: protoc failed (see the message above)")
    written = []
    for source in sources:
        stem = source.stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = target / f"{stem}{suffix}"
            _add_header(path, f"{PACKAGE_DIR.as_posix()}/{source.name}")
            written.append(path)
    init = target / "__init__.py"
    init.write_text(_HEADER.format(source=f"{PACKAGE_DIR.as_posix()}/") + _INIT)
    written.append(init)
    return written


def _add_header(path: Path, source: str) -> None:
    # protoc marks _pb2.py and _pb2_grpc.py but not the .pyi stubs; one uniform first line for all
    # lets reviewers and linters recognise generated code at a glance.
    text = path.read_text()
    header = _HEADER.format(source=source)
    if not text.startswith(header):
        path.write_text(header + text)


def stale_files(committed: Path = DEFAULT_OUT) -> list[str]:
    """Regenerate into a temporary directory; return the generated files that differ from ``committed``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            relative = path.relative_to(tmp)
            mine = committed / relative
            if not mine.exists() or not filecmp.cmp(path, mine, shallow=False):
                stale.append(relative.as_posix())
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="root to write paymaster/v1/ under")
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        for name in stale:
            print(f"stale: {name}", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
