"""``SidecarBudget``: hold a runner to the budgets in the Paymaster sidecar, not only to its own limits.

```python
budget = SidecarBudget("127.0.0.1:7310", scopes=Scopes(team="search"), fail_policy=FAIL_OPEN)
Runner(pipeline, usage_limits=UsageLimits(total_cost_usd_limit=5), budget=budget).run(data)
```

Before each agent step the runner reserves the step's estimate locally (its ``UsageLimits``) and in
the sidecar (``Reserve`` with the step's scopes); after the step it commits the actual usage to both;
on any failure or cancellation it releases. The sidecar's decision is applied before the agent runs:
``allow`` runs it, ``warn`` runs it and records the warning, ``downgrade`` runs its cheaper path
(``Step(..., downgrade=...)`` or the ``[downgrade]`` mapping of ``paymaster.toml``), ``deny`` raises
``BudgetExceededError``. With a ``LeasePolicy`` the runner reserves a slice of budget in one call and
spends it locally step by step (see ``LeasePolicy`` for the trade-off). When the sidecar cannot be
reached within the deadline, the fail policy decides: ``fail_closed`` denies, ``fail_open`` runs and
replays the spend with ``RecordUsage`` once the sidecar is back, ``local_only_limits`` runs under the
runner's own limits only. ``budget.request_budget(limit_usd=...)`` opens a request budget for a
``with`` block: every governed step inside it, in every service the request reaches, is held to it as
well (``paymaster.request_budget``). docs/sdk.md has the whole story.

grpc is imported when a ``SidecarBudget`` is built, never by ``import paymaster``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from paymaster._sidecar.journal import PendingUsage, default_journal_dir
from paymaster.exceptions import ConfigError
from paymaster.money import to_decimal
from paymaster.scopes import Scopes

if TYPE_CHECKING:
    from paymaster._sidecar.session import BudgetSession
    from paymaster.config import PaymasterConfig
    from paymaster.limits import UsageLimits
    from paymaster.request_budget import RequestBudget
    from paymaster.telemetry import Telemetry

__all__ = [
    "FAIL_CLOSED",
    "FAIL_OPEN",
    "FAIL_POLICIES",
    "LOCAL_ONLY_LIMITS",
    "BudgetOutcome",
    "FailPolicy",
    "LeasePolicy",
    "PendingUsage",
    "SidecarBudget",
]

FailPolicy = Literal["fail_closed", "fail_open", "local_only_limits"]
FAIL_CLOSED: Final = "fail_closed"
"""Deny a step when the sidecar cannot be reached within the deadline (``SidecarUnavailableError``)."""
FAIL_OPEN: Final = "fail_open"
"""Run the step anyway; keep its spend in the replay journal and replay it when the sidecar is back."""
LOCAL_ONLY_LIMITS: Final = "local_only_limits"
"""Run the step under the runner's own ``UsageLimits`` only; the spend is not replayed (the step's span
carries no reservation id, so the sidecar's trace ingestion charges it instead, if it receives it)."""
FAIL_POLICIES: Final = (FAIL_CLOSED, FAIL_OPEN, LOCAL_ONLY_LIMITS)
DEFAULT_TARGET: Final = "127.0.0.1:7310"
TARGET_ENV_VAR: Final = "PAYMASTER_SIDECAR"

log = logging.getLogger("paymaster")


