"""deploy/: Kubernetes manifests valid against the Kubernetes schemas, the compose file, the Collector
config and the Dockerfile consistent with each other and with the sidecar's config keys."""

from __future__ import annotations

import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from collector_processor.config import DEFAULT_METRICS_LISTEN, parse_config
from paymaster.config import parse_config as parse_pricing
from tests.ops.conftest import DEPLOY, ROOT

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"


def manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def by_kind(kind: str) -> dict:
    (found,) = [m for m in manifests() if m["kind"] == kind]
    return found


@pytest.mark.parametrize("manifest", manifests(), ids=lambda m: f"{m['kind']}-{m['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schema(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_misspelled_field() -> None:
    deployment = by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_deployment_runs_replicas_probed_over_grpc_health_with_requests() -> None:
    deployment = by_kind("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 7310, "service": "paymaster.v1.BudgetService"}
    assert container["livenessProbe"]["grpc"]["port"] == 7310
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert by_kind("PodDisruptionBudget")["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_the_configmap_carries_a_sidecar_config_on_redis_and_valid_prices() -> None:
    data = by_kind("ConfigMap")["data"]
    assert data["sidecar.toml"] == (DEPLOY / "sidecar.docker.toml").read_text()
    check_sidecar_config(data["sidecar.toml"])
    prices = parse_pricing(
        data["paymaster.toml"], path="configmap:paymaster.toml"
    )  # the SDK's own validation
    assert prices is not None


def check_sidecar_config(text: str) -> None:
    """The container config: the Redis store as agreed, and everything else valid for this sidecar."""
    raw = tomllib.loads(text)
    assert raw["store"] == {"kind": "redis", "url": "redis://redis:6379/0"}
    config = parse_config(text, source="sidecar.docker.toml")
    assert config.store.kind == "redis"
    assert config.metrics.enabled and config.metrics.listen.endswith(DEFAULT_METRICS_LISTEN.rsplit(":")[1])
    assert config.server.listen == "0.0.0.0:7310"


def test_the_service_exposes_the_sidecar_ports() -> None:
    (service,) = [
        m for m in manifests() if m["kind"] == "Service" and m["metadata"]["name"] == "paymaster-sidecar"
    ]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": 7310, "otlp-grpc": 7317, "otlp-http": 7318, "metrics": 7319}


def test_the_collector_forwards_to_the_sidecar_and_a_tracing_backend_and_exposes_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    assert config["exporters"]["otlp/paymaster"]["endpoint"] == "sidecar:7317"
    pipelines = config["service"]["pipelines"]
    assert {"otlp/paymaster", "otlp/tracing"} <= set(pipelines["traces"]["exporters"])
    assert "prometheus" in pipelines["metrics"]["exporters"]
    scrape = config["receivers"]["prometheus/sidecar"]["config"]["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["sidecar:7319"]
    for name, pipeline in pipelines.items():
        for part in ("receivers", "processors", "exporters"):
            for component in pipeline.get(part, []):
                assert component in config[part], f"{name} uses undefined {part[:-1]} {component}"
    assert config["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True


def test_the_compose_file_starts_the_stack_with_the_provisioning() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"sidecar", "redis", "otel-collector", "prometheus", "grafana"} <= set(services)
    base = DEPLOY / "compose"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).exists(), source
    grafana = services["grafana"]["volumes"]
    assert "../../grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in prometheus["scrape_configs"]}
    assert targets["paymaster-sidecar"] == ["sidecar:7319"]
    assert targets["otel-collector"] == ["otel-collector:8889"]


def test_the_dockerfile_is_small_and_runs_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert all(image.endswith("-slim") for image in stages), "slim base images only"
    assert re.search(r"^USER 10001", text, re.M)
    assert "EXPOSE 7310 7317 7318 7319" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), source
