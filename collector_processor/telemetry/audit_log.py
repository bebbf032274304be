"""Changes to budgets and tokens as OpenTelemetry log records (event ``paymaster.audit``).

The durable audit log is the store's (``paymaster audit`` reads it); this emits each change, as the
sidecar that made it saw it, to the application's log pipeline too, so a SIEM or a log backend gets
it without polling. The record names who, from where, what and the state before and after; it never
carries a token's secret or hash.
"""

from __future__ import annotations

import logging
from typing import Any

from collector_processor.domain.access import AuditEvent

__all__ = ["EVENT_NAME", "OtelAuditLog"]

EVENT_NAME = "paymaster.audit"
log = logging.getLogger("paymaster.sidecar.audit")


class OtelAuditLog:
    """Emits audit events on a logger provider (the global one by default)."""

    def __init__(self, logger_provider: Any = None) -> None:
        from opentelemetry import _logs

        provider = logger_provider or _logs.get_logger_provider()
        self._logger = provider.get_logger("paymaster.sidecar")
        self._severity = _logs.SeverityNumber.INFO

    def __call__(self, event: AuditEvent) -> None:
        attributes = {
            "paymaster.audit.principal": event.principal,
            "paymaster.audit.address": event.address,
            "paymaster.audit.action": event.action,
            "paymaster.audit.target": event.target,
            "paymaster.audit.before": event.before,
            "paymaster.audit.after": event.after,
        }
        if event.scope:
            attributes[f"paymaster.{event.scope}"] = event.scope_id
        try:
            self._logger.emit(
                event_name=EVENT_NAME,
                severity_number=self._severity,
                severity_text="INFO",
                body=f"{event.principal} {event.action} {event.target}",
                attributes=attributes,
            )
        except Exception:  # a broken exporter must not fail the change, which is durable already
            log.exception("could not emit the audit event %s %s as a log record", event.action, event.target)
