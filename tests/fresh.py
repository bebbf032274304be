"""Run code in a fresh interpreter: for what only a clean process shows, such as which modules load."""

from __future__ import annotations

import subprocess
import sys


def loads_pricing_library(code: str) -> bool:
    """Whether ``code``, run in a fresh interpreter, leaves genai-prices imported (it must not be
    imported before ``code`` runs)."""
    probe = (
        f"import sys\nassert 'genai_prices' not in sys.modules\n{code}\nprint('genai_prices' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def loads_module(code: str, module: str) -> bool:
    """Whether ``code``, run in a fresh interpreter, leaves ``module`` imported."""
    probe = f"import sys\n{code}\nprint({module!r} in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip().splitlines()[-1] == "True"
