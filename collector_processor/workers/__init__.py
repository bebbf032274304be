"""A sidecar of several worker processes on the same ports: ``server.workers = N`` (or ``"auto"``).

The sidecar's process entry point lives here, above the single-process factory in ``api``: ``run``
serves a configuration in one process when ``server.workers`` resolves to 1, and otherwise starts a
``Supervisor`` of that many workers. ``main`` and ``run_from_args`` are what ``paymaster sidecar`` and
``python -m collector_processor`` call. docs/sidecar.md ("Worker processes") describes the model and
its sizing.

A listener every worker serves is named in one place: ``Supervisor._hold_ports`` holds its port, and
the worker's share of ``api.server.create_sidecar`` starts it with ``reuse_port`` set.
"""

from __future__ import annotations

import argparse
import signal
import threading

from collector_processor.api import server
from collector_processor.config import SidecarConfig
from collector_processor.workers.cores import usable_cores, worker_count
from collector_processor.workers.supervisor import RESTARTS, SERVING, Supervisor

__all__ = [
    "RESTARTS",
    "SERVING",
    "Supervisor",
    "main",
    "run",
    "run_from_args",
    "usable_cores",
    "worker_count",
]


def run(config: SidecarConfig) -> int:
    """Run the sidecar ``config`` describes until SIGTERM or SIGINT; print where it listens."""
    workers = worker_count(config)
    if workers == 1:
        return server.run(config)
    supervisor = Supervisor(config, workers=workers).start()
    for line in supervisor.startup_lines():
        print(line, flush=True)

    def shutdown(signum: int, frame: object) -> None:
        threading.Thread(target=supervisor.stop, name="paymaster-shutdown").start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    supervisor.wait()
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    return server.run_from_args(args, serve=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="paymaster sidecar", description="Run the Paymaster budget sidecar."
    )
    server.add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
