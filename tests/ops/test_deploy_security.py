"""deploy/ with authentication and TLS on, run for real: the container config (deploy/sidecar.docker.toml)
starts a sidecar with the certificate and tokens deploy/compose/make-secrets.sh makes, placed where
compose mounts them; the CLI reaches it with the CA and the admin token; a real Prometheus scrapes its
/metrics with the scrape jobs of deploy/ (its own, and the OpenTelemetry Collector's) and is refused
without a token. The commented security blocks of deploy/sidecar.example.toml are valid once
uncommented."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from collector_processor.api.server import Sidecar, create_sidecar
from collector_processor.config import parse_config
from paymaster.cli import main
from tests.certs import Authority
from tests.ops.conftest import DEPLOY, require_tool
from tests.ops.secure import lay_out, make_secrets, rooted

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    sidecar: Sidecar
    root: Path
    """Where the containers' files are (``root/etc/paymaster/tls/ca.crt`` ...)."""
    secrets: Path
    ports: dict[str, int]

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.ports['server']}"

    def cli(self, *args: str) -> int:
        return main(["--target", self.api, "--timeout", "5", *args])


def container_config(root: Path, ports: dict[str, int], db: Path) -> str:
    """deploy/sidecar.docker.toml on this machine: files under ``root``, loopback ports, SQLite."""
    text = rooted((DEPLOY / "sidecar.docker.toml").read_text(), root)
    for key, listen in (("server", "0.0.0.0:7310"), ("otlp_grpc", "0.0.0.0:7317"),
                        ("otlp_http", "0.0.0.0:7318"), ("metrics", "0.0.0.0:7319")):  # fmt: skip
        assert f'"{listen}"' in text, listen
        text = text.replace(f'"{listen}"', f'"127.0.0.1:{ports[key]}"')
    store = '[store]\nkind = "redis"\nurl = "redis://redis:6379/0"\n'
    assert store in text
    return text.replace(store, f'[store]\npath = "{db}"\n')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("secure-deploy")
    secrets = make_secrets(tmp / "secrets")
    root = lay_out(secrets, tmp / "root")
    ports = {name: free_port() for name in ("server", "otlp_grpc", "otlp_http", "metrics")}
    config = parse_config(container_config(root, ports, tmp / "ledger.db"), source="sidecar.docker.toml")
    sidecar = create_sidecar(config).start()
    yield Stack(sidecar, root, secrets, ports)
    sidecar.stop(0)


# -- the budget API --------------------------------------------------------------------------------
def test_the_cli_reaches_the_container_config_with_the_ca_and_the_admin_token(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the compose file's comments tell a laptop user to do."""
    ca = str(stack.secrets / "ca.crt")
    admin = str(stack.secrets / "admin.token")
    monkeypatch.setenv("PAYMASTER_SIDECAR_CA", ca)
    monkeypatch.setenv("PAYMASTER_TOKEN_FILE", admin)
    assert stack.cli("budgets", "create", "--id", "laptop-daily", "--scope", "team", "--scope-id", "laptop",
                     "--limit", "5", "--period", "daily", "--on-exceed", "block") == 0  # fmt: skip
    assert stack.cli("--json", "tokens", "list") == 0
    capsys.readouterr()
    assert stack.cli("--json", "audit") == 0
    (event,) = json.loads(capsys.readouterr().out)["events"]
    assert (event["principal"], event["action"]) == ("admin", "budget.create")
    # The compose healthcheck: health needs no token.
    monkeypatch.delenv("PAYMASTER_TOKEN_FILE")
    assert stack.cli("health") == 0
    assert stack.cli("budgets", "list") == 1
    assert "the sidecar refused the credentials (no token was sent" in capsys.readouterr().err
    # The collector's and Prometheus's tokens may not change budgets.
    for name in ("collector", "prometheus"):
        token_file = str(stack.secrets / f"{name}.token")
        assert stack.cli("--token-file", token_file, "budgets", "delete", "laptop-daily") == 1
        assert "not permitted with these credentials" in capsys.readouterr().err


def test_a_plaintext_client_gets_nowhere(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert stack.cli("--token-file", str(stack.secrets / "admin.token"), "budgets", "list") == 1
    assert f"cannot reach the sidecar at {stack.api}" in capsys.readouterr().err


# -- /metrics through Prometheus --------------------------------------------------------------------
def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(dict(job) for job in config["scrape_configs"] if job["job_name"] == name)


def test_prometheus_scrapes_metrics_with_the_deploy_jobs_and_is_refused_without_a_token(
    stack: Stack, tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    target = [f"127.0.0.1:{stack.ports['metrics']}"]
    prometheus = yaml.safe_load(rooted((DEPLOY / "prometheus" / "prometheus.yml").read_text(), stack.root))
    collector = yaml.safe_load(rooted((DEPLOY / "otel-collector" / "config.yaml").read_text(), stack.root))
    own = _job(prometheus, "paymaster-sidecar")
    through_collector = _job(collector["receivers"]["prometheus/sidecar"]["config"], "paymaster-sidecar")
    through_collector["job_name"] = "through-collector"
    anonymous = {k: v for k, v in own.items() if k != "authorization"} | {"job_name": "anonymous"}
    jobs = [own, through_collector, anonymous]
    for job in jobs:
        job["static_configs"] = [{"targets": target}]
        job["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": jobs}))
    web = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
    )  # fmt: skip
    try:
        up = _wait_for_up(f"http://127.0.0.1:{web}", {"paymaster-sidecar", "through-collector", "anonymous"})
        scraped = _query(f"http://127.0.0.1:{web}", "count by (job) (paymaster_rpc_requests_total)")
    finally:
        process.terminate()
        process.wait(10)
    assert up == {"paymaster-sidecar": 1.0, "through-collector": 1.0, "anonymous": 0.0}
    assert {r["metric"]["job"] for r in scraped} >= {"paymaster-sidecar", "through-collector"}


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    return list(body["data"]["result"])


