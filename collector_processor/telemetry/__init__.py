"""The sidecar's own telemetry: what it counts, and the exporters that show it.

``selfmetrics`` is the in-memory registry every component counts on; ``service_metrics`` turns the
ledger's answers (requests, decisions, commits, spend by model and scope, alerts) into its series,
for the budget API and the OTLP receiver alike; ``budget_gauges`` reads budget standings from the
store at scrape time; ``prometheus`` serves them at ``/metrics``; ``otlp_push`` pushes the same
figures over OTLP; ``exporters`` wires ``[metrics]`` (``config``) to all of them.
"""
