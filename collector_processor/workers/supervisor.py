"""The supervisor of a sidecar's worker processes (``server.workers`` > 1).

``Supervisor(config, workers=N).start()``:

1. holds every port the workers will share (``PortHold``: the budget API over gRPC and over HTTP,
   OTLP/gRPC, OTLP/HTTP), so that a port in use stops the sidecar before anything starts, naming its
   key;
2. runs the host's share of the sidecar in its own process (``Share.for_host``): it opens the store
   first (creating the SQLite file and schema), loads the config's budgets, and from then on sweeps,
   dispatches alerts, serves the one ``/metrics`` and pushes metrics — each once for the host;
3. starts N workers (``python -m collector_processor.workers.worker``), each serving every listener
   on those ports with ``SO_REUSEPORT`` over the same store, and waits until all are ready (a worker
   that cannot start stops the sidecar with its reason).

While running, it relays between workers what must reach all of them (alerts fired, so every
WatchAlerts stream sees them at once; tokens issued or revoked, so every worker honours them at once)
and, when ``/metrics`` is scraped, asks every worker for its counts and serves their sum
(``telemetry.aggregate``). A worker that dies is logged, counted
(``paymaster_worker_restarts_total``) and replaced, after a pause that doubles while replacements
keep dying; its last counts stay in the sum, so no counter ever goes back. While no worker serves,
``NotServing`` answers on the budget API's port (health ``NOT_SERVING``). ``stop`` tells every worker
to drain (``server.grace_seconds``), kills any that outlives the grace period, and closes the host's
share last.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import wait
from typing import Any

from collector_processor.api.server import Share, Sidecar, create_sidecar
from collector_processor.api.startup import lines
from collector_processor.config import SidecarConfig
from collector_processor.domain.clock import Clock
from collector_processor.telemetry.aggregate import Caps, merge
from collector_processor.telemetry.selfmetrics import MetricsSnapshot
from collector_processor.workers.fallback import NotServing
from collector_processor.workers.link import Link, pair
from collector_processor.workers.ports import PortHold
from paymaster.exceptions import ConfigError

__all__ = ["RESTARTS", "SERVING", "Supervisor"]

log = logging.getLogger("paymaster.sidecar.supervisor")

RESTARTS = "paymaster_worker_restarts_total"
SERVING = "paymaster_workers_serving"
_START_TIMEOUT_S = 120.0
_SNAPSHOT_TIMEOUT_S = 2.0
_MAX_RESTART_DELAY_S = 10.0
_STEADY_S = 30.0
"""A worker that lived this long resets the pause before the next replacement."""


class _Worker:
    """One worker process (one incarnation of a slot)."""

    def __init__(self, slot: int, proc: subprocess.Popen[bytes], link: Link) -> None:
        self.slot = slot
        self.proc = proc
        self.link = link
        self.ready = False
        self.started = time.monotonic()
        self.counts: MetricsSnapshot | None = None
        self.answered: int | None = None
        self.onward: list[str] = []
        """Where its OTLP receivers forward what they receive."""

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """See the module docstring. ``clock`` and ``logger_provider`` are for the host's share (tests);
    ``restart_delay_s`` is the first pause before a dead worker is replaced."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        workers: int,
        clock: Clock | None = None,
        logger_provider: Any = None,
        restart_delay_s: float = 0.1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.config = config
        self.workers = workers
        self._clock = clock
        self._logger_provider = logger_provider
        self._restart_delay_s = restart_delay_s
        self.host: Sidecar | None = None
        """The host's share of the sidecar, in this process."""
        self._holds: list[PortHold] = []
        self._lock = threading.Condition()
        self._live: dict[int, _Worker] = {}  # by slot
        self._due: dict[int, float] = {}  # slot -> when to start its replacement
        self._pauses: dict[int, float] = {}  # slot -> the pause before its next replacement
        self._retired: MetricsSnapshot = merge(())
        self._requests = 0
        self._caps = Caps(
            max_entities_per_scope=config.metrics.max_entities_per_scope, max_models=config.metrics.max_models
        )
        self._startup_failure: str | None = None
        self._started = False
        """``start`` has returned: from now on a worker that dies is replaced, not a failure to start."""
        self._stopping = False
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._monitor = threading.Thread(target=self._watch, name="paymaster-supervisor", daemon=True)
        self._fallback: NotServing | None = None
        self.restarts = 0
        """Workers replaced after they died."""

    # -- the public surface ----------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The budget API's ``host:port``, served by every worker."""
        return self._holds[0].address if self._holds else self.config.server.listen

    @property
    def port(self) -> int:
        return self._holds[0].port if self._holds else 0

    @property
    def metrics_port(self) -> int:
        """The port of the one ``/metrics`` (0 when disabled)."""
        return self.host.exporters.port if self.host is not None else 0

    def startup_lines(self) -> list[str]:
        """The sidecar's start-up line (``api.startup``): the ports every worker serves, ``/metrics``,
        the store and how many workers; and where OTLP is forwarded, when it is."""
        bound = {hold.key: hold.address for hold in self._holds}
        if self.metrics_port:
            bound["metrics.listen"] = f"{self.config.metrics.listen.rsplit(':', 1)[0]}:{self.metrics_port}"
        with self._lock:
            onward = next((list(w.onward) for w in self._live.values() if w.ready), [])
        return lines(self.config, bound, onward, workers=self.workers)

    def pids(self) -> dict[int, int]:
        """The process id of the worker in each slot (those alive)."""
        with self._lock:
            return {slot: w.pid for slot, w in self._live.items()}

    def serving(self) -> int:
        """How many workers serve now."""
        with self._lock:
            return sum(1 for w in self._live.values() if w.ready)

    def start(self) -> Supervisor:
        self._hold_ports()
        try:
            self.host = create_sidecar(
                self.config,
                clock=self._clock,
                logger_provider=self._logger_provider,
                share=Share.for_host(snapshot=self.snapshot),
            )
            self.host.metrics.describe(SERVING, "Worker processes of this sidecar serving now.")
            self.host.metrics.describe(RESTARTS, "Worker processes replaced after they died, by worker slot.")
            self.host.start()
            self._fallback = NotServing(self.address, self.host.security.api.tls)
            with self._lock:
                for slot in range(self.workers):
                    self._launch(slot)
            self._monitor.start()
            self._await_ready()
        except BaseException:
            self._shutdown(0)
            raise
        with self._lock:
            self._started = True
        self._count_serving()
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Drain every worker within ``grace_s`` (default ``server.grace_seconds``), then close."""
        grace = self.config.server.grace_seconds if grace_s is None else grace_s
        self._shutdown(grace)

    def wait(self) -> None:
        self._stopped.wait()

    def snapshot(self) -> MetricsSnapshot:
        """Every worker's counts (asked for now), those of workers that died, and the host's own, summed."""
        with self._lock:
            self._ask()
            parts = [self._retired, *(w.counts for w in self._live.values() if w.counts is not None)]
        own = self.host.metrics.snapshot() if self.host is not None else merge(())
        return self._caps.apply(merge([own, *parts]))

    def worker_counts(self) -> dict[int, MetricsSnapshot]:
        """Each live worker's own counts, by slot, asked for now."""
        with self._lock:
            self._ask()
            return {slot: w.counts for slot, w in self._live.items() if w.counts is not None}

    def _ask(self) -> None:
        """Ask every serving worker for its counts and wait for the answers (with the lock held); a
        worker that does not answer in time (busy, or dying) is summed with its last counts."""
        self._requests += 1
        request = self._requests
        asked = [w for w in self._live.values() if w.ready and w.link.send("snapshot", request)]
        deadline = time.monotonic() + _SNAPSHOT_TIMEOUT_S
        while any(w.answered != request and self._live.get(w.slot) is w for w in asked):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(left)

    # -- starting --------------------------------------------------------------------------------
    def _hold_ports(self) -> None:
        config = self.config
        try:
            self._holds.append(PortHold("server.listen", config.server.listen))
            otlp = config.receivers.otlp
            if otlp.enabled:
                self._holds.append(PortHold("receivers.otlp.grpc_listen", otlp.grpc_listen))
                if otlp.http_listen:
                    self._holds.append(PortHold("receivers.otlp.http_listen", otlp.http_listen))
            if config.http.enabled:
                self._holds.append(PortHold("http.listen", config.http.listen))
        except ConfigError as exc:
            self._release_ports()
            raise ConfigError(f"{config.source}: {exc}") from None
        # Every worker binds the ports held, not port 0 each.
        held = {hold.key: hold.address for hold in self._holds}
        server = config.server.model_copy(update={"listen": held["server.listen"]})
        receiver = otlp.model_copy(
            update={
                key.rsplit(".", 1)[1]: address
                for key, address in held.items()
                if key.startswith("receivers.")
            }
        )
        receivers = config.receivers.model_copy(update={"otlp": receiver})
        update: dict[str, object] = {"server": server, "receivers": receivers}
        if "http.listen" in held:
            update["http"] = config.http.model_copy(update={"listen": held["http.listen"]})
        self.config = config.model_copy(update=update)

    def _launch(self, slot: int) -> None:
        """Start a worker in ``slot`` (with the lock held)."""
        link, theirs = pair()
        fd = theirs.fileno()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector_processor.workers.worker", str(fd)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        link.send("start", self.config, slot)
        self._live[slot] = _Worker(slot, proc, link)
        self._wake()

    def _await_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        with self._lock:
            while True:
                if self._startup_failure is not None:
                    raise ConfigError(self._startup_failure)
                if len(self._live) == self.workers and all(w.ready for w in self._live.values()):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConfigError(
                        f"{self.config.source}: server.workers: the workers did not start within "
                        f"{_START_TIMEOUT_S:g} s"
                    )
                self._lock.wait(min(left, 0.5))

    # -- the monitor thread ------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                links = {w.link.connection: w for w in self._live.values()}
                timeout = self._next_due()
            ready = wait([*links, self._wake_r], timeout)
            for connection in ready:
                worker = links.get(connection)  # type: ignore[call-overload]
                if worker is None:
                    self._drain_wakeups()
                    continue
                try:
                    message = worker.link.recv()
                except Exception:  # closed, or garbled by a process killed mid-message
                    self._died(worker)
                    continue
                self._handle(worker, message)
            self._replace_due()

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "snapshot":
            with self._lock:
                worker.counts = message[2]
                if message[1] is not None:
                    worker.answered = message[1]
                self._lock.notify_all()
        elif kind == "alerts":
            host = self.host
            if host is not None and host.dispatcher is not None:
                host.dispatcher.wake()
            self._tell_others(worker, "alerts")
        elif kind == "tokens":
            if self.host is not None:
                self.host.security.refresh()
            self._tell_others(worker, "tokens")
        elif kind == "ready":
            with self._lock:
                worker.ready = True
                worker.onward = list(message[2])
                self._lock.notify_all()
            log.info("worker %d (pid %d) is serving", worker.slot, worker.pid)
            self._count_serving()
        elif kind == "failed":  # the worker exits next; a replacement is started as for any death
            with self._lock:
                if not self._started and self._startup_failure is None:
                    self._startup_failure = str(message[1])
                self._lock.notify_all()
            log.error("worker %d (pid %d) could not start: %s", worker.slot, worker.pid, message[1])

    def _tell_others(self, source: _Worker, kind: str) -> None:
        with self._lock:
            others = [w for w in self._live.values() if w is not source and w.ready]
        for other in others:
            other.link.send(kind)

    def _died(self, worker: _Worker) -> None:
        """A worker's channel closed: it exited (or is about to). Reap it; replace it unless stopping."""
        try:
            code = worker.proc.wait(5)
        except subprocess.TimeoutExpired:  # it closed the channel but lives on: it must go
            worker.proc.kill()
            code = worker.proc.wait(5)
        worker.link.close()
        with self._lock:
            if self._live.get(worker.slot) is worker:
                del self._live[worker.slot]
            if worker.counts is not None:
                self._retired = merge([self._retired, worker.counts])
            stopping, started = self._stopping, self._started
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            if not started and self._startup_failure is None:
                self._startup_failure = (
                    f"{self.config.source}: server.workers: worker {worker.slot} {how} while starting"
                )
            self._lock.notify_all()
        self._count_serving()
        if stopping or not started:
            return
        pause = self._pause(worker)
        log.warning(
            "worker %d (pid %d) %s; starting a new one in %.1f s", worker.slot, worker.pid, how, pause
        )
        with self._lock:
            self._due[worker.slot] = time.monotonic() + pause

    def _pause(self, worker: _Worker) -> float:
        """The pause before the slot's next worker: doubled while replacements keep dying early."""
        lived = time.monotonic() - worker.started
        previous = self._pauses.get(worker.slot)
        if previous is None or lived >= _STEADY_S:
            pause = self._restart_delay_s
        else:
            pause = min(previous * 2, _MAX_RESTART_DELAY_S)
        self._pauses[worker.slot] = pause
        return pause

    def _next_due(self) -> float | None:
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - time.monotonic())

    def _replace_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                self._due.clear()
                return
            for slot, when in list(self._due.items()):
                if when <= now:
                    del self._due[slot]
                    self.restarts += 1
                    assert self.host is not None
                    self.host.metrics.inc(RESTARTS, 1, {"worker": str(slot)})
                    self._launch(slot)

    def _count_serving(self) -> None:
        serving = self.serving()
        if self.host is not None:
            self.host.metrics.set_gauge(SERVING, serving)
        fallback = self._fallback
        if fallback is None:
            return
        with self._lock:
            stopping = self._stopping
        if serving == 0 and not stopping and self._started:
            fallback.start()
            if fallback.error is not None:
                log.warning("cannot answer NOT_SERVING on %s: %s", fallback.listen, fallback.error)
        elif serving > 0 or stopping:
            fallback.stop()

    def _wake(self) -> None:
        self._wake_w.send("wake")

    def _drain_wakeups(self) -> None:
        while self._wake_r.poll():
            self._wake_r.recv()

    # -- stopping --------------------------------------------------------------------------------
    def _shutdown(self, grace_s: float) -> None:
        with self._lock:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
                self._due.clear()
                workers = list(self._live.values())
        if already:
            self._stopped.wait()
            return
        if self._fallback is not None:
            self._fallback.stop()
        for worker in workers:
            worker.link.send("stop", grace_s)
        # A worker drains its OTLP receivers, then the budget API, each within the grace period.
        deadline = time.monotonic() + 2 * grace_s + 5
        with self._lock:
            while self._live and self._monitor.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.2))
            left_over = list(self._live.values())
        for worker in left_over:  # outlived the grace period, or the monitor never ran
            if worker.proc.poll() is None:
                log.warning("worker %d (pid %d) did not stop in time; killing it", worker.slot, worker.pid)
                worker.proc.kill()
            if not self._monitor.is_alive():
                self._died(worker)
        self._stopped.set()
        self._wake()
        if self._monitor.is_alive() and threading.current_thread() is not self._monitor:
            self._monitor.join(10)
        if self.host is not None:
            self.host.stop(grace_s)  # a last push of the sum; the store closes last
        self._release_ports()
        self._wake_r.close()
        self._wake_w.close()

    def _release_ports(self) -> None:
        for hold in self._holds:
            hold.release()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
