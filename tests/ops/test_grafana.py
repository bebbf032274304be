"""grafana/: generated dashboards that match their generator, pass the schema, and are wired for Grafana."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tests.ops.conftest import GRAFANA
from tests.ops.dashboards import committed, generator, panels, variables_in

GRAFANA_BUILTINS = {"__range", "__rate_interval", "__interval", "__all"}


def test_the_committed_files_are_what_the_generator_makes() -> None:
    """Edit grafana/generate.py and run it; never edit the JSON by hand."""
    for path, text in generator().outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run python grafana/generate.py"


def test_there_are_the_three_dashboards() -> None:
    assert set(committed()) == {"paymaster-budgets", "paymaster-spend", "paymaster-sidecar"}


@pytest.mark.parametrize("uid", sorted(committed()))
def test_each_dashboard_passes_the_schema(uid: str) -> None:
    schema = json.loads((GRAFANA / "dashboard.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(committed()[uid], schema)


def test_the_schema_refuses_a_panel_without_a_unit() -> None:
    schema = json.loads((GRAFANA / "dashboard.schema.json").read_text())
    dashboard = committed()["paymaster-budgets"]
    del panels(dashboard)[0]["fieldConfig"]["defaults"]["unit"]
    with pytest.raises(jsonschema.ValidationError, match="'unit' is a required property"):
        jsonschema.validate(dashboard, schema)


@pytest.mark.parametrize("uid", sorted(committed()))
def test_panels_do_not_overlap_and_have_unique_ids(uid: str) -> None:
    dashboard = committed()[uid]
    cells: dict[tuple[int, int], str] = {}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("uid", sorted(committed()))
def test_every_variable_a_panel_uses_is_defined(uid: str) -> None:
    dashboard = committed()[uid]
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in defined
    for v in dashboard["templating"]["list"]:
        assert variables_in(json.dumps(v.get("query", ""))) <= defined | GRAFANA_BUILTINS
    for panel in panels(dashboard):
        for target in panel["targets"]:
            assert variables_in(target["expr"]) <= defined | GRAFANA_BUILTINS, (
                panel["title"],
                target["expr"],
            )


def test_budget_dashboards_are_templated_by_scope_and_budget() -> None:
    for uid in ("paymaster-budgets", "paymaster-spend"):
        names = [v["name"] for v in committed()[uid]["templating"]["list"]]
        assert names == ["datasource", "scope", "budget"]


def test_the_readme_documents_every_panel() -> None:
    readme = (GRAFANA / "README.md").read_text()
    for dashboard in committed().values():
        for panel in panels(dashboard):
            assert f"| {panel['title']} |" in readme, panel["title"]


def test_provisioning_wires_a_prometheus_datasource_and_the_dashboards() -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/paymaster.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"].startswith("http://")
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/paymaster.yaml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/paymaster"
