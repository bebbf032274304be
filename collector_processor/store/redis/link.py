"""The Redis store's connection: scripts, availability, and reconnecting with backoff.

A request never waits on a Redis that is known to be down: once a call fails to reach it, the link is
marked unavailable and every call fails at once with ``StoreUnavailableError`` (gRPC ``UNAVAILABLE``,
which the SDK's fail policy handles) until a background probe reaches Redis again. The probe retries
with exponential backoff and, while Redis is up, pings it every ``health_interval_s`` so an idle
sidecar notices an outage too; ``available`` is what the server's health check reports.

Nothing here retries a command by itself. A script whose reply is lost may have run; every operation
is safe to repeat (commits, releases and usage are idempotent, a reservation expires by its TTL), so
the caller decides, and no charge is ever applied twice behind its back.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector_processor.errors import StoreUnavailableError
from collector_processor.store.redis.codec import parse_sentinel_url
from collector_processor.store.redis.scripts import FUNCTIONS, LIBRARY

__all__ = ["RedisLink", "describe_url"]

log = logging.getLogger("paymaster.sidecar.store.redis")
T = TypeVar("T")

# Errors that mean "Redis cannot serve us now", as opposed to a bug in a script or a request.
_DOWN: tuple[type[Exception], ...] = (
    rexc.ConnectionError,  # includes BusyLoadingError
    rexc.TimeoutError,
    rexc.ReadOnlyError,  # a replica promoted away from us: wait for the new primary
    rexc.ClusterDownError,
    rexc.SlotNotCoveredError,
    rexc.TryAgainError,
    rexc.OutOfMemoryError,
    rexc.MasterDownError,
)
_DOWN_REPLIES = ("BUSY", "MISCONF", "LOADING", "OOM", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS")


def _sentinel_client(url: str, settings: dict[str, Any]) -> Any:
    """A client of whichever server the sentinels name as the service's primary, found again after a
    failover (a connection to a demoted primary is dropped at its first READONLY)."""
    from redis.sentinel import Sentinel

    hosts, service, db, user, password = parse_sentinel_url(url)
    timeouts = {k: settings[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(hosts, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
    return sentinel.master_for(service, db=db, username=user, password=password, **settings)  # type: ignore[no-untyped-call]


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.rsplit('@', 1)[1]}"
    return url


class RedisLink:
    """One client (a connection pool) to a Redis server or cluster, with the store's scripts."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        cluster: bool = False,
        socket_timeout_s: float = 2.0,
        connect_timeout_s: float = 1.0,
        max_connections: int = 64,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        health_interval_s: float = 1.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.where = describe_url(url)
        self.meta_key = "{" + namespace + "}:meta"
        self.prefix = "{" + namespace + "}"
        settings: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": max_connections,
        }
        self._cluster = cluster
        try:
            if cluster:
                self.client: Any = redis.RedisCluster.from_url(url, **settings)
            elif url.startswith("redis+sentinel://"):
                self.client = _sentinel_client(url, settings)
            else:
                self.client = redis.Redis.from_url(url, **settings)
        except (ValueError, rexc.RedisError, rexc.RedisClusterException) as exc:
            # A cluster client connects at once: an unreachable or non-cluster server fails here.
            raise StoreUnavailableError(f"cannot use Redis at {self.where}: {exc}") from None
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._health_interval = health_interval_s
        self._on_reconnect = on_reconnect
        self._lock = threading.Lock()
        self._available = True
        self._reason = ""
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._prober = threading.Thread(target=self._probe_loop, name="paymaster-redis-probe", daemon=True)

    def start(self) -> None:
        self._prober.start()

    @property
    def available(self) -> bool:
        """Whether the last contact with Redis succeeded; the sidecar's health follows this."""
        return self._available

    @property
    def reason(self) -> str:
        """Why Redis is unavailable ('' while it is available)."""
        return self._reason

    # -- calls -------------------------------------------------------------------------------------
    def load_functions(self) -> None:
        """Give Redis the store's function library (idempotent; on a cluster, to every primary)."""
        self.client.function_load(LIBRARY, replace=True)

    def script(self, name: str, args: Sequence[str], keys: Sequence[str] = ()) -> Any:
        """Run one of the store's functions with ``keys`` (full names, besides the ledger's meta key,
        which is always the first) declared, loading the library first if Redis does not have it (a
        new server, or one restarted without persistence)."""
        function, packed = FUNCTIONS[name], json.dumps(args)
        declared = [self.meta_key, *dict.fromkeys(keys)]

        def run() -> Any:
            try:
                return self._fcall(function, declared, packed)
            except rexc.ResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                self.load_functions()
                return self._fcall(function, declared, packed)

        return self.call(run)

    def key(self, *parts: str) -> str:
        """The full name of one of the ledger's keys: ``key("r", rid)`` is ``{namespace}:r:<rid>``."""
        return ":".join((self.prefix, *parts))

    def _fcall(self, function: str, keys: list[str], packed: str) -> Any:
        if not self._wait_replicas:
            return self.client.fcall(function, len(keys), *keys, packed)
        # WAIT counts the replicas that have this connection's writes, so both go down one connection.
        pipe = self.client.pipeline(transaction=False)
        pipe.fcall(function, len(keys), *keys, packed)
        pipe.wait(self._wait_replicas, self._wait_timeout_ms)
        reply, acknowledged = pipe.execute()
        self._check_replicas(acknowledged)
        return reply

    def eval(self, source: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        """Run a small Lua script outside the function library (rare operations such as issuing a
        token), with the same replica acknowledgement as the functions."""

        def run() -> Any:
            if not self._wait_replicas:
                return self.client.eval(source, len(keys), *keys, *args)
            pipe = self.client.pipeline(transaction=False)
            pipe.eval(source, len(keys), *keys, *args)
            pipe.wait(self._wait_replicas, self._wait_timeout_ms)
            reply, acknowledged = pipe.execute()
            self._check_replicas(acknowledged)
            return reply

        return self.call(run)

    def _check_replicas(self, acknowledged: Any) -> None:
        if int(acknowledged) < self._wait_replicas:
            raise StoreUnavailableError(
                f"the Redis store at {self.where} applied this change but only {acknowledged} of "
                f"{self._wait_replicas} replica(s) acknowledged it within {self._wait_timeout_ms} ms, so a "
                "failover could lose it; retry (the operation is safe to repeat)"
            )

    def call(self, fn: Callable[[], T]) -> T:
        if not self._available:
            raise StoreUnavailableError(
                f"the Redis store at {self.where} is unavailable ({self._reason}); reconnecting"
            )
        try:
            return fn()
        except _DOWN as exc:
            raise self._down(exc) from exc
        except rexc.ResponseError as exc:
            if str(exc).split(" ", 1)[0] in _DOWN_REPLIES:
                raise self._down(exc) from exc
            raise

    def _down(self, exc: Exception) -> StoreUnavailableError:
        reason = f"{type(exc).__name__}: {exc}".strip()
        with self._lock:
            if self._available and self._prober.is_alive():  # before start, the caller reports it
                log.error(
                    "lost the Redis store at %s (%s); answering UNAVAILABLE until it is back",
                    self.where,
                    reason,
                )
            self._available = False
            self._reason = reason
        self._wake.set()
        return StoreUnavailableError(
            f"the Redis store at {self.where} is unavailable ({reason}); retry later"
        )

    # -- the probe ---------------------------------------------------------------------------------
    def _probe_loop(self) -> None:
        delay = self._backoff_initial
        while not self._closing.is_set():
            if self._available:
                delay = self._backoff_initial
                self._wake.wait(self._health_interval)
                self._wake.clear()
                if self._closing.is_set() or not self._available:
                    continue
                try:
                    self._check()
                except Exception as exc:
                    self._down(exc)
                continue
            if self._closing.wait(delay):
                return
            try:
                self._check()
            except Exception as exc:
                self._reason = f"{type(exc).__name__}: {exc}".strip()
                delay = min(delay * 2, self._backoff_max)
                continue
            with self._lock:
                self._available = True
                self._reason = ""
            log.warning("the Redis store at %s is reachable again; serving", self.where)
            if self._on_reconnect is not None:
                try:
                    self._on_reconnect()
                except Exception:
                    log.exception("re-checking the Redis store after reconnecting failed")

    def _check(self) -> None:
        """Redis answers, and (outside a cluster) as a primary: a replica, or a primary demoted by a
        failover, would refuse every write."""
        if self._cluster:
            self.client.ping()
            return
        role = self.client.execute_command("ROLE")[0]
        if role != "master":
            self.client.connection_pool.disconnect()  # reconnect, through the sentinels if any
            raise rexc.ReadOnlyError(f"{self.where} is a {role}, not a primary")

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._prober.is_alive():
            self._prober.join(5)
        try:
            self.client.close()
        except Exception:  # closing a pool whose server is gone
            log.debug("closing the Redis client failed", exc_info=True)
