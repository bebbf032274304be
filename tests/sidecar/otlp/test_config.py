"""The ``[receivers.otlp]`` section: defaults on the reserved ports, and every mistake refused at start
with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector_processor.api.server import create_sidecar
from collector_processor.config import (
    DEFAULT_OTLP_GRPC_LISTEN,
    DEFAULT_OTLP_HTTP_LISTEN,
    SidecarConfig,
    create_default_config,
    parse_config,
)
from collector_processor.otlp import create_default_config as otlp_defaults
from paymaster.exceptions import ConfigError
from tests.fresh import loads_pricing_library


def test_the_defaults_are_off_on_the_reserved_ports_with_nothing_forwarded() -> None:
    section = create_default_config().receivers.otlp
    assert section == otlp_defaults()
    assert (section.enabled, section.grpc_listen, section.http_listen) == (
        False, DEFAULT_OTLP_GRPC_LISTEN, DEFAULT_OTLP_HTTP_LISTEN,
    )  # fmt: skip
    assert section.forward.endpoint == ""
    assert section.attribution.sources()["agent"] == ("paymaster.agent", "gen_ai.agent.name", "service.name")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[receivers.otlp.forward]\nendpoint = 'collector:4317'",
            "receivers.otlp.forward.endpoint: must be an http:// or https:// URL",
        ),
        (
            "[receivers.otlp.forward]\nqueue_size = 0",
            "receivers.otlp.forward.queue_size: must be a whole number from 1 to 100000000, got 0",
        ),
        (
            "[receivers.otlp.charging]\nspend_source = 'both'",
            "receivers.otlp.charging.spend_source: Input should be 'auto', 'spans' or 'metrics'",
        ),
        (
            "[receivers.otlp.charging]\nmax_message_bytes = 10",
            "receivers.otlp.charging.max_message_bytes: must be a whole number from 1024 to 268435456, got 10",
        ),
        (
            "[receivers.otlp.attribution]\nteam = ['has space']",
            "receivers.otlp.attribution.team: 'has space' is not an attribute name",
        ),
        (
            "[receivers.otlp.attribution]\nunattributed_scopes = []",
            "receivers.otlp.attribution.unattributed_scopes: must name at least one scope",
        ),
        ("[receivers.otlp.attribution]\nunattributed_id = ''", "receivers.otlp.attribution.unattributed_id:"),
        (
            "[receivers.otlp]\ngrpc_listen = '127.0.0.1:7310'",
            "receivers.otlp.grpc_listen: port 7310 is already used by server.listen",
        ),
        ("[receivers.otlp.pricng]\nconfig = 'x'", "receivers.otlp.pricng: unknown key"),
    ],
)
def test_a_mistake_in_the_section_is_refused_naming_file_and_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(toml, source="sidecar.toml")
    assert str(error.value).startswith("sidecar.toml: ")
    assert message in str(error.value)


def test_a_bad_price_file_stops_the_sidecar_before_any_port_opens(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[cost.providers.openai."gpt-4o"]\nprompt_tokens_per_1k = -1\n')
    config = parse_config(
        f"""
        [server]
        listen = "127.0.0.1:0"
        [store]
        path = "{tmp_path / "s.db"}"
        [receivers.otlp]
        enabled = true
        grpc_listen = "127.0.0.1:0"
        http_listen = ""
        [receivers.otlp.pricing]
        config = "prices.toml"
        """,
        source=str(tmp_path / "sidecar.toml"),
    )
    with pytest.raises(ConfigError) as error:
        create_sidecar(config)
    text = str(error.value)
    assert text.startswith(f"{tmp_path / 'sidecar.toml'}: receivers.otlp.pricing.config: ")
    assert "prompt_tokens_per_1k: expected a non-negative number of USD, got -1" in text
    missing = config.model_copy(
        update={"receivers": config.receivers.model_copy(update={"otlp": config.receivers.otlp.model_copy(
            update={"pricing": config.receivers.otlp.pricing.model_copy(update={"config": "absent.toml"})})})}
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"receivers.otlp.pricing.config: .*absent.toml: no such file"):
        create_sidecar(missing)


def _otlp_toml(tmp_path: Path, http_listen: str = "") -> str:
    """A sidecar config with the OTLP receiver on a free gRPC port and ``http_listen`` for OTLP/HTTP."""
    return f"""
        [server]
        listen = "127.0.0.1:0"
        [store]
        path = "{tmp_path / "s.db"}"
        [receivers.otlp]
        enabled = true
        grpc_listen = "127.0.0.1:0"
        http_listen = "{http_listen}"
        """


def _with_otlp(tmp_path: Path, http_listen: str) -> SidecarConfig:
    return parse_config(_otlp_toml(tmp_path, http_listen), source="sidecar.toml")


def test_an_empty_http_listen_turns_otlp_http_off(tmp_path: Path) -> None:
    sidecar = create_sidecar(_with_otlp(tmp_path, "")).start()
    try:
        (receiver,) = sidecar.components
        assert receiver.http is None  # type: ignore[attr-defined]
        assert receiver.describe().startswith("OTLP/gRPC on 127.0.0.1:")
    finally:
        sidecar.stop(0)


def test_the_receiver_loads_the_pricing_library_at_start_not_on_the_first_export(tmp_path: Path) -> None:
    assert loads_pricing_library(
        "from collector_processor.config import parse_config\n"
        "from collector_processor.api.server import create_sidecar\n"
        f"create_sidecar(parse_config({_otlp_toml(tmp_path)!r}, source='sidecar.toml')).stop(0)"
    )
