"""Budget definitions in the Redis store: read, create, change, delete and reconcile with the config.

Every change is one function call that first checks the definition it was computed from is still the
stored one (compare-and-set), and bumps the definitions' version that every money-changing function
checks, so a change made through any replica is seen by all of them on their next request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from collector_processor.domain.access import AuditEvent, budget_record
from collector_processor.domain.budgets import Budget, BudgetPatch, Scope, apply_patch
from collector_processor.errors import AlreadyExistsError, NotFoundError, StoreUnavailableError
from collector_processor.store.redis.access import audit_json
from collector_processor.store.redis.codec import budget_from_json, budget_json
from collector_processor.store.redis.link import RedisLink
from collector_processor.store.shared import plan_config_sync, refuse_config
from paymaster.exceptions import quote

__all__ = ["BudgetRows"]

_ATTEMPTS = 8


class BudgetRows:
    """The ``{namespace}:budgets`` hash, through the store's link."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._key = link.key("budgets")
        # What the budget functions touch besides the meta key: the definitions, the dead list, the audit log.
        self._keys = (self._key, link.key("dead"), link.key("audit:seq"), link.key("audit"))

    def load(self) -> tuple[int, list[Budget]]:
        """The definitions' version and every budget, read together."""
        reply = self._link.script("load_budgets", [], self._keys)
        return int(reply[0]), [budget_from_json(reply[i]) for i in range(2, len(reply), 2)]

    def create(self, budget: Budget, audit: AuditEvent | None = None) -> Budget:
        event = audit_json(replace(audit, after=budget_record(budget))) if audit is not None else ""
        reply = self._link.script(
            "budget_ops", ["create", budget.id, budget_json(budget, with_generation=False), event], self._keys
        )
        if reply[0] == "EXISTS":
            raise AlreadyExistsError(f"budget {quote(budget.id)} exists already")
        return replace(budget, generation=int(reply[1]))

    def raw(self, budget_id: str) -> str:
        found: str | None = self._link.call(lambda: self._link.client.hget(self._key, budget_id))
        if found is None:
            raise NotFoundError(f"budget {quote(budget_id)} does not exist")
        return found

    def get(self, budget_id: str) -> Budget:
        return budget_from_json(self.raw(budget_id))

    def list(self, *, scope: Scope | None, scope_id: str | None, after_id: str, limit: int) -> list[Budget]:
        everything: dict[str, str] = self._link.call(lambda: self._link.client.hgetall(self._key))
        budgets = sorted(
            (budget_from_json(v) for k, v in everything.items() if k > after_id), key=lambda b: b.id
        )
        return [
            b
            for b in budgets
            if (scope is None or b.scope is scope) and (scope_id is None or b.scope_id == scope_id)
        ][:limit]

    def update(
        self, budget_id: str, patch: BudgetPatch, *, now_ms: int, allow_config: bool, audit: AuditEvent | None
    ) -> Budget:
        for _ in range(_ATTEMPTS):
            raw = self.raw(budget_id)
            current = budget_from_json(raw)
            refuse_config(current, allow_config, "changed")
            updated = apply_patch(current, patch, now_ms=now_ms)
            stored = budget_json(updated, with_generation=True)
            event = ""
            if audit is not None:
                event = audit_json(
                    replace(audit, before=budget_record(current), after=budget_record(updated))
                )
            reply = self._link.script("budget_ops", ["replace", budget_id, raw, stored, event], self._keys)
            if reply[0] == "OK":
                return updated
        raise StoreUnavailableError(
            f"budget {quote(budget_id)} kept changing while this update was tried; retry"
        )

    def delete(self, budget_id: str, *, allow_config: bool, audit: AuditEvent | None) -> None:
        for _ in range(_ATTEMPTS):
            raw = self.raw(budget_id)
            current = budget_from_json(raw)
            refuse_config(current, allow_config, "deleted")
            dead = f"{current.id}@{current.generation}"  # its state is collected by housekeeping
            event = audit_json(replace(audit, before=budget_record(current))) if audit is not None else ""
            if (
                self._link.script("budget_ops", ["delete", budget_id, raw, dead, event], self._keys)[0]
                == "OK"
            ):
                return
        raise StoreUnavailableError(
            f"budget {quote(budget_id)} kept changing while this delete was tried; retry"
        )

    def sync(self, budgets: Sequence[Budget], *, now_ms: int) -> None:
        for _ in range(_ATTEMPTS):
            version, existing = self.load()
            plan = plan_config_sync(existing, budgets, now_ms=now_ms)
            ops: list[str] = []
            for old in plan.delete:
                ops += ["d", old.id, f"{old.id}@{old.generation}"]
            for new in plan.insert:
                ops += ["i", new.id, budget_json(new, with_generation=False)]
            for changed in plan.replace:
                ops += ["r", changed.id, budget_json(changed, with_generation=True)]
            if self._link.script("budget_ops", ["sync", str(version), *ops], self._keys)[0] == "OK":
                return
        raise StoreUnavailableError("budgets kept changing while the config budgets were reconciled; retry")
