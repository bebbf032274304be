"""What the budget service counts: requests and their latency, decisions, commits, spend, alerts fired.

``ServiceMetrics`` turns answered requests into ``SelfMetrics`` counters and histograms. It is called
once a request's answer is durable — after the group commit that made it so — so nothing is counted
twice when a shared transaction is rolled back and its calls run again, and a refused request counts
only as a request. Any receiver that charges spend through the ledger (OTLP) calls ``committed`` or
``recorded`` the same way, so spend by model and by scope covers every path into the ledger.

Labels are bounded: ``method``, ``code``, ``decision`` and ``type`` are fixed sets; ``budget`` takes
the ids of configured budgets. Entity ids (``scope_id``) and models come from clients, so each has a
cap: past ``max_entities_per_scope`` distinct ids of one scope, further ids are counted under
``scope_id="__other__"``, and past ``max_models`` distinct provider/model pairs, under
``provider="__other__", model="__other__"``. Ids seen first keep their own series for the life of the process.

Alerts fired by a charge are counted by budget and threshold. The store reports them as sequences of
its alert log; they are looked up when the metrics are read (``resolve_alerts``), off the request path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from decimal import Decimal

from collector_processor.domain.budgets import SCOPE_ORDER, OnExceed, Scope, ScopeSet
from collector_processor.domain.money import micros_to_usd
from collector_processor.domain.types import (
    BudgetInfo,
    CheckOutcome,
    CommitCommand,
    CommitOutcome,
    Decision,
    RecordUsageCommand,
    RecordUsageOutcome,
    ReserveOutcome,
    UsageBatchOutcome,
    UsageFacts,
    UsageGroup,
)
from collector_processor.store.base import LedgerStore
from collector_processor.telemetry.selfmetrics import Labels, SelfMetrics, label_key
from paymaster.vocabulary import NO_MODEL

__all__ = ["OTHER", "REQUEST_LABEL", "ServiceMetrics"]

OTHER = "__other__"
"""The label value that stands for every id past a cardinality cap."""

_MAX_PENDING_ALERTS = 10_000
_MAX_KEYS = 4096
_OUTCOME_KEYS = {kind: label_key({"outcome": kind}) for kind in ("charged", "late", "duplicate")}

_HELP = {
    "paymaster_rpc_requests_total": "Budget API requests answered, by method and gRPC status code.",
    "paymaster_rpc_duration_seconds": "Time from a budget API request's arrival to its answer, by method.",
    "paymaster_decisions_total": (
        "Answers to Reserve and CheckBudget, by rpc, decision (allow, warn, downgrade, deny) and the budget "
        "that decided (empty for allow)."
    ),
    "paymaster_commits_total": "Commits, by outcome (charged, late, duplicate).",
    "paymaster_spend_usd_total": "USD charged to the ledger, by provider and model.",
    "paymaster_spend_tokens_total": "Tokens charged to the ledger, by provider, model and type (input, output, other).",
    "paymaster_scope_spend_usd_total": "USD charged to the ledger, by scope and scope id.",
    "paymaster_scope_spend_tokens_total": "Tokens charged to the ledger, by scope and scope id.",
    "paymaster_alerts_fired_total": "Budget threshold alerts fired by this sidecar, by budget and threshold.",
}


REQUEST_LABEL = "(request budget)"
"""The ``budget`` label of decisions a request budget took."""


class ServiceMetrics:
    """Counts the budget service's answers on a ``SelfMetrics``; safe to call from any thread."""

    def __init__(
        self, metrics: SelfMetrics, *, max_entities_per_scope: int = 100, max_models: int = 200
    ) -> None:
        self.metrics = metrics
        for name, text in _HELP.items():
            metrics.describe(name, text)
        self._max_entities = max_entities_per_scope
        self._max_models = max_models
        self._lock = threading.Lock()
        self._entities: dict[str, set[str]] = {scope.value: set() for scope in SCOPE_ORDER}
        self._models: set[tuple[str, str]] = set()
        self._pending_alerts: list[int] = []
        # Series keys computed once: by (method, code); by (rpc, decision, budget), up to _MAX_KEYS; by
        # admitted model; by admitted (scope, id). The caps above bound the last two.
        self._request_keys: dict[tuple[str, str], tuple[Labels, Labels]] = {}
        self._decision_keys: dict[tuple[str, str, str], Labels] = {}
        self._model_series: dict[tuple[str, str], tuple[Labels, tuple[Labels, ...]]] = {}
        self._entity_series: dict[tuple[str, str], Labels] = {}

    # -- requests --------------------------------------------------------------------------------
    def request(self, method: str, code: str, seconds: float) -> None:
        """One answered request: its method, gRPC status code name and latency."""
        keys = self._request_keys.get((method, code))
        if keys is None:  # methods and codes are fixed sets: this memo stays small
            keys = self._request_keys[(method, code)] = (
                label_key({"method": method}),
                label_key({"method": method, "code": code}),
            )
        self.metrics.observe_key("paymaster_rpc_duration_seconds", keys[0], seconds)
        self.metrics.add((("paymaster_rpc_requests_total", keys[1], 1),))

    def reserved(self, outcome: ReserveOutcome) -> None:
        if not outcome.replayed:  # a retry repeats an answer; it is not a new decision
            self._decision("reserve", outcome.decision, outcome.deciding_budget_id, outcome.budget_info)

    def checked(self, outcome: CheckOutcome) -> None:
        self._decision("check", outcome.decision, outcome.deciding_budget_id, outcome.budget_info)

    def _decision(self, rpc: str, decision: Decision, deciding: str, infos: Sequence[BudgetInfo]) -> None:
        label = decision.value
        if decision is Decision.ALLOW:
            warned = next((i for i in infos if i.tier is not None and i.tier.action is OnExceed.WARN), None)
            if warned is not None:
                label, deciding = "warn", warned.budget_id
        if deciding and not any(i.budget_id == deciding and i.scope is not Scope.REQUEST for i in infos):
            deciding = REQUEST_LABEL  # one per request: an id each would be a label without bound
        key = self._decision_keys.get((rpc, label, deciding))
        if key is None:
            key = label_key({"rpc": rpc, "decision": label, "budget": deciding})
            if len(self._decision_keys) < _MAX_KEYS:  # budget ids are the operators': few, not a fixed set
                self._decision_keys[(rpc, label, deciding)] = key
        self.metrics.add((("paymaster_decisions_total", key, 1),))

    # -- spend -----------------------------------------------------------------------------------
    def committed(self, command: CommitCommand, outcome: CommitOutcome) -> None:
        kind = "duplicate" if outcome.duplicate else "late" if outcome.late else "charged"
        counted = ("paymaster_commits_total", _OUTCOME_KEYS[kind], 1)
        if outcome.duplicate:
            self.metrics.add((counted,))
            return
        facts = outcome.usage or command.usage
        tokens = command.actual_tokens or facts.input_tokens + facts.output_tokens
        self._charged(outcome.scopes, facts, outcome.charged_usd, tokens, outcome.alerts_fired, counted)

    def recorded(self, command: RecordUsageCommand, outcome: RecordUsageOutcome) -> None:
        if not outcome.duplicate:
            facts = outcome.usage or command.usage
            tokens = command.total_tokens or facts.input_tokens + facts.output_tokens
            scopes = outcome.scopes if outcome.scopes is not None else command.scopes
            self._charged(scopes, facts, outcome.charged_usd, tokens, outcome.alerts_fired)

    def batch_recorded(self, groups: Sequence[UsageGroup], outcome: UsageBatchOutcome) -> None:
        """Count the spend of a durable batch (the OTLP receiver's): each group that charged money, by
        its model and scopes, and the alerts the batch fired."""
        counts: list[tuple[str, Labels, float]] = []
        for group, micros in zip(groups, outcome.charged_micros, strict=True):
            if micros:
                facts = UsageFacts(provider=group.provider, model=group.model)
                self._charge_counts(counts, group.scopes, facts, float(micros_to_usd(micros)), 0)
        self.metrics.add(counts)  # the whole batch under one lock
        self._note_alerts(outcome.alerts_fired)

    def _charged(
        self,
        scopes: ScopeSet | None,
        facts: UsageFacts,
        usd: Decimal,
        tokens: int,
        alerts: Sequence[int],
        *also: tuple[str, Labels, float],
    ) -> None:
        """Count a charge (and the increments in ``also``) under one lock."""
        counts = list(also)
        self._charge_counts(counts, scopes, facts, float(usd), tokens)
        self.metrics.add(counts)
        self._note_alerts(alerts)

    def _charge_counts(
        self,
        counts: list[tuple[str, Labels, float]],
        scopes: ScopeSet | None,
        facts: UsageFacts,
        cost: float,
        tokens: int,
    ) -> None:
        """Append the increments of one charge of ``cost`` USD and ``tokens`` tokens to ``counts``."""
        by_model, by_type = self._model_keys(facts.provider or NO_MODEL, facts.model or NO_MODEL)
        counts.append(("paymaster_spend_usd_total", by_model, cost))
        other = max(tokens - facts.input_tokens - facts.output_tokens, 0)
        for key, count in zip(by_type, (facts.input_tokens, facts.output_tokens, other), strict=True):
            if count:
                counts.append(("paymaster_spend_tokens_total", key, count))
        for scope, entity in scopes.pairs() if scopes is not None else ():
            key = self._entity_key(scope.value, entity)
            counts.append(("paymaster_scope_spend_usd_total", key, cost))
            if tokens:
                counts.append(("paymaster_scope_spend_tokens_total", key, tokens))

    def _model_keys(self, provider: str, model: str) -> tuple[Labels, tuple[Labels, ...]]:
        """The series keys of a model's spend and of its three token types (after the model cap)."""
        keys = self._model_series.get((provider, model))
        if keys is not None:
            return keys
        p, m = self._model(provider, model)
        keys = (
            label_key({"provider": p, "model": m}),
            tuple(label_key({"provider": p, "model": m, "type": t}) for t in ("input", "output", "other")),
        )
        if (p, m) == (provider, model):  # only admitted models are kept: their number is capped
            self._model_series[(provider, model)] = keys
        return keys

    def _entity_key(self, scope: str, entity: str) -> Labels:
        key = self._entity_series.get((scope, entity))
        if key is None:
            shown = self._entity(scope, entity)
            key = label_key({"scope": scope, "scope_id": shown})
            if shown == entity:  # only admitted ids are kept: their number is capped
                self._entity_series[(scope, entity)] = key
        return key

    def _note_alerts(self, alerts: Sequence[int]) -> None:
        """Keep fired alerts' sequences until ``resolve_alerts`` reads them (at most the latest few)."""
        if alerts:
            with self._lock:
                self._pending_alerts.extend(alerts)
                del self._pending_alerts[:-_MAX_PENDING_ALERTS]

    def _entity(self, scope: str, entity: str) -> str:
        with self._lock:
            seen = self._entities[scope]
            if entity in seen:
                return entity
            if len(seen) < self._max_entities:
                seen.add(entity)
                return entity
        return OTHER

    def _model(self, provider: str, model: str) -> tuple[str, str]:
        key = (provider, model)
        with self._lock:
            if key in self._models:
                return key
            if len(self._models) < self._max_models:
                self._models.add(key)
                return key
        return OTHER, OTHER

    # -- alerts ----------------------------------------------------------------------------------
    def resolve_alerts(self, store: LedgerStore) -> None:
        """Count the alerts fired since the last call by budget and threshold, reading them from the log."""
        with self._lock:
            pending, self._pending_alerts = sorted(set(self._pending_alerts)), []
        while pending:
            found = store.alerts_after(pending[0] - 1, limit=min(len(pending) + 100, 1000))
            by_sequence = {alert.sequence: alert for alert in found}
            last = found[-1].sequence if found else pending[-1]
            for sequence in [s for s in pending if s <= last]:
                alert = by_sequence.get(sequence)
                if alert is not None:  # not found: pruned already, which takes weeks
                    labels = {"budget": alert.budget_id, "threshold": str(alert.threshold_percent)}
                    self.metrics.inc("paymaster_alerts_fired_total", 1, labels)
            pending = [s for s in pending if s > last]