def _wait_for_up(base: str, jobs: set[str], timeout_s: float = 60) -> dict[str, float]:
    """``up`` per job once every job has been scraped (a bound, never a measurement)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            found = {r["metric"]["job"]: float(r["value"][1]) for r in _query(base, "up")}
        except OSError:
            found = {}
        if set(found) >= jobs:
            return found
        time.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape every job within {timeout_s} s")


# -- OTLP through the Collector's settings ------------------------------------------------------------
def test_the_collectors_export_reaches_the_otlp_receiver_over_tls_with_its_token(stack: Stack) -> None:
    ca = (stack.secrets / "ca.crt").read_bytes()
    token = (stack.secrets / "collector.token").read_text()

    def export(headers: tuple[tuple[str, str], ...]) -> SpanExportResult:
        exporter = OTLPSpanExporter(
            endpoint=f"127.0.0.1:{stack.ports['otlp_grpc']}",
            credentials=grpc.ssl_channel_credentials(root_certificates=ca),
            headers=headers,
            timeout=5,
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "chatbot"}))
        span = provider.get_tracer("app").start_span("chat", attributes={"paymaster.team": "search"})
        span.end()
        try:
            return exporter.export([span])  # type: ignore[list-item]
        finally:
            exporter.shutdown()
            provider.shutdown()

    assert export((("authorization", f"Bearer {token}"),)) == SpanExportResult.SUCCESS
    assert export(()) == SpanExportResult.FAILURE


# -- the documented example ------------------------------------------------------------------------
def test_the_examples_security_blocks_are_valid_once_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commented table of the example's auth and TLS keys, uncommented, with files in place."""
    text = (DEPLOY / "sidecar.example.toml").read_text()
    blocks = re.findall(r"(?m)^# (\[\[?[a-z.]*(?:tls|clients)\]\]?)\n((?:# \w+ = .*\n)+)", text)
    assert [name for name, _ in blocks] == ["[server.tls]", "[[auth.clients]]", "[receivers.otlp.tls]",
                                            "[metrics.tls]"]  # fmt: skip
    ca = Authority()
    folder = tmp_path / "etc/paymaster/tls"
    folder.mkdir(parents=True)
    ca.write(folder, "ca")
    ca.server().write(folder, "tls")
    uncommented = "\n".join(
        name + "\n" + "\n".join(line[2:] for line in body.splitlines()) for name, body in blocks
    )
    monkeypatch.setenv("PM_TEST_ADMIN", "x" * 40)
    config = parse_config(
        '[auth]\nenabled = true\nadmin_token_env = "PM_TEST_ADMIN"\n'
        + rooted(uncommented, tmp_path)
        + "\n[receivers.otlp]\nenabled = true\n[metrics]\nenabled = true\nrequire_token = true\n",
        source="example",
    )
    assert config.server.tls.client_ca_file == f"{folder}/ca.crt"
    assert config.auth.clients[0].uri.startswith("spiffe://")
    assert config.metrics.tls.enabled and config.receivers.otlp.tls.enabled