@dataclass(frozen=True, kw_only=True, slots=True)
class LeasePolicy:
    """Hold a slice of budget and spend it locally: one ``Reserve`` per slice instead of a
    ``Reserve`` and a ``Commit`` per step.

    The trade-off. Fewer round trips: a hot loop pays the sidecar's latency once per slice. In
    exchange, (1) the sidecar sees a lease's spend when the lease is committed (when the next slice is
    taken, when it is older than ``max_age_s``, and when the run ends), and until then only as the
    slice it holds; (2) unspent slices held by other runners count as reserved, so a budget can refuse
    work while headroom sits in their leases — at most the outstanding leases' unspent part; (3) a
    process that dies loses the record of what it spent from its open leases (the slices expire after
    ``ttl_s`` and their holds return to the budget), so the sidecar can under-count by at most the
    outstanding leases. Overspend of a block budget stays bounded as with per-step reservations: a
    step draws its estimate from the lease or the lease is topped up, and an actual that overruns the
    slice is charged at once. Near a limit (a slice no longer fits, or any budget would warn or
    downgrade) steps fall back to exact per-step reservations, so warnings, downgrades and denials
    are decided on each step's own estimate.

    With ``shared=True`` the leases belong to the ``SidecarBudget`` rather than to each run: every run
    it governs draws from one slice per scope set, so a service that runs one short pipeline per
    request pays no round trip per run on a warm slice. A slice is then committed when it is
    exhausted, when it is older than ``max_age_s`` (also while no run draws from it), and when the
    budget is closed — not when a run ends.
    """

    slice_usd: Decimal = Decimal("1")
    """USD reserved per lease (at least the estimate of the step that takes it)."""
    ttl_s: float = 300.0
    """TTL of a lease in the sidecar: if the process dies, the slice returns after this."""
    max_age_s: float | None = None
    """Commit a lease and take a fresh one once it is this old; default ``ttl_s / 2``, so a lease
    never expires under a live runner between two steps."""
    shared: bool = False
    """Hold the leases in the ``SidecarBudget`` for all its runs, not in each run (see above)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "slice_usd", to_decimal(self.slice_usd, what="slice_usd"))
        except ValueError as exc:
            raise ConfigError(f"LeasePolicy: {exc}") from None
        if self.slice_usd <= 0:
            raise ConfigError(f"LeasePolicy: slice_usd must be positive, got {self.slice_usd}")
        if not 0 < self.ttl_s <= 3600:
            raise ConfigError(
                f"LeasePolicy: ttl_s must be in (0, 3600] (the sidecar's maximum), got {self.ttl_s}"
            )
        if self.max_age_s is not None and not 0 < self.max_age_s <= self.ttl_s:
            raise ConfigError(f"LeasePolicy: max_age_s must be in (0, ttl_s], got {self.max_age_s}")
        if not isinstance(self.shared, bool):
            raise ConfigError(f"LeasePolicy: shared must be True or False, got {self.shared!r}")

    @property
    def age_limit_s(self) -> float:
        """``max_age_s``, or half the TTL."""
        return self.max_age_s if self.max_age_s is not None else self.ttl_s / 2


@dataclass(kw_only=True, slots=True)
class BudgetOutcome:
    """What the sidecar decided for one agent step (``StepResult.budget``)."""

    decision: str
    """``allow``, ``warn``, ``downgrade``, ``deny``, ``no_downgrade_path``, ``fail_open``,
    ``fail_closed`` or ``local_only`` (the last three: the sidecar could not be reached)."""
    mode: str
    """How the step was admitted: ``reservation`` (its own), ``lease`` (drawn from a lease),
    ``fail_open``, ``local_only`` or ``none`` (denied)."""
    scopes: Scopes
    """The scope ids the step was charged to."""
    reservation_id: str | None = None
    """The reservation (or lease) that accounts for the step's spend. The span attribute
    ``paymaster.reservation_id`` carries it, or under ``fail_open`` the ``usage_id``."""
    usage_id: str | None = None
    """Under ``fail_open``: the id the spend is replayed under."""
    budget_ids: tuple[str, ...] = ()
    """Every budget that matched."""
    deciding_budget_id: str | None = None
    """The budget that denied or downgraded."""
    reason: str | None = None
    """The sidecar's words for a deny or downgrade (or why it could not be reached)."""
    warnings: tuple[str, ...] = ()
    """Warn budgets that this step takes past their limit."""
    downgraded_from: str | None = None
    """Under ``downgrade``: what the step would have run (``openai:gpt-4o``, or the agent's class)."""
    downgraded_to: str | None = None
    """Under ``downgrade``: what it ran instead."""
    charged_usd: Decimal | None = None
    """What the sidecar charged for this step (``None`` until committed, and for lease draws, which
    are charged when the lease is)."""
    budget_info: list[dict[str, Any]] = field(default_factory=list)
    """The sidecar's figures for every matching budget at the decision (see ``BudgetExceededError``)."""
    request_budget: str | None = None
    """The request budget the step was held to as well (``paymaster.request_budget`` in the baggage)."""

    def attributes(self) -> dict[str, Any]:
        """The step span's attributes for this outcome."""
        attrs: dict[str, Any] = {
            "paymaster.decision": self.decision,
            "paymaster.budget.mode": self.mode,
            "paymaster.budget_id": list(self.budget_ids),
            **self.scopes.attributes(),
        }
        for key, value in (
            # Spend replayed under fail_open has no reservation: its replay id stands in, so trace
            # ingestion, which skips spans carrying a reservation id, never charges it a second time.
            ("paymaster.reservation_id", self.reservation_id or self.usage_id),
            ("paymaster.usage_id", self.usage_id),
            ("paymaster.deciding_budget_id", self.deciding_budget_id),
            ("paymaster.budget.reason", self.reason),
            ("paymaster.downgraded_from", self.downgraded_from),
            ("paymaster.downgraded_to", self.downgraded_to),
            ("paymaster.request_budget", self.request_budget),
        ):
            if value:
                attrs[key] = value
        if self.warnings:
            attrs["paymaster.budget.warnings"] = list(self.warnings)
        return attrs


