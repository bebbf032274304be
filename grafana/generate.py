"""Generate Paymaster's Grafana dashboards and their panel reference from one description.

    python grafana/generate.py          # rewrite grafana/dashboards/*.json and grafana/README.md

The committed JSON is what Grafana loads; this script keeps the three dashboards consistent (one
datasource variable, the same scope and budget variables, a unit and a description on every panel,
a grid without overlaps) and the test suite checks that the committed files are what it generates.
Every PromQL expression here is also run against a real Prometheus by the integration test.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCOPE = 'scope=~"$scope"'
BUDGET = 'budget=~"$budget"'
SEL = "{" + SCOPE + ", " + BUDGET + "}"
INSTANCE = 'instance=~"$instance"'


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    targets: list[tuple[str, str]]  # (expr, legend)
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    instant: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    thresholds: list[tuple[float, str]] | None = None


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    variables: list[dict[str, Any]]
    rows: list[tuple[str, list[Panel]]]


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [],
    }  # fmt: skip


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "sort": 1,
        "regex": "",
        "options": [],
    }


SCOPE_VAR = query_variable("scope", "Scope", "label_values(paymaster_budget_info, scope)")
BUDGET_VAR = query_variable(
    "budget", "Budget", 'label_values(paymaster_budget_info{scope=~"$scope"}, budget)'
)
SPEND_SCOPE_VAR = query_variable("scope", "Scope", "label_values(paymaster_scope_spend_usd_total, scope)")
INSTANCE_VAR = query_variable("instance", "Sidecar", 'label_values(up{job="paymaster-sidecar"}, instance)')

PERCENT_STEPS = [(0, "green"), (50, "yellow"), (80, "orange"), (100, "red")]


def per_budget(metric: str) -> str:
    """One series per budget and entity, whichever replica reported it."""
    return f"max by (budget, scope, scope_id) ({metric}{SEL})"


def rate(metric: str, selector: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval]))"


def per_hour(metric: str, selector: str, by: str) -> str:
    return f"{rate(metric, selector, by)} * 3600"


def quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))"
    )


# -- Budgets overview ------------------------------------------------------------------------------
BUDGETS = Dashboard(
    uid="paymaster-budgets",
    title="Paymaster / Budgets overview",
    description="Every budget's standing in its current period, who spends, what was decided and alerted.",
    variables=[datasource_variable(), SCOPE_VAR, BUDGET_VAR],
    rows=[
        (
            "Standing",
            [
                Panel(
                    "Budgets",
                    "How many budgets match the selection.",
                    "none",
                    [(f"count(max by (budget) (paymaster_budget_info{SEL}))", "budgets")],
                    kind="stat",
                    width=4,
                    height=4,
                    instant=True,
                ),
                Panel(
                    "Exhausted",
                    "Budget entities whose committed spend has reached the limit.",
                    "none",
                    [
                        (
                            f"count({per_budget('paymaster_budget_used_percent')} >= 100) or vector(0)",
                            "exhausted",
                        )
                    ],
                    kind="stat",
                    width=4,
                    height=4,
                    instant=True,
                    thresholds=[(0, "green"), (1, "red")],
                ),
                Panel(
                    "Held by reservations",
                    "USD held right now by reservations in flight, across all budgets.",
                    "currencyUSD",
                    [("max(paymaster_reservations_held_usd)", "held")],
                    kind="stat",
                    width=4,
                    height=4,
                    instant=True,
                ),
                Panel(
                    "Active reservations",
                    "Reservations held right now (not yet committed, released or expired).",
                    "none",
                    [("max(paymaster_reservations_active)", "active")],
                    kind="stat",
                    width=4,
                    height=4,
                    instant=True,
                ),
                Panel(
                    "Entities with spend",
                    "Entities with spend or holds this period, per selected budget "
                    "(wildcard budgets count every entity, including those beyond the metrics cap).",
                    "none",
                    [(f"sum(max by (budget) (paymaster_budget_entities{SEL}))", "entities")],
                    kind="stat",
                    width=4,
                    height=4,
                    instant=True,
                ),
                Panel(
                    "Budget alerts active",
                    "Prometheus budget alerts pending or firing (from the Paymaster rules).",
                    "none",
                    [('count(ALERTS{alertname=~"PaymasterBudget.*"}) or vector(0)', "alerts")],
                    kind="stat",
                    width=4,
                    height=4,
                    instant=True,
                    thresholds=[(0, "green"), (1, "orange")],
                ),
                Panel(
                    "Burn-down: used against limit",
                    "Committed spend of each budget and entity through its "
                    "period, with its limit as a dashed line: where the lines meet, the budget is exhausted.",
                    "currencyUSD",
                    [
                        (per_budget("paymaster_budget_used_usd"), "{{budget}} {{scope_id}} used"),
                        (per_budget("paymaster_budget_limit_usd"), "{{budget}} {{scope_id}} limit"),
                    ],
                    width=16,
                    height=9,
                    options={
                        "overrides": [
                            {
                                "matcher": {"id": "byRegexp", "options": ".* limit"},
                                "properties": [
                                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                                ],
                            }
                        ]
                    },
                ),
                Panel(
                    "Percentage used",
                    "Committed spend as a percentage of the limit; yellow from 50%, orange "
                    "from 80%, red at 100% (the alert thresholds).",
                    "percent",
                    [(per_budget("paymaster_budget_used_percent"), "{{budget}} {{scope_id}}")],
                    kind="bargauge",
                    width=8,
                    height=9,
                    instant=True,
                    thresholds=PERCENT_STEPS,
                ),
            ],
        ),
        (
            "Projection",
            [
                Panel(
                    "Projected spend at period end",
                    "Spend at the end of the period if the burn rate since it "
                    "started holds, against the limit (rolling windows: their current spend).",
                    "currencyUSD",
                    [
                        (per_budget("paymaster_budget_projected_usd"), "{{budget}} {{scope_id}} projected"),
                        (per_budget("paymaster_budget_limit_usd"), "{{budget}} {{scope_id}} limit"),
                    ],
                    width=8,
                ),
                Panel(
                    "Burn rate (USD per hour)",
                    "Committed spend per hour since the period started.",
                    "currencyUSD",
                    [(per_budget("paymaster_budget_burn_rate_usd_per_hour"), "{{budget}} {{scope_id}}")],
                    width=8,
                ),
                Panel(
                    "Time until exhausted",
                    "How long the remaining budget lasts at the current burn rate "
                    "(budgets that are not burning are left out).",
                    "s",
                    [
                        (
                            f"{per_budget('paymaster_budget_exhaustion_seconds')} < +Inf",
                            "{{budget}} {{scope_id}}",
                        )
                    ],
                    kind="bargauge",
                    width=8,
                    instant=True,
                ),
                Panel(
                    "Remaining",
                    "Limit minus committed spend minus what reservations hold.",
                    "currencyUSD",
                    [(per_budget("paymaster_budget_remaining_usd"), "{{budget}} {{scope_id}}")],
                    width=8,
                ),
                Panel(
                    "Reserved",
                    "Held by reservations in flight, per budget and entity.",
                    "currencyUSD",
                    [(per_budget("paymaster_budget_reserved_usd"), "{{budget}} {{scope_id}}")],
                    width=8,
                ),
                Panel(
                    "Period ends",
                    "When each budget's current period resets.",
                    "dateTimeFromNow",
                    [
                        (
                            f"1000 * {per_budget('paymaster_budget_period_end_timestamp_seconds')}",
                            "{{budget}} {{scope_id}}",
                        )
                    ],
                    kind="bargauge",
                    width=8,
                    instant=True,
                ),
            ],
        ),
        (
            "Spenders, decisions and alerts",
            [
                Panel(
                    "Top spenders by scope",
                    "The ten entities with the most spend over the dashboard's time range, per scope.",
                    "currencyUSD",
                    [
                        (
                            f"topk(10, sum by (scope, scope_id) (increase(paymaster_scope_spend_usd_total{{{SCOPE}}}"
                            "[$__range])))",
                            "{{scope}}={{scope_id}}",
                        )
                    ],
                    kind="bargauge",
                    width=8,
                    instant=True,
                ),
                Panel(
                    "Decisions",
                    "Reserve answers per second by decision: allow, warn (allowed past a warn "
                    "budget), downgrade and deny.",
                    "reqps",
                    [(rate("paymaster_decisions_total", 'rpc="reserve"', "decision"), "{{decision}}")],
                    width=8,
                ),
                Panel(
                    "Denials and downgrades by budget",
                    "Which budgets decide against requests, per second.",
                    "reqps",
                    [
                        (
                            rate(
                                "paymaster_decisions_total",
                                f'{BUDGET}, decision=~"deny|downgrade|warn"',
                                "budget, decision",
                            ),
                            "{{budget}} {{decision}}",
                        )
                    ],
                    width=8,
                ),
                Panel(
                    "Alerts fired by threshold",
                    "Threshold alerts the sidecars fired over the time range, by "
                    "budget and threshold (each fires once per period).",
                    "none",
                    [
                        (
                            f"sum by (budget, threshold) (increase(paymaster_alerts_fired_total{{{BUDGET}}}[$__range]))",
                            "{{budget}} at {{threshold}}%",
                        )
                    ],
                    kind="bargauge",
                    width=12,
                    instant=True,
                ),
                Panel(
                    "Budget alerts",
                    "Paymaster budget alerts in Prometheus, by alert and state.",
                    "none",
                    [
                        (
                            'count by (alertname, alertstate) (ALERTS{alertname=~"PaymasterBudget.*"})',
                            "{{alertname}} ({{alertstate}})",
                        )
                    ],
                    width=12,
                ),
            ],
        ),
    ],
)

# -- Spend explorer --------------------------------------------------------------------------------
SCOPE_PANELS = [
    Panel(
        f"Cost by {scope} (USD per hour)",
        f"Spend charged to the ledger per {scope}; ids past the metrics cap are grouped as __other__.",
        "currencyUSD",
        [(per_hour("paymaster_scope_spend_usd_total", f'scope="{scope}"', "scope_id"), "{{scope_id}}")],
        width=6,
    )
    for scope in ("team", "agent", "workflow", "user")
]

SPEND = Dashboard(
    uid="paymaster-spend",
    title="Paymaster / Spend explorer",
    description="Cost and tokens by model, provider and scope over time, and how good the SDK's estimates are.",
    variables=[datasource_variable(), SPEND_SCOPE_VAR, BUDGET_VAR],
    rows=[
        (
            "Cost",
            [
                Panel(
                    "Cost by model (USD per hour)",
                    "Spend charged to the ledger by provider and model.",
                    "currencyUSD",
                    [
                        (
                            per_hour("paymaster_spend_usd_total", "", "provider, model"),
                            "{{provider}} {{model}}",
                        )
                    ],
                    width=12,
                ),
                Panel(
                    "Cost by provider (USD per hour)",
                    "Spend charged to the ledger by provider.",
                    "currencyUSD",
                    [(per_hour("paymaster_spend_usd_total", "", "provider"), "{{provider}}")],
                    width=6,
                ),
                Panel(
                    "Cost by model over the range",
                    "Total spend per model over the dashboard's time range.",
                    "currencyUSD",
                    [
                        (
                            "sort_desc(sum by (model) (increase(paymaster_spend_usd_total[$__range])))",
                            "{{model}}",
                        )
                    ],
                    kind="bargauge",
                    width=6,
                    instant=True,
                ),
                *SCOPE_PANELS,
                Panel(
                    "Cost by selected scope (USD per hour)",
                    "Spend per entity of the scopes chosen above.",
                    "currencyUSD",
                    [
                        (
                            per_hour("paymaster_scope_spend_usd_total", SCOPE, "scope, scope_id"),
                            "{{scope}}={{scope_id}}",
                        )
                    ],
                    width=12,
                ),
                Panel(
                    "Spend of the selected budgets",
                    "Committed spend this period of the budgets chosen above.",
                    "currencyUSD",
                    [(f"sum by (budget) ({per_budget('paymaster_budget_used_usd')})", "{{budget}}")],
                    width=12,
                ),
            ],
        ),
        (
            "Tokens",
            [
                Panel(
                    "Tokens by model (per second)",
                    "Tokens charged to the ledger by model and type (input, output, other).",
                    "short",
                    [(rate("paymaster_spend_tokens_total", "", "model, type"), "{{model}} {{type}}")],
                    width=12,
                ),
                Panel(
                    "Tokens by selected scope (per second)",
                    "Tokens charged per entity of the scopes chosen above.",
                    "short",
                    [
                        (
                            rate("paymaster_scope_spend_tokens_total", SCOPE, "scope, scope_id"),
                            "{{scope}}={{scope_id}}",
                        )
                    ],
                    width=12,
                ),
            ],
        ),
        (
            "SDK: estimates and steps",
            [
                Panel(
                    "Cost estimation variance (US cents)",
                    "How far agent steps' actual cost was from the "
                    "estimate reserved for them, over the range: most steps should land in 0 and <=1.",
                    "none",
                    [
                        (
                            'sum by (bucket) (increase(estimation_variance_count_total{type="cost"}[$__range]))',
                            "{{bucket}}",
                        )
                    ],
                    kind="bargauge",
                    width=6,
                    instant=True,
                ),
                Panel(
                    "Token estimation variance",
                    "How far agent steps' actual tokens were from the estimate.",
                    "none",
                    [
                        (
                            'sum by (bucket) (increase(estimation_variance_count_total{type="tokens"}[$__range]))',
                            "{{bucket}}",
                        )
                    ],
                    kind="bargauge",
                    width=6,
                    instant=True,
                ),
                Panel(
                    "SDK cost by step (USD per hour)",
                    "Spend the SDK priced, by pipeline step.",
                    "currencyUSD",
                    [(per_hour("paymaster_cost_usd_total", "", "step"), "{{step}}")],
                    width=6,
                ),
                Panel(
                    "SDK tokens by model (per second)",
                    "Tokens the SDK counted, by model and direction.",
                    "short",
                    [(rate("paymaster_tokens_total", "", "model, type"), "{{model}} {{type}}")],
                    width=6,
                ),
                Panel(
                    "Steps by outcome (per second)",
                    "Agent steps finished: ok, failed, denied, cancelled, halted.",
                    "ops",
                    [(rate("paymaster_steps_total", "", "outcome"), "{{outcome}}")],
                    width=8,
                ),
                Panel(
                    "Steps denied before running",
                    "Steps the SDK's quota refused over the range, by reason.",
                    "none",
                    [("sum by (code) (increase(quota_denials_total[$__range]))", "{{code}}")],
                    kind="bargauge",
                    width=8,
                    instant=True,
                ),
                Panel(
                    "Estimator strategies (per second)",
                    "Which estimator priced each step.",
                    "ops",
                    [(rate("estimator_usage_total", "", "strategy"), "{{strategy}}")],
                    width=8,
                ),
            ],
        ),
    ],
)

# -- Sidecar health --------------------------------------------------------------------------------
HEALTH = Dashboard(
    uid="paymaster-sidecar",
    title="Paymaster / Sidecar health",
    description="Latency, throughput and errors of the budget API, the ledger store, and the OTLP pipeline.",
    variables=[datasource_variable(), INSTANCE_VAR],
    rows=[
        ("Budget API", [
            Panel("Sidecars up", "Sidecar replicas Prometheus can scrape.", "none",
                  [('sum(up{job="paymaster-sidecar"})', "up")], kind="stat", width=4, height=4, instant=True),
            Panel("Requests per second", "All budget API requests.", "reqps",
                  [(f"sum(rate(paymaster_rpc_requests_total{{{INSTANCE}}}[$__rate_interval]))", "requests")],
                  kind="stat", width=4, height=4, instant=True),
            Panel("Reserve p99", "99th percentile Reserve latency, arrival to answer.", "s",
                  [(quantile(0.99, "paymaster_rpc_duration_seconds", f'{INSTANCE}, method="Reserve"'), "p99")],
                  kind="stat", width=4, height=4, instant=True, thresholds=[(0, "green"), (0.1, "orange"),
                                                                            (0.25, "red")]),
            Panel("Error ratio", "Share of requests answered with a status other than OK.", "percentunit",
                  [(f'sum(rate(paymaster_rpc_requests_total{{{INSTANCE}, code!="OK"}}[$__rate_interval])) / '
                    f"sum(rate(paymaster_rpc_requests_total{{{INSTANCE}}}[$__rate_interval]))", "errors")],
                  kind="stat", width=4, height=4, instant=True),
            Panel("Active reservations", "Reservations held now, per sidecar.", "none",
                  [(f"paymaster_reservations_active{{{INSTANCE}}}", "{{instance}}")], kind="stat", width=4,
                  height=4, instant=True),
            Panel("Build", "Sidecar versions running.", "none",
                  [(f"count by (version) (paymaster_build_info{{{INSTANCE}}})", "{{version}}")], kind="stat",
                  width=4, height=4, instant=True),
            Panel("Throughput by method", "Budget API requests per second by method.", "reqps",
                  [(rate("paymaster_rpc_requests_total", INSTANCE, "method"), "{{method}}")], width=12),
            Panel("Refusals and errors by code", "Requests answered with a status other than OK: "
                  "INVALID_ARGUMENT and NOT_FOUND are callers' mistakes, UNAVAILABLE and INTERNAL are ours.", "reqps",
                  [(rate("paymaster_rpc_requests_total", f'{INSTANCE}, code!="OK"', "method, code"),
                    "{{method}} {{code}}")], width=12),
            Panel("Reserve latency", "Reserve latency percentiles, arrival to answer (group commit included).",
                  "s", [(quantile(q, "paymaster_rpc_duration_seconds", f'{INSTANCE}, method="Reserve"'), f"p{label}")
                        for q, label in ((0.5, "50"), (0.9, "90"), (0.99, "99"))], width=12),
            Panel("p99 latency by method", "99th percentile latency of each budget API method.", "s",
                  [(quantile(0.99, "paymaster_rpc_duration_seconds", INSTANCE, "method"), "{{method}}")], width=12),
        ]),
        ("Ledger store", [
            Panel("Store operations per second", "Ledger store operations by operation.", "ops",
                  [(rate("paymaster_store_operation_seconds_count", INSTANCE, "operation"), "{{operation}}")],
                  width=8),
            Panel("Store p99 latency by operation", "99th percentile duration of each store operation.", "s",
                  [(quantile(0.99, "paymaster_store_operation_seconds", INSTANCE, "operation"), "{{operation}}")],
                  width=8),
            Panel("Store errors", "Store operations that failed (unavailable: busy or unreachable; "
                  "batch_aborted: a shared transaction rolled back and re-run; internal).", "ops",
                  [(rate("paymaster_store_errors_total", INSTANCE, "operation, kind"), "{{operation}} {{kind}}")],
                  width=8),
            Panel("Metrics read time", "How long the sidecar takes to read budget standings for a scrape.", "s",
                  [(f"paymaster_metrics_read_seconds{{{INSTANCE}}}", "{{instance}}")], width=12),
            Panel("USD held by reservations", "What reservations in flight hold, per sidecar.", "currencyUSD",
                  [(f"paymaster_reservations_held_usd{{{INSTANCE}}}", "{{instance}}")], width=12),
        ]),
        ("OTLP pipeline", [
            Panel("OTLP requests by outcome", "OTLP export requests received, by signal, transport and outcome.",
                  "reqps", [(rate("paymaster_otlp_requests_total", INSTANCE, "signal, transport, outcome"),
                             "{{signal}} {{transport}} {{outcome}}")], width=12),
            Panel("Spans received, priced and charged", "Spans per second through the pricing processor into "
                  "the ledger.", "ops",
                  [(rate("paymaster_otlp_spans_received_total", INSTANCE, "transport"), "received {{transport}}"),
                   (rate("paymaster_otlp_spans_priced_total", INSTANCE, "source"), "priced {{source}}"),
                   (rate("paymaster_otlp_spans_charged_total", INSTANCE, "outcome"), "charged {{outcome}}")], width=12),
            Panel("Cost ingested from OTLP (USD per hour)", "Spend priced from spans and charged to the ledger.",
                  "currencyUSD", [(per_hour("paymaster_otlp_cost_usd_total", INSTANCE, "instance"), "{{instance}}")],
                  width=8),
            Panel("Metric points received", "OTLP metric data points received per second.", "ops",
                  [(rate("paymaster_otlp_metric_points_received_total", INSTANCE, "transport"), "{{transport}}")],
                  width=8),
            Panel("Forwarded and dropped", "Telemetry forwarded onward, and dropped (queue full, export failed).",
                  "ops", [(rate("paymaster_otlp_forwarded_total", INSTANCE, "signal"), "forwarded {{signal}}"),
                          (rate("paymaster_otlp_dropped_total", INSTANCE, "signal, reason"),
                           "dropped {{signal}} {{reason}}")], width=8),
        ]),
    ],
)  # fmt: skip

DASHBOARDS = (BUDGETS, SPEND, HEALTH)


# -- rendering -------------------------------------------------------------------------------------
def render(d: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for row_title, row in d.rows:
        panels.append({"type": "row", "id": next_id, "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        next_id, y, x, row_height = next_id + 1, y + 1, 0, 0
        for panel in row:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(render_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["paymaster"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": d.variables},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["paymaster"], "asDropdown": True, "title": "Paymaster"}],
        "panels": panels,
    }


def render_panel(p: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    steps = [{"color": color, "value": None if i == 0 else value} for i, (value, color) in
             enumerate(p.thresholds or [(0, "green")])]  # fmt: skip
    defaults: dict[str, Any] = {"unit": p.unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if p.kind == "bargauge" and p.unit == "percent":
        defaults.update({"min": 0, "max": 100})
    options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    if p.kind in ("stat", "bargauge"):
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal"}  # fmt: skip
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": p.options.get("overrides", [])},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "instant": p.instant,
                "range": not p.instant,
            }
            for i, (expr, legend) in enumerate(p.targets)
        ],
    }


README_INTRO = """\
# Grafana dashboards

