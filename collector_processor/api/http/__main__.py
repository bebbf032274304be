"""``python -m collector_processor.api.http [--write-openapi]``: print the HTTP API's OpenAPI document,
or write it to docs/openapi.json (after changing an endpoint or a body model)."""

from __future__ import annotations

import argparse

from collector_processor.api.http import ENDPOINTS
from collector_processor.api.http.openapi import COMMITTED, document, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector_processor.api.http")
    parser.add_argument("--write-openapi", action="store_true", help=f"write {COMMITTED.name} in docs/")
    args = parser.parse_args(argv)
    text = render(document(ENDPOINTS))
    if args.write_openapi:
        COMMITTED.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
