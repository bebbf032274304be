"""The sidecar's configuration: a TOML file validated with pydantic at the edge, then checked as a whole.

``load_config(path)`` fails fast with a ``ConfigError`` that names the file and the key
(``sidecar.toml: budgets[1].limit_usd: must not be negative``); unknown keys are refused so a typo
never silently falls back to a default. ``create_default_config()`` is what runs without a file.
Floats in the file are read as exact decimals, so ``limit_usd = 10.1`` means ten dollars ten cents.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from collector_processor.auth.config import AuthSection, TlsSection
from collector_processor.domain.budgets import (
    BudgetDraft,
    OnExceed,
    Scope,
    Tier,
    build_budget,
    check_thresholds,
)
from collector_processor.domain.money import MAX_USD
from collector_processor.domain.periods import zone
from collector_processor.errors import InvalidRequestError
from collector_processor.ledger import LedgerSettings
from collector_processor.ledger.ledger import MAX_TOKENS_CEILING
from collector_processor.otlp.config import OtlpReceiverSection
from collector_processor.store.redis.codec import check_namespace, parse_sentinel_url
from collector_processor.telemetry.config import DEFAULT_METRICS_LISTEN, MetricsSection, TelemetrySection
from paymaster.exceptions import ConfigError

__all__ = [
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_LISTEN",
    "DEFAULT_METRICS_LISTEN",
    "DEFAULT_OTLP_GRPC_LISTEN",
    "DEFAULT_OTLP_HTTP_LISTEN",
    "MAX_LIMIT_USD",
    "MAX_WORKERS",
    "NumericKey",
    "SidecarConfig",
    "create_default_config",
    "load_config",
    "numeric_keys",
    "parse_address",
]

# Ports chosen clear of an OpenTelemetry Collector (4317/4318, 8888, 13133, 55679), Prometheus (9090),
# Alertmanager (9093), Grafana (3000), Loki (3100) and Tempo (3200) on the same host; the OTLP ports
# mirror 4317/4318 so they are easy to remember.
DEFAULT_LISTEN = "127.0.0.1:7310"
DEFAULT_OTLP_GRPC_LISTEN = "127.0.0.1:7317"
DEFAULT_OTLP_HTTP_LISTEN = "127.0.0.1:7318"
DEFAULT_HTTP_LISTEN = "127.0.0.1:7311"

# Thirty days: the longest a reservation may be held, and so its TTL.
_MAX_TTL_S = 2_592_000
_MAX_REQUEST_IDLE_S = 604_800
MAX_LIMIT_USD = Decimal(10) ** 9
"""The largest budget limit, as for every amount on the wire (a billion dollars)."""

MAX_WORKERS = 256
"""The most worker processes one sidecar runs (``server.workers``)."""

_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


class _Section(BaseModel):
    # Every number is finite: inf and nan are refused for float and decimal keys alike.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ServerSection(_Section):
    listen: str = DEFAULT_LISTEN
    tls: TlsSection = TlsSection()
    allow_unauthenticated: bool = False
    max_concurrent_rpcs: int = Field(default=0, ge=0, le=1_000_000)
    max_watchers: int = Field(default=16, ge=0, le=1000)
    grace_seconds: float = Field(default=5.0, ge=0, le=300)
    workers: int | Literal["auto"] = 1
    """Worker processes serving the listeners on the same ports; ``"auto"``: one per core this
    process may use. Its range is checked by ``_workers`` (``_DOMAIN_RANGES`` documents it)."""

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto":
            return value
        whole = (
            isinstance(value, int | Decimal)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value == int(value)
        )
        if not whole or not 1 <= int(value) <= MAX_WORKERS:
            raise PydanticCustomError("workers", f'must be "auto" or a whole number from 1 to {MAX_WORKERS}')
        return int(value)


class HttpSection(_Section):
    """The budget API over HTTP/JSON (``api/http``): the gRPC service's operations, AxonFlow's REST
    paths and ``/openapi.json``, on a port of its own, with the same gate and TLS as every listener."""

    enabled: bool = False
    listen: str = DEFAULT_HTTP_LISTEN
    tls: TlsSection = TlsSection()
    allow_unauthenticated: bool = False
    basic_auth: bool = True
    """Accept ``Authorization: Basic`` (AxonFlow's client_id/client_secret) where the secret is a token
    and the id is the token's name."""
    max_concurrent_requests: int = Field(default=256, ge=1, le=100_000)
    max_streams: int = Field(default=16, ge=0, le=1000)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=67_108_864)
    keepalive_seconds: float = Field(default=5.0, ge=0.1, le=600)