Three dashboards over the sidecar's metrics (`/metrics`, see [docs/metrics.md](../docs/metrics.md)) and
the SDK's OpenTelemetry metrics after a Collector:

- **Budgets overview** (`paymaster-budgets`): every budget's burn-down against its limit, projections,
  top spenders by scope, decisions and alerts.
- **Spend explorer** (`paymaster-spend`): cost and tokens by model, provider, team, agent, workflow and
  user over time, and the SDK's estimation variance.
- **Sidecar health** (`paymaster-sidecar`): latency, throughput and errors of the budget API, the ledger
  store, and the OTLP pipeline.

## Loading them

`provisioning/` wires a Prometheus data source (uid `prometheus`, at `http://prometheus:9090`) and a
dashboard provider that loads `dashboards/*.json` into a "Paymaster" folder. Mount both into a
Grafana container, as `deploy/compose/compose.yaml` does:

```yaml
volumes:
  - ../../grafana/provisioning:/etc/grafana/provisioning:ro
  - ../../grafana/dashboards:/var/lib/grafana/dashboards/paymaster:ro
```

To import a dashboard by hand instead, upload its JSON and pick the Prometheus data source for the
`datasource` variable.

Every dashboard has a `datasource` variable. Budgets overview and Spend explorer are templated by
`scope` and `budget` (multi-select, "All" by default); Sidecar health by `instance` (the sidecars of
the `paymaster-sidecar` scrape job). Budget gauges are the same on every replica (they describe the
shared ledger), so panels take `max by (budget, scope, scope_id)`; counters are per replica and are
summed.

## Changing them

The JSON is generated: edit `generate.py`, run `python grafana/generate.py`, and commit the JSON and
this file. The test suite checks that the committed files are what the script generates, validates
the JSON against `dashboard.schema.json`, and runs every panel's PromQL against a real Prometheus
scraping a real sidecar.
"""


def panel_reference() -> str:
    lines = [
        README_INTRO.rstrip("\n"),
        "",
        "## Panels",
        "",
        "What each panel is for; the unit is Grafana's unit id.",
    ]
    for d in DASHBOARDS:
        lines += ["", f"### {d.title} (`{d.uid}`)", "", d.description, ""]
        lines += ["| row | panel | unit | what it is for |", "|---|---|---|---|"]
        for row_title, row in d.rows:
            for p in row:
                lines.append(f"| {row_title} | {p.title} | `{p.unit}` | {p.description} |")
    return "\n".join(lines) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {
        HERE / "dashboards" / f"{d.uid}.json": json.dumps(render(d), indent=2, sort_keys=True) + "\n"
        for d in DASHBOARDS
    }
    files[HERE / "README.md"] = panel_reference()
    return files


def main() -> int:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