class SidecarBudget:
    """The sidecar's budgets for a runner; see the module docstring.

    ``target`` is ``host:port`` (default ``$PAYMASTER_SIDECAR``, else ``127.0.0.1:7310``). ``scopes``
    are merged over the OpenTelemetry resource's ``paymaster.*`` attributes, and a step's own scopes
    over both. Every call to the sidecar has ``deadline_s`` in total, retrying transport failures up
    to ``retries`` times with jittered exponential backoff from ``backoff_s``; ``breaker_failures``
    calls in a row that find no sidecar open a circuit breaker, after which calls fail at once (the
    fail policy applies without waiting) until a probe after ``breaker_reset_s`` (doubling while the
    sidecar stays away) reaches it again. ``reservation_ttl_s`` is the TTL of per-step reservations
    (default: the sidecar's). ``journal_dir`` keeps spend the sidecar has not confirmed yet across
    process restarts (``None``: in memory only). ``config`` supplies the ``[downgrade]`` mapping
    (default: the ``paymaster.toml`` the usual search finds).

    Credentials, for a sidecar with ``[auth]`` on: ``token`` is sent as ``authorization: Bearer``
    on every call — a string, or a callable returning the current token — or ``token_file`` names a
    file holding it, read again whenever it changes (a mounted Kubernetes Secret that is rotated).
    ``ca_file`` turns on TLS and verifies the sidecar's certificate; ``cert_file`` and ``key_file``
    add a client certificate (mutual TLS); the certificate files are followed when they change too.
    Each unset one comes from ``$PAYMASTER_TOKEN``, ``$PAYMASTER_TOKEN_FILE``, ``$PAYMASTER_SIDECAR_CA``,
    ``$PAYMASTER_SIDECAR_CERT`` and ``$PAYMASTER_SIDECAR_KEY``; with none, the channel is plaintext
    without a token (a loopback sidecar without ``[auth]``). A sidecar that refuses the credentials
    (``UNAUTHENTICATED``) is handled by the fail policy like one that cannot be reached, with a
    message that says so; the token never appears in ``repr()``, errors or logs.

    One ``SidecarBudget`` may serve many runners, in many threads: they share its connection,
    circuit breaker and journal (and, with ``LeasePolicy(shared=True)``, its leases). ``close()`` (or
    ``with``) commits its shared leases and ends its background work.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        scopes: Scopes | Mapping[str, str] | None = None,
        fail_policy: FailPolicy = FAIL_CLOSED,
        deadline_s: float = 0.5,
        retries: int = 2,
        backoff_s: float = 0.025,
        breaker_failures: int = 3,
        breaker_reset_s: float = 5.0,
        reservation_ttl_s: float | None = None,
        lease: LeasePolicy | None = None,
        journal_dir: str | Path | Literal["default"] | None = "default",
        config: PaymasterConfig | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        token: str | Callable[[], str | None] | None = None,
        token_file: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:

        self.target = _check_target(target or os.environ.get(TARGET_ENV_VAR) or DEFAULT_TARGET)
        self.scopes = Scopes.coerce(scopes, where="SidecarBudget") or Scopes()
        if fail_policy not in FAIL_POLICIES:
            raise ConfigError(
                f"SidecarBudget: fail_policy must be one of {list(FAIL_POLICIES)}, got {fail_policy!r}"
            )
        self.fail_policy: FailPolicy = fail_policy
        _positive(deadline_s, "deadline_s")
        _positive(backoff_s, "backoff_s")
        _positive(breaker_reset_s, "breaker_reset_s")
        _count(retries, "retries", minimum=0)
        _count(breaker_failures, "breaker_failures", minimum=1)
        if reservation_ttl_s is not None and not 0 < reservation_ttl_s <= 3600:
            raise ConfigError(
                f"SidecarBudget: reservation_ttl_s must be in (0, 3600] seconds, got {reservation_ttl_s}"
            )
        if lease is not None and not isinstance(lease, LeasePolicy):
            raise ConfigError(f"SidecarBudget: lease must be a LeasePolicy, got {type(lease).__name__}")
        self.deadline_s = deadline_s
        self.reservation_ttl_s = reservation_ttl_s
        self.lease = lease
        self._config = config
        directory = default_journal_dir() if journal_dir == "default" else journal_dir
        try:
            from paymaster._sidecar.breaker import CircuitBreaker
            from paymaster._sidecar.client import SidecarClient
            from paymaster._sidecar.credentials import Credentials
            from paymaster._sidecar.journal import Journal
            from paymaster._sidecar.replay import Replayer
            from paymaster._sidecar.shared_leases import SharedLeases
        except ImportError as exc:
            raise ConfigError(
                f"SidecarBudget needs grpc and protobuf ({exc.name} is missing): pip install 'paymaster[sidecar]'"
            ) from None
        try:
            credentials = Credentials.resolve(
                token=token, token_file=token_file, ca_file=ca_file, cert_file=cert_file, key_file=key_file
            )
        except ConfigError as exc:
            raise ConfigError(f"SidecarBudget: {exc}") from None
        self._lock = threading.Lock()
        self._telemetry: Telemetry | None = None
        self.breaker = CircuitBreaker(
            failure_threshold=breaker_failures, reset_after_s=breaker_reset_s, on_change=self._breaker_changed
        )
        self.client = SidecarClient(
            self.target,
            deadline_s=deadline_s,
            retries=retries,
            backoff_s=backoff_s,
            breaker=self.breaker,
            channel_options=channel_options,
            credentials=credentials,
        )
        self.journal = Journal(None if directory is None else Path(directory), target=self.target)
        self.replayer = Replayer(
            self.client,
            self.journal,
            count_call=self.count_call,
            count_replay=self.count_replay,
            timeout_s=deadline_s,
        )
        self.shared_leases = SharedLeases(self, lease) if lease is not None and lease.shared else None
        """The leases every run draws from, with ``LeasePolicy(shared=True)``."""
        self._resource_scopes: dict[Any, Scopes] = {}
        self._adopted = False
        self._closed = False

    # ------------------------------------------------------------------ public
    @property
    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        return self.breaker.state

    def pending_usage(self) -> list[PendingUsage]:
        """Spend kept for replay that the sidecar has not confirmed yet, oldest first."""
        return self.journal.pending()

    def flush(self, timeout_s: float = 5.0) -> int:
        """Replay pending spend now and wait up to ``timeout_s``; returns how many records are still
        pending (0 when the sidecar has confirmed everything)."""
        self._adopt()
        return self.replayer.flush(timeout_s)

    def close(self) -> None:
        """Stop background replay and close the connection. Pending spend stays in the journal
        directory for the next process (or is lost with a memory-only journal: a warning says so)."""
        if self._closed:
            return
        self._closed = True
        if self.shared_leases is not None:
            self.shared_leases.close()  # commits go through the journal if the sidecar is away
        self.replayer.stop()
        left = len(self.journal)
        if left and self.journal.directory is None:
            log.warning(
                "SidecarBudget(%s) closed with %d unreplayed usage record(s) ($%s) in a memory-only journal",
                self.target,
                left,
                self.journal.pending_usd(),
            )
        self.journal.close()
        self.client.close()

    def __enter__(self) -> SidecarBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SidecarBudget({self.target!r}, scopes=({self.scopes}), fail_policy={self.fail_policy!r})"

    # ------------------------------------------------------------------ used by Runner
    def check_runner(self, usage_limits: UsageLimits) -> None:
        """Refuse a runner this budget cannot govern as configured."""
        if self.fail_policy == LOCAL_ONLY_LIMITS and usage_limits.is_unlimited:
            raise ConfigError(
                "Runner: fail_policy='local_only_limits' falls back to the runner's own limits when the "
                "sidecar is unreachable, and this runner has none: give it usage_limits=UsageLimits(...), "
                "or use fail_policy='fail_open' or 'fail_closed'"
            )

    def open_session(self, run: Any, tracer_provider: Any, telemetry: Telemetry) -> BudgetSession:
        """The gate one run consults (see ``paymaster._gate``)."""
        from paymaster._sidecar.session import BudgetSession

        if self._closed:
            raise ConfigError(f"{self!r} is closed; build a new SidecarBudget for this runner")
        self._telemetry = telemetry
        self._adopt()
        return BudgetSession(
            self, run, self.base_scopes(tracer_provider), service=self.service_name(tracer_provider)
        )

    def base_scopes(self, tracer_provider: Any) -> Scopes:
        """The resource's scopes with this budget's over them (read once per provider; without one,
        the global provider of the moment, so a provider installed after the runner was built counts)."""
        if tracer_provider is None:
            from opentelemetry import trace

            tracer_provider = trace.get_tracer_provider()
        found = self._resource_scopes.get(tracer_provider)
        if found is None:
            found = Scopes.from_resource(tracer_provider).merged(self.scopes)
            self._resource_scopes[tracer_provider] = found
        return found

    def request_budget(
        self,
        limit_usd: Any = None,
        *,
        fraction: Any = None,
        name: str = "",
        request_id: str | None = None,
        idle_ttl_s: float | None = None,
        tiers: Sequence[tuple[int, str]] = (),
        nested: bool = True,
    ) -> RequestBudget:
        """A request budget for the ``with`` (or ``async with``) block it opens: one limit for one request
        across every service it touches (``paymaster.request_budget``). Inside another, it is opened as
        its child (at most ``limit_usd`` or ``fraction`` of what the parent has left) unless
        ``nested=False``. ``tiers`` are ``(percent, action)`` pairs, e.g. ``[(80, "downgrade"), (100,
        "block")]``; ``idle_ttl_s`` defaults to the sidecar's. If the sidecar cannot be reached, the fail
        policy decides: ``fail_closed`` raises ``SidecarUnavailableError``, the others run the block
        without a request budget (and log a warning)."""
        from paymaster.request_budget import RequestBudget

        if self._closed:
            raise ConfigError(f"{self!r} is closed; build a new SidecarBudget")
        return RequestBudget(
            self, limit_usd, fraction=fraction, name=name, request_id=request_id, idle_ttl_s=idle_ttl_s,
            tiers=tiers, nested=nested,
        )  # fmt: skip

    def service_name(self, tracer_provider: Any) -> str:
        """The OpenTelemetry ``service.name`` of ``tracer_provider`` (or the global one): what a request
        budget's spend by service calls this process; '' when it has none."""
        if tracer_provider is None:
            from opentelemetry import trace

            tracer_provider = trace.get_tracer_provider()
        attributes = getattr(getattr(tracer_provider, "resource", None), "attributes", None)
        if isinstance(attributes, Mapping):
            name = str(attributes.get("service.name") or "")
        else:
            name = os.environ.get("OTEL_SERVICE_NAME", "")
        return "" if name.startswith("unknown_service") else name[:128]

    @property
    def downgrades(self) -> Mapping[str, str]:
        """The ``[downgrade]`` model mapping."""
        if self._config is None:
            from paymaster.config import get_config

            return get_config().downgrade
        return self._config.downgrade

    # ------------------------------------------------------------------ counters
    @property
    def telemetry(self) -> Telemetry | None:
        """The telemetry of the runs this budget governs (the last one to open a session)."""
        return self._telemetry

    def count_call(self, rpc: str, outcome: str) -> None:
        self._add("paymaster.sidecar.calls", {"rpc": rpc, "outcome": outcome})

    def count_replay(self, outcome: str) -> None:
        self._add("paymaster.sidecar.replays", {"outcome": outcome})

    def _breaker_changed(self, state: str) -> None:
        log.log(
            logging.WARNING if state == "open" else logging.INFO,
            "paymaster: circuit breaker for the sidecar at %s is %s",
            self.target,
            state,
        )
        self._add("paymaster.sidecar.breaker", {"state": state})
        if state == "closed" and (len(self.journal) or self.replayer.pending_releases):
            self.replayer.wake()

    def _add(self, name: str, attributes: dict[str, str]) -> None:
        telemetry = self._telemetry
        if telemetry is not None:
            telemetry.count(name, 1, attributes)

    def _adopt(self) -> None:
        """Take over the journals of processes that ended, once, on the replayer's thread: the file work
        and its fsyncs never run on a runner's event loop, and the replayer sends what it adopted."""
        with self._lock:
            if self._adopted:
                return
            self._adopted = True
        self.replayer.adopt(self._adopt_orphans)

    def _adopt_orphans(self) -> None:
        try:
            self.journal.adopt_orphans()
        except OSError as exc:
            log.warning("paymaster: cannot read the replay journal in %s: %s", self.journal.directory, exc)
        except Exception:  # the replayer thread must live on to send what this process journals
            log.exception("paymaster: adopting the replay journals in %s failed", self.journal.directory)


def _check_target(target: str) -> str:
    if target.startswith(("unix:", "unix-abstract:")) and len(target) > 5:
        return target
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"SidecarBudget: target must be 'host:port' (e.g. '127.0.0.1:7310'), got {target!r}"
        )
    return target


def _positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"SidecarBudget: {name} must be a positive number of seconds, got {value!r}")


def _count(value: int, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"SidecarBudget: {name} must be a whole number >= {minimum}, got {value!r}")