class StoreSection(_Section):
    kind: Literal["sqlite", "redis"] = "sqlite"
    # kind = "sqlite"
    path: str = "paymaster-sidecar.db"
    synchronous: Literal["normal", "full"] = "normal"
    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    # kind = "redis"
    url: str = ""
    namespace: str = "paymaster"
    cluster: bool = False
    socket_timeout_seconds: float = Field(default=2.0, ge=0.01, le=60)
    connect_timeout_seconds: float = Field(default=1.0, ge=0.01, le=60)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    backoff_initial_seconds: float = Field(default=0.1, ge=0.001, le=60)
    backoff_max_seconds: float = Field(default=5.0, ge=0.001, le=600)
    health_interval_seconds: float = Field(default=1.0, ge=0.01, le=60)
    wait_replicas: int = Field(default=0, ge=0, le=16)
    wait_timeout_ms: int = Field(default=100, ge=1, le=60_000)

    def describe(self) -> str:
        """The store as messages name it: the file as written, or the server without its password."""
        if self.kind == "redis":
            from collector_processor.store.redis.link import describe_url

            return f"redis {describe_url(self.url)} namespace {self.namespace}"
        return f"sqlite {self.path}"


_SQLITE_KEYS = frozenset({"path", "synchronous", "busy_timeout_ms"})
_REDIS_URL = re.compile(r"(rediss?://[^/\s?]+(/[0-9]+)?(\?\S*)?|unix://\S+|redis\+sentinel://\S+)")


class LedgerSection(_Section):
    time_zone: str = "UTC"
    default_ttl_seconds: float = Field(default=300, ge=0.001, le=_MAX_TTL_S)
    max_ttl_seconds: float = Field(default=3600, ge=0.001, le=_MAX_TTL_S)
    sweep_interval_seconds: float = Field(default=1.0, ge=0.01, le=60)
    default_alert_thresholds: list[int] = Field(default_factory=lambda: [80, 100])
    reservation_retention_hours: float = Field(default=168, ge=0.01, le=87_600)
    usage_retention_days: float = Field(default=400, ge=0.01, le=36_500)
    alert_retention_days: float = Field(default=30, ge=0.01, le=36_500)
    # The most one request may carry in a money field (other than a budget's limit) and in a token field.
    max_amount_usd: Decimal = Field(default=Decimal(1_000_000), ge=Decimal("0.000001"), le=MAX_USD)
    max_tokens: int = Field(default=10**12, ge=1, le=MAX_TOKENS_CEILING)
    # Request budgets: how long one stays open without activity when it asks for nothing else, and the
    # longest a caller may ask for (a week at most).
    request_idle_ttl_seconds: float = Field(default=600, ge=1, le=_MAX_REQUEST_IDLE_S)
    max_request_idle_ttl_seconds: float = Field(default=86_400, ge=1, le=_MAX_REQUEST_IDLE_S)


class WebhookSection(_Section):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=5.0, ge=0.01, le=120)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_initial_seconds: float = Field(default=0.5, ge=0.001, le=600)
    backoff_max_seconds: float = Field(default=30.0, ge=0.001, le=3600)
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)


class AlertsSection(_Section):
    poll_interval_seconds: float = Field(default=0.5, ge=0.01, le=60)
    otel_logs: bool = True
    webhook: WebhookSection | None = None


class ReceiversSection(_Section):
    otlp: OtlpReceiverSection = OtlpReceiverSection()


class TierEntry(_Section):
    """One tier of a budget: ``{at = 80, action = "downgrade"}``."""

    at: int = Field(ge=1, le=1000)
    action: Literal["warn", "block", "downgrade"]


