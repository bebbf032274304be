"""``python -m collector_processor --config sidecar.toml``: run the budget sidecar (same as ``paymaster sidecar``)."""

from __future__ import annotations

from collector_processor.workers import main

raise SystemExit(main())
