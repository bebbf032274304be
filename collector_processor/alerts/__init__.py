"""Alerts: delivery of the threshold alerts the store fires, to WatchAlerts streams and to notifiers.

``dispatch`` holds ``AlertHub`` (the WatchAlerts streams) and ``AlertDispatcher`` (hands each alert
to every sink once, leased from the store's durable log); ``sinks`` holds the notifiers, an
OpenTelemetry log record and a webhook. Firing is the store's job, inside the charge that crossed
the threshold; this package only reads the log.
"""

from __future__ import annotations

from collector_processor.alerts.dispatch import AlertDispatcher, AlertHub, AlertSink
from collector_processor.alerts.sinks import OtelLogSink, WebhookSink

__all__ = ["AlertDispatcher", "AlertHub", "AlertSink", "OtelLogSink", "WebhookSink"]