class BudgetEntry(_Section):
    id: str
    name: str = ""
    scope: Literal["organization", "team", "agent", "workflow", "user"]
    scope_id: str | None = None
    limit_usd: Decimal = Field(le=MAX_LIMIT_USD)
    """Not negative either (refused by the budget rules, like a limit set through the API)."""
    period: str
    time_zone: str = ""
    on_exceed: Literal["warn", "block", "downgrade"] | None = None
    """Required unless ``tiers`` are given (refused by the budget rules, naming the key)."""
    alert_thresholds: list[int] | None = None
    tiers: list[TierEntry] = Field(default_factory=list)
    enabled: bool = True

    def draft(self) -> BudgetDraft:
        return BudgetDraft(
            id=self.id,
            name=self.name,
            scope=Scope(self.scope),
            scope_id=self.scope_id,
            limit_usd=self.limit_usd,
            period=self.period,
            time_zone=self.time_zone,
            on_exceed=None if self.on_exceed is None else OnExceed(self.on_exceed),
            alert_thresholds=None if self.alert_thresholds is None else tuple(self.alert_thresholds),
            tiers=tuple(Tier(t.at, OnExceed(t.action)) for t in self.tiers),
            enabled=self.enabled,
            declared_in_config=True,
        )


class SidecarConfig(_Section):
    """The whole configuration. ``source`` names the file it came from, for messages."""

    source: str = Field(default="<defaults>", exclude=True)
    server: ServerSection = ServerSection()
    http: HttpSection = HttpSection()
    auth: AuthSection = AuthSection()
    store: StoreSection = StoreSection()
    ledger: LedgerSection = LedgerSection()
    alerts: AlertsSection = AlertsSection()
    telemetry: TelemetrySection = TelemetrySection()
    receivers: ReceiversSection = ReceiversSection()
    metrics: MetricsSection = MetricsSection()
    budgets: list[BudgetEntry] = Field(default_factory=list)

    @field_validator("store", mode="before")
    @classmethod
    def _store_url(cls, value: Any) -> Any:
        """``store = "redis://host:6379/0"`` is short for ``[store]`` with ``kind = "redis"`` and that url."""
        if isinstance(value, str):
            if not value.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
                raise ValueError("must be a redis:// URL or a [store] table")
            return {"kind": "redis", "url": value}
        return value

    def validate_all(self) -> SidecarConfig:
        """Checks that span keys (addresses, zones, budgets); raises ``ConfigError`` naming file and key."""
        try:
            self._check_addresses()
            self._check_security()
            self._check_store()
            self._check_ledger()
            self._check_alerts()
            self._check_budgets()
            self.receivers.otlp.validate_all()
        except InvalidRequestError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None
        return self

    def ledger_settings(self) -> LedgerSettings:
        lg = self.ledger
        return LedgerSettings(
            time_zone=lg.time_zone,
            default_ttl_ms=int(lg.default_ttl_seconds * 1000),
            max_ttl_ms=int(lg.max_ttl_seconds * 1000),
            default_alert_thresholds=tuple(sorted(lg.default_alert_thresholds)),
            max_amount_usd=lg.max_amount_usd,
            max_tokens=lg.max_tokens,
            request_idle_ttl_ms=int(lg.request_idle_ttl_seconds * 1000),
            max_request_idle_ttl_ms=int(lg.max_request_idle_ttl_seconds * 1000),
        )

    def _check_addresses(self) -> None:
        ports: dict[int, str] = {}
        for key, address in (
            ("server.listen", self.server.listen),
            ("receivers.otlp.grpc_listen", self.receivers.otlp.grpc_listen),
            ("receivers.otlp.http_listen", self.receivers.otlp.http_listen),
            ("metrics.listen", self.metrics.listen),
            ("http.listen", self.http.listen),
        ):
            if not address and key == "receivers.otlp.http_listen":
                continue  # OTLP/HTTP turned off
            if key == "http.listen" and not self.http.enabled:
                parse_address(address, key)
                continue
            port = parse_address(address, key)
            if port and port in ports:
                raise InvalidRequestError(key, f"port {port} is already used by {ports[port]}")
            ports[port] = key

    @property
    def base_dir(self) -> Path | None:
        """The config file's folder, against which every relative path in it is read: ``store.path``,
        the auth and TLS files, the OTLP receiver's price file."""
        source = Path(self.source)
        return source.parent if self.source not in ("<defaults>", "<string>") else None

    def sqlite_path(self) -> Path:
        """``store.path`` as the store opens it: a relative path is read from the config file's
        folder, as every path in the file is (the working directory for the built-in defaults)."""
        path = Path(self.store.path).expanduser()
        base = self.base_dir
        return path if path.is_absolute() or base is None else base / path

    def store_description(self) -> str:
        """The store for the start-up line: the SQLite file's full path, or the Redis server without
        its password."""
        if self.store.kind == "sqlite":
            return f"sqlite {self.sqlite_path().resolve()}"
        return self.store.describe()

    def listeners(self) -> list[Listener]:
        """Every listener that will open, with its TLS block and whether it authenticates callers."""
        otlp, metrics = self.receivers.otlp, self.metrics
        out = [Listener("server", self.server.listen, self.server.tls, self.auth.enabled,
                        self.server.allow_unauthenticated)]  # fmt: skip
        if otlp.enabled:
            out.append(Listener("receivers.otlp", otlp.grpc_listen, otlp.tls, self.auth.enabled,
                                otlp.allow_unauthenticated, listen_key="grpc_listen"))  # fmt: skip
            if otlp.http_listen:
                out.append(Listener("receivers.otlp", otlp.http_listen, otlp.tls, self.auth.enabled,
                                    otlp.allow_unauthenticated, listen_key="http_listen"))  # fmt: skip
        if self.http.enabled:
            out.append(Listener("http", self.http.listen, self.http.tls, self.auth.enabled,
                                self.http.allow_unauthenticated))  # fmt: skip
        if metrics.enabled:
            out.append(Listener("metrics", metrics.listen, metrics.tls, self.auth.enabled and metrics.require_token,
                                metrics.allow_unauthenticated))  # fmt: skip
        return out

    def _check_security(self) -> None:
        """Every listener's TLS files, the auth sources, and no listener open to other hosts without auth."""
        base = self.base_dir
        self.auth.check(base)
        self.server.tls.check("server.tls", base)
        self.receivers.otlp.tls.check("receivers.otlp.tls", base)
        self.metrics.tls.check("metrics.tls", base)
        self.http.tls.check("http.tls", base)
        if self.metrics.require_token and not self.auth.enabled:
            raise InvalidRequestError(
                "metrics.require_token", "needs [auth] enabled = true (tokens come from it)"
            )
        if self.auth.clients and not any(listener.tls.client_ca_file for listener in self.listeners()):
            raise InvalidRequestError(
                "auth.clients",
                "maps client certificates, but no listener verifies them: set client_ca_file in the "
                "tls block of server, http, receivers.otlp or metrics",
            )
        for listener in self.listeners():
            if listener.authenticated or listener.allow_unauthenticated or is_loopback(listener.address):
                continue
            raise InvalidRequestError(
                listener.key,
                f"{listener.address} can be reached from other hosts, but callers are not authenticated; "
                f"turn on [auth] (enabled = true, see docs/security.md), or write "
                f"{listener.section}.allow_unauthenticated = true to serve anyone who can connect",
            )

    def _check_store(self) -> None:
        store = self.store
        given = store.model_fields_set
        if store.kind == "sqlite":
            other = sorted(given - _SQLITE_KEYS - {"kind"})
            if other:
                raise InvalidRequestError(f"store.{other[0]}", 'applies to kind = "redis" only')
            return
        other = sorted(given & _SQLITE_KEYS)
        if other:
            raise InvalidRequestError(f"store.{other[0]}", 'applies to kind = "sqlite" only')
        if not store.url:
            raise InvalidRequestError(
                "store.url", 'is required with kind = "redis", e.g. "redis://127.0.0.1:6379/0"'
            )
        if not _REDIS_URL.fullmatch(store.url):
            raise InvalidRequestError(
                "store.url",
                "must be redis://[user:password@]host:port[/db], rediss://..., unix://path or "
                f"redis+sentinel://host:port[,host:port...]/service[/db], got {store.url!r}",
            )
        if store.url.startswith("redis+sentinel://"):
            if store.cluster:
                raise InvalidRequestError("store.cluster", "a Redis Cluster is not reached through sentinels")
            try:
                parse_sentinel_url(store.url)
            except ValueError as exc:
                raise InvalidRequestError("store.url", str(exc)) from None
        if store.wait_replicas and store.wait_timeout_ms >= store.socket_timeout_seconds * 1000:
            raise InvalidRequestError(
                "store.wait_timeout_ms",
                f"{store.wait_timeout_ms} ms must be shorter than store.socket_timeout_seconds "
                f"({store.socket_timeout_seconds:g} s), or the socket times out before replicas can answer",
            )
        if store.cluster and store.wait_replicas:
            raise InvalidRequestError(
                "store.wait_replicas", "is not supported with cluster = true; leave it 0"
            )
        if store.cluster and store.url.startswith("unix://"):
            raise InvalidRequestError(
                "store.cluster", "a Redis Cluster is reached over redis:// or rediss://"
            )
        try:
            check_namespace(store.namespace)
        except ValueError as exc:
            raise InvalidRequestError("store.namespace", str(exc)) from None
        _at_most(
            "store.backoff_initial_seconds", store.backoff_initial_seconds,
            "store.backoff_max_seconds", store.backoff_max_seconds,
        )  # fmt: skip

    def _check_ledger(self) -> None:
        lg = self.ledger
        try:
            zone(lg.time_zone)
        except ValueError as exc:
            raise InvalidRequestError("ledger.time_zone", str(exc)) from None
        _at_most(
            "ledger.default_ttl_seconds", lg.default_ttl_seconds, "ledger.max_ttl_seconds", lg.max_ttl_seconds
        )
        _at_most(
            "ledger.request_idle_ttl_seconds",
            lg.request_idle_ttl_seconds,
            "ledger.max_request_idle_ttl_seconds",
            lg.max_request_idle_ttl_seconds,
        )
        check_thresholds(lg.default_alert_thresholds, "ledger.default_alert_thresholds")

    def _check_alerts(self) -> None:
        hook = self.alerts.webhook
        if hook is not None and not re.match(r"https?://[^/\s]+", hook.url):
            raise InvalidRequestError(
                "alerts.webhook.url", f"must be an http:// or https:// URL, got {hook.url!r}"
            )
        if hook is not None:
            _at_most(
                "alerts.webhook.backoff_initial_seconds", hook.backoff_initial_seconds,
                "alerts.webhook.backoff_max_seconds", hook.backoff_max_seconds,
            )  # fmt: skip
        for key, endpoint in (
            ("telemetry.otlp_endpoint", self.telemetry.otlp_endpoint),
            ("metrics.otlp.endpoint", self.metrics.otlp.endpoint),
        ):
            if endpoint and not re.match(r"https?://[^/\s]+", endpoint):
                raise InvalidRequestError(key, f"must be an http:// or https:// URL, got {endpoint!r}")

    def _check_budgets(self) -> None:
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.budgets):
            build_budget(
                entry.draft(),
                default_time_zone=self.ledger.time_zone,
                default_thresholds=tuple(self.ledger.default_alert_thresholds),
                generated_id="",
                now_ms=0,
                field_prefix=f"budgets[{i}].",
            )
            if entry.id in seen:
                raise InvalidRequestError(
                    f"budgets[{i}].id", f"{entry.id!r} is declared already at budgets[{seen[entry.id]}]"
                )
            seen[entry.id] = i


