"""One worker process: ``python -m collector_processor.workers.worker FD``, started by the supervisor.

It reads its configuration from the channel (``link``), builds the worker's share of the sidecar
(``Share.worker``: the budget API over gRPC with health and reflection, the OTLP receivers and the
HTTP API, on ports shared with the other workers, with the same ``[auth]``, TLS and gates), says it
is ready (with where its OTLP receivers forward, for the start-up line), and then answers the
supervisor until it is told to stop, its supervisor is gone, or it receives SIGTERM; then it drains
(``server.grace_seconds``) and exits. SIGINT is the supervisor's to act on (a terminal sends
it to the whole process group), so a worker ignores it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from collector_processor.api.server import Share, Sidecar, create_sidecar
from collector_processor.config import SidecarConfig
from collector_processor.workers.link import Link
from paymaster.exceptions import ConfigError

__all__ = ["main"]

log = logging.getLogger("paymaster.sidecar.worker")


class Worker:
    """The worker's side of the channel, around its ``Sidecar``."""

    def __init__(self, link: Link, config: SidecarConfig, index: int) -> None:
        self.link = link
        self.config = config
        self.index = index
        self.sidecar: Sidecar | None = None
        self._stopped = False
        self._terminated = False

    def start(self) -> bool:
        share = Share.worker(on_alert=self._alerts_fired, on_tokens=self._tokens_changed)
        try:
            self.sidecar = create_sidecar(self.config, share=share).start()
        except ConfigError as exc:
            self.link.send("failed", str(exc))
            return False
        except Exception as exc:  # anything else a start can meet: said to the supervisor, not swallowed
            log.exception("worker %d could not start", self.index)
            self.link.send("failed", f"worker {self.index} could not start: {exc}")
            return False
        components = self.sidecar.components
        onward = [o for component in components for o in getattr(component, "onward", list)()]
        self.link.send("ready", os.getpid(), onward)
        return True

    def _alerts_fired(self) -> None:
        self.link.send("alerts")

    def _tokens_changed(self) -> None:
        self.link.send("tokens")

    def serve(self) -> None:
        """Answer the supervisor until told to stop or the channel closes."""
        grace = self.config.server.grace_seconds
        while True:
            try:
                message = self.link.recv()
            except EOFError:
                if not self._terminated:
                    log.warning("worker %d: the supervisor is gone; stopping", self.index)
                break
            kind = message[0]
            if kind == "stop":
                grace = float(message[1])
                break
            self.handle(kind, message[1:])
        self.stop(grace)

    def handle(self, kind: str, args: tuple[object, ...]) -> None:
        sidecar = self.sidecar
        assert sidecar is not None
        if kind == "snapshot":
            self.link.send("snapshot", args[0], self.counts())
        elif kind == "alerts":
            sidecar.notify_alerts()
        elif kind == "tokens":
            sidecar.security.refresh()

    def counts(self) -> object:
        """This worker's counts, with the alerts it fired looked up (off the request path)."""
        sidecar = self.sidecar
        assert sidecar is not None
        try:
            sidecar.exporters.service.resolve_alerts(sidecar.store)
        except Exception:  # the store is away: the alerts are counted at the next snapshot
            log.debug("could not read fired alerts for metrics", exc_info=True)
        return sidecar.metrics.snapshot()

    def stop(self, grace_s: float) -> None:
        """Drain, send the last counts, close."""
        if self._stopped:
            return
        self._stopped = True
        if self.sidecar is not None:
            self.sidecar.stop(grace_s)
            self.link.send("snapshot", None, self.counts())
        self.link.close()

    def terminate(self) -> None:
        """SIGTERM (run between two bytecodes of the main thread): leave ``serve``'s loop, which drains."""
        self._terminated = True
        self.link.stop_reading()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    link = Link.from_fd(int(args[0]))
    try:
        kind, config, index = link.recv()
    except (EOFError, ValueError):
        return 2
    if kind != "start" or not isinstance(config, SidecarConfig):
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(link, config, index)
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.terminate())
    if not worker.start():
        return 2
    worker.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
