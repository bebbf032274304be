"""deploy/: Kubernetes manifests valid against the Kubernetes schemas, the compose file, the Collector
config and the Dockerfile consistent with each other and with the sidecar's config keys."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from collector_processor.config import DEFAULT_METRICS_LISTEN, parse_config
from paymaster.config import parse_config as parse_pricing
from tests.ops.conftest import DEPLOY, ROOT
from tests.ops.secure import SECRET_FILES, compose_mounts, lay_out, make_secrets, rooted

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"


def manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def by_kind(kind: str) -> dict:
    (found,) = [m for m in manifests() if m["kind"] == kind]
    return found


def certificates() -> dict[str, dict]:
    """The optional cert-manager objects (custom resources: not in the Kubernetes schemas), by name."""
    docs = yaml.safe_load_all((K8S / "cert-manager" / "certificates.yaml").read_text())
    return {d["metadata"]["name"]: d for d in docs if d and d["kind"] == "Certificate"}


def sidecar_container() -> dict:
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


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
    """Readiness asks gRPC health over TLS (the kubelet's own gRPC probe cannot), naming a host the
    certificate is for; liveness and start-up check the port."""
    deployment = by_kind("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["readinessProbe"]["exec"]["command"]
    assert command[0] == "paymaster" and command[-3:] == ["health", "--service", "paymaster.v1.BudgetService"]
    flags = dict(zip(command[1:-3:2], command[2:-3:2], strict=True))
    assert flags["--target"] == "127.0.0.1:7310" and flags["--ca"] == "/etc/paymaster/tls/ca.crt"
    certificate = certificates()["paymaster-sidecar"]
    assert flags["--server-name"] in certificate["spec"]["dnsNames"]
    assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    assert container["startupProbe"]["tcpSocket"]["port"] == "grpc"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert by_kind("PodDisruptionBudget")["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_the_configmap_carries_a_sidecar_config_on_redis_and_valid_prices(tmp_path: Path) -> None:
    data = by_kind("ConfigMap")["data"]
    assert data["sidecar.toml"] == (DEPLOY / "sidecar.docker.toml").read_text()
    check_sidecar_config(data["sidecar.toml"], lay_out(make_secrets(tmp_path / "secrets"), tmp_path / "root"))
    prices = parse_pricing(
        data["paymaster.toml"], path="configmap:paymaster.toml"
    )  # the SDK's own validation
    assert prices is not None


def check_sidecar_config(text: str, root: Path) -> None:
    """The container config: the Redis store as agreed, auth on with TLS on every listener from the
    mounted Secrets, and everything else valid for this sidecar (with those files where compose puts
    them, under ``root``)."""
    raw = tomllib.loads(text)
    assert raw["store"] == {"kind": "redis", "url": "redis://redis:6379/0"}
    config = parse_config(rooted(text, root), source="sidecar.docker.toml")
    assert config.store.kind == "redis"
    assert config.metrics.enabled and config.metrics.listen.endswith(DEFAULT_METRICS_LISTEN.rsplit(":")[1])
    assert config.server.listen == "0.0.0.0:7310"
    assert config.auth.enabled and config.metrics.require_token
    assert not any(listener.allow_unauthenticated for listener in config.listeners())
    for listener in config.listeners():
        assert listener.tls.cert_file == f"{root}/etc/paymaster/tls/tls.crt", listener.key
        assert listener.tls.key_file == f"{root}/etc/paymaster/tls/tls.key", listener.key
    assert config.auth.tokens_file == f"{root}/etc/paymaster/tokens/tokens.toml"


def test_the_service_exposes_the_sidecar_ports() -> None:
    (service,) = [
        m for m in manifests() if m["kind"] == "Service" and m["metadata"]["name"] == "paymaster-sidecar"
    ]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": 7310, "otlp-grpc": 7317, "otlp-http": 7318, "metrics": 7319}


def test_the_collector_forwards_to_the_sidecar_and_a_tracing_backend_and_exposes_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    assert config["exporters"]["otlp/paymaster"]["endpoint"] == "sidecar:7317"
    assert "extensions" in config["service"]
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
            if source.startswith("./secrets/"):
                # Made by make-secrets.sh, never committed (deploy/compose/.gitignore).
                assert source.removeprefix("./secrets/") in SECRET_FILES, source
            elif source.startswith("."):
                assert (base / source).exists(), source
    assert (base / ".gitignore").read_text().split() == ["secrets/"]
    grafana = services["grafana"]["volumes"]
    assert "../../grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in prometheus["scrape_configs"]}
    assert targets["paymaster-sidecar"] == ["sidecar:7319"]
    sidecar_job = next(c for c in prometheus["scrape_configs"] if c["job_name"] == "paymaster-sidecar")
    prometheus_mounts = dict((t, s) for s, t in compose_mounts()["prometheus"])
    assert prometheus_mounts[sidecar_job["authorization"]["credentials_file"]] == "prometheus.token"
    assert prometheus_mounts[sidecar_job["tls_config"]["ca_file"]] == "ca.crt"
    assert targets["otel-collector"] == ["otel-collector:8889"]


def test_the_dockerfile_is_small_and_runs_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert all(image.endswith("-slim") for image in stages), "slim base images only"
    assert re.search(r"^USER 10001", text, re.M)
    assert "EXPOSE 7310 7317 7318 7319" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), source


# -- authentication and TLS ------------------------------------------------------------------------
def test_the_sidecar_reads_its_certificate_and_tokens_from_mounted_secrets() -> None:
    """Mounted as folders (no subPath, so a renewed certificate reaches the pod), read-only, and named
    by the config in the ConfigMap; no Secret object (and so no key or token) is in the manifests."""
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secrets.values()} == {
        "paymaster-sidecar-tls",
        "paymaster-sidecar-tokens",
    }
    mounts = {m["name"]: m for m in sidecar_container()["volumeMounts"]}
    for name, secret in secrets.items():
        assert mounts[name]["readOnly"] is True and "subPath" not in mounts[name]
        assert secret["defaultMode"] & 0o007 == 0, "not readable by other users"
    by_secret = {s["secretName"]: mounts[n]["mountPath"] for n, s in secrets.items()}
    config = tomllib.loads((DEPLOY / "sidecar.docker.toml").read_text())
    tls_dir = by_secret["paymaster-sidecar-tls"]
    for block in (config["server"]["tls"], config["receivers"]["otlp"]["tls"], config["metrics"]["tls"]):
        assert block == {"cert_file": f"{tls_dir}/tls.crt", "key_file": f"{tls_dir}/tls.key"}
    assert config["auth"]["tokens_file"] == f"{by_secret['paymaster-sidecar-tokens']}/tokens.toml"
    assert certificates()["paymaster-sidecar"]["spec"]["secretName"] == "paymaster-sidecar-tls"
    assert "Secret" not in {m["kind"] for m in manifests()}
    # The config itself is mounted apart: a Secret folder inside a ConfigMap's read-only folder fails.
    assert mounts["config"]["mountPath"] == "/etc/paymaster/config"
    assert sidecar_container()["args"] == ["--config", "/etc/paymaster/config/sidecar.toml"]


def test_the_certificate_names_the_service_in_every_form_clients_use() -> None:
    service = next(
        m for m in manifests() if m["kind"] == "Service" and m["metadata"]["name"] == "paymaster-sidecar"
    )
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    spec = certificates()["paymaster-sidecar"]["spec"]
    name = service["metadata"]["name"]
    assert set(spec["dnsNames"]) >= {name, f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"}
    assert spec["usages"] == ["server auth"] and spec["privateKey"]["rotationPolicy"] == "Always"
    ca = certificates()["paymaster-ca"]["spec"]
    assert ca["isCA"] is True


def test_the_network_policy_admits_labelled_namespaces_to_the_api_and_prometheus_to_metrics() -> None:
    policies = {m["metadata"]["name"]: m["spec"] for m in manifests() if m["kind"] == "NetworkPolicy"}
    sidecar = policies["paymaster-sidecar"]
    assert sidecar["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "paymaster-sidecar"}
    assert sidecar["policyTypes"] == ["Ingress"]
    api, metrics = sidecar["ingress"]
    assert {"namespaceSelector": {"matchLabels": {"paymaster.dev/access": "true"}}} in api["from"]
    assert {p["port"] for p in api["ports"]} == {"grpc", "otlp-grpc", "otlp-http"}
    ((peer,),) = [metrics["from"]]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    named = {p["name"] for p in sidecar_container()["ports"]}
    assert {p["port"] for rule in sidecar["ingress"] for p in rule["ports"]} == named
    redis = policies["paymaster-redis"]
    assert redis["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "paymaster-sidecar"}}}],
                                 "ports": [{"port": "redis", "protocol": "TCP"}]}]  # fmt: skip


def test_the_collector_sends_a_token_from_a_file_over_tls() -> None:
    config = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    exporter = config["exporters"]["otlp/paymaster"]
    authenticator = exporter["auth"]["authenticator"]
    assert authenticator.startswith("bearertokenauth") and authenticator in config["service"]["extensions"]
    assert set(config["extensions"][authenticator]) == {"filename"}, "the token is read from a file"
    assert "insecure" not in exporter["tls"] and exporter["tls"]["ca_file"]
    scrape = config["receivers"]["prometheus/sidecar"]["config"]["scrape_configs"][0]
    assert scrape["scheme"] == "https" and set(scrape["authorization"]) == {"type", "credentials_file"}
    mounts = dict((t, s) for s, t in compose_mounts()["otel-collector"])
    assert mounts[config["extensions"][authenticator]["filename"]] == "collector.token"
    assert mounts[scrape["authorization"]["credentials_file"]] == "collector.token"
    assert mounts[exporter["tls"]["ca_file"]] == "ca.crt"


INLINE_SECRETS = [
    re.compile(r"pmt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"),  # an issued-form token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # a token written into a config (a literal, not a file name or a shell substitution)
    re.compile(r"""(?m)^\s*(token|credentials|bearer_token)\s*[:=]\s*["']?[A-Za-z0-9_.~+/-]{16,}"""),
    re.compile(r"(?m)^\s*sha256\s*=\s*\"[0-9a-f]{64}\""),  # a tokens file entry
]


@pytest.mark.parametrize(
    "path", sorted(p for p in DEPLOY.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_no_token_or_key_is_committed_in_deploy(path: Path) -> None:
    text = path.read_text(errors="replace")
    for pattern in INLINE_SECRETS:
        assert not pattern.search(text), f"{path.relative_to(ROOT)}: {pattern.pattern}"


def test_the_inline_secret_check_finds_what_it_looks_for() -> None:
    """The check above is not vacuous: each pattern matches what it stands for."""
    made = [
        "pmt_0123456789ab_" + "A" * 43,
        "-----BEGIN EC PRIVATE KEY-----",
        '  token: "my-long-collector-token-1234"',  # a token written into the collector's config
        'sha256 = "' + "0" * 64 + '"',
    ]
    assert all(p.search(text) for p, text in zip(INLINE_SECRETS, made, strict=True))