class Listener:
    """One port the sidecar opens, with the security settings that apply to it."""

    def __init__(
        self,
        section: str,
        address: str,
        tls: TlsSection,
        authenticated: bool,
        allow_unauthenticated: bool,
        *,
        listen_key: str = "listen",
    ) -> None:
        self.section = section
        self.key = f"{section}.{listen_key}"
        self.address = address
        self.tls = tls
        self.authenticated = authenticated
        self.allow_unauthenticated = allow_unauthenticated


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` listens on a loopback address only."""
    host = address.rsplit(":", 1)[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(address: str, key: str) -> int:
    """The port of ``host:port``; ``InvalidRequestError`` naming ``key`` otherwise."""
    match = _ADDRESS.fullmatch(address)
    if match is None or int(match.group("port")) > 65535:
        raise InvalidRequestError(
            key, f"must be host:port (e.g. {DEFAULT_LISTEN} or [::1]:7310), got {address!r}"
        )
    return int(match.group("port"))


def create_default_config() -> SidecarConfig:
    """The configuration used without a file: loopback on port 7310, SQLite in the working directory."""
    return SidecarConfig()


def load_config(path: str | Path) -> SidecarConfig:
    """Read, parse and validate a TOML file; every failure is a ``ConfigError`` naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<string>") -> SidecarConfig:
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        config = SidecarConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    return config.validate_all()


def _describe(error: Any) -> str:
    where = ""
    for part in error["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; see deploy/sidecar.example.toml)"
    value = error.get("input")
    numeric = _numeric_key(error["loc"])
    if numeric is not None and error["type"] in _NUMBER_ERRORS:
        return f"{where}: {numeric.refusal(value)}"
    shown = "" if isinstance(value, dict | list) or value is None else f" (got {_show(value)})"
    return f"{where}: {error['msg']}{shown}"


# -- the range of every number ----------------------------------------------------------------------
_NUMBER_ERRORS = frozenset(
    {
        "finite_number", "greater_than", "greater_than_equal", "less_than", "less_than_equal",
        "int_from_float", "int_parsing", "int_type", "float_parsing", "float_type", "decimal_parsing",
        "decimal_type",
    }
)  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class NumericKey:
    """One number in the file and the range it must lie in (both ends included)."""

    key: str
    """Its dotted name, ``budgets[].limit_usd`` for a key of every budget."""
    whole: bool
    """Only whole numbers."""
    low: Decimal
    high: Decimal

    def range(self) -> str:
        return f"{_plain(self.low)} to {_plain(self.high)}"

    def refusal(self, value: Any) -> str:
        """Why ``value`` is refused, with the range."""
        shown = _show(value)
        if isinstance(value, Decimal | float) and not math.isfinite(value):
            return (
                f"must be finite, {'a whole number ' if self.whole else ''}from {self.range()}, got {shown}"
            )
        kind = "a whole number from" if self.whole else "from"
        return f"must be {kind} {self.range()}, got {shown}"


# Numbers whose range a domain rule checks (the same rule the budget API applies), not a Field bound.
_DOMAIN_RANGES = {
    "server.workers": (Decimal(1), Decimal(MAX_WORKERS)),
    "budgets[].limit_usd": (Decimal(0), MAX_LIMIT_USD),
    "budgets[].alert_thresholds": (Decimal(1), Decimal(1000)),
    "ledger.default_alert_thresholds": (Decimal(1), Decimal(1000)),
}


def numeric_keys() -> tuple[NumericKey, ...]:
    """Every number the file may hold, with its range: what docs/sidecar.md lists."""
    return tuple(_numeric_keys_of(SidecarConfig, ""))


def _numeric_keys_of(model: type[BaseModel], prefix: str) -> Iterator[NumericKey]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested, number, many = _field_shape(field.annotation)
        if nested is not None:
            yield from _numeric_keys_of(nested, f"{key}[]." if many else f"{key}.")
            continue
        if number is None:
            continue
        low, high = _DOMAIN_RANGES.get(key, (None, None))
        for bound in field.metadata:
            low = Decimal(str(bound.ge)) if hasattr(bound, "ge") else low
            high = Decimal(str(bound.le)) if hasattr(bound, "le") else high
        if low is None or high is None:  # a programming error: every number needs Field(ge=..., le=...)
            raise TypeError(f"{key}: a number without a range; give it Field(ge=..., le=...)")
        yield NumericKey(key=key, whole=number is int, low=low, high=high)


def _field_shape(annotation: Any, many: bool = False) -> tuple[type[BaseModel] | None, type | None, bool]:
    """The section a field nests, or the number type it holds, and whether it is a list of them
    (``X | None`` is ``X``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None, many
    if annotation in (int, float, Decimal):
        return None, annotation, many
    if typing.get_origin(annotation) is dict:
        return None, None, many
    for arg in typing.get_args(annotation):
        found = _field_shape(arg, many or typing.get_origin(annotation) is list)
        if found[0] is not None or found[1] is not None:
            return found
    return None, None, many


@functools.cache
def _numeric_by_key() -> dict[str, NumericKey]:
    return {numeric.key: numeric for numeric in numeric_keys()}


def _numeric_key(loc: tuple[Any, ...]) -> NumericKey | None:
    """The number an error's location points at: ``("budgets", 0, "limit_usd")`` is
    ``budgets[].limit_usd``; an element of a list of numbers is that list's key."""
    key = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += "[]" if i < len(loc) - 1 else ""
        else:
            key += f".{part}" if key else str(part)
    return _numeric_by_key().get(key)


def _show(value: Any) -> str:
    """A value as the file would spell it: ``inf``, ``nan``, ``1E+300``, ``'x'``."""
    if isinstance(value, Decimal | float) and not math.isfinite(value):
        return ("-inf" if value < 0 else "inf") if not math.isnan(value) else "nan"
    if isinstance(value, Decimal):
        return str(value)
    return repr(value)


def _plain(value: Decimal) -> str:
    """``2592000``, ``0.001``: no exponent, no trailing zeros."""
    return f"{value.normalize():f}"


def _at_most(name: str, value: float, limit_name: str, limit: float) -> None:
    """Refuse a setting above the setting that bounds it, naming both."""
    if value > limit:
        raise InvalidRequestError(name, f"{value:g} is above {limit_name} ({limit:g})")
