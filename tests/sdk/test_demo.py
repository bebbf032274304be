"""The demo the README's first command runs: a priced table per run, the halt, and its history.

The demo leaves gpt-4o to the genai-prices library on purpose (its table shows a "library" row), so
its figures, and where the tight run halts, follow that library's price of gpt-4o. The tests pin it
to the price the figures below were worked out with, so an update of the library's data cannot
change them; the pinned snapshot is otherwise the library's own.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot

from paymaster import demo, pricing

GPT_4O = genai_prices.types.ModelPrice(
    input_mtok=Decimal("2.5"), output_mtok=Decimal("10"), cache_read_mtok=Decimal("1.25")
)
"""gpt-4o per million tokens: $2.50 input, $10 output, $1.25 cached input."""


@pytest.fixture(autouse=True)
def pinned_gpt_4o_price() -> Iterator[None]:
    bundled = data_snapshot.get_snapshot()
    providers = [
        dataclasses.replace(
            provider,
            models=[
                dataclasses.replace(m, prices=GPT_4O) if m.id == "gpt-4o" else m for m in provider.models
            ],
        )
        if provider.id == "openai"
        else provider
        for provider in bundled.providers
    ]
    openai = next(p for p in providers if p.id == "openai")
    assert [m.prices for m in openai.models if m.id == "gpt-4o"] == [GPT_4O], "gpt-4o was not found to pin"
    pinned = data_snapshot.DataSnapshot(providers=providers, from_auto_update=False)
    data_snapshot.set_custom_snapshot(pinned)
    try:
        yield
    finally:
        data_snapshot.set_custom_snapshot(None)
        _KEEP.append(pinned)  # alive, so no later snapshot reuses its id in the SDK's per-snapshot cache


_KEEP: list[object] = []


def test_the_demo_prices_every_call_shows_its_source_and_halts_the_tight_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert demo.main(["--no-sidecar"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("Run 2:")
    for source in ("explicit", "library", "configured", "unknown", "config_hint"):
        assert source in first
    assert "total: $0.042060, 9,725 tokens, 1 call(s) of unknown cost not included" in first
    assert "refine[2].review" in second and "denied (cost_limit_denied)" in second
    why = (
        "step 'review' was not run: its estimate $0.012 would take spend from $0.024825 to $0.036825, "
        "over the run's cost limit of $0.03"
    )
    assert f"The run halted at refine[2].review: {why}" in second
    assert f"review [agent] denied, $0.000000 — {why}" in second
    assert "total: $0.024825" in second
    # The search tool ran in the first run: the second reserves what it cost there.
    assert "research.web.web_search  -                            explicit     $0.005000 learned" in second
    assert "quota.reserve.denied x1" in second


def test_against_the_embedded_sidecar_the_second_run_is_denied_by_the_team_budget(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert demo.main([]) == 0
    out = capsys.readouterr().out.split("Runs 3 and 4:")[1]
    third, fourth = out.split("Run 4:")
    assert "total: $0.042060" in third and "denied" not in third
    assert "refine[1].review" in fourth and "denied (budget_denied)" in fourth
    assert (
        "The sidecar denied the run: Denied by block budget 'Research team, daily' (team=research)" in fourth
    )
    # The sidecar's own figures: both runs' spend, committed once each.
    assert "used USD        0.057878" in fourth
    assert "TOTAL                        0.057878" in fourth


def test_a_roomy_limit_lets_the_second_run_finish(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--limit", "5", "--no-sidecar"]) == 0
    assert "The run finished within its limit." in capsys.readouterr().out


def test_a_bad_limit_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--limit", "-1", "--no-sidecar"]) == 2
    assert capsys.readouterr().out.strip() == (
        "paymaster demo: UsageLimits: total_cost_usd_limit must not be negative, got '-1'"
    )


def test_the_console_script_runs_the_demo() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "paymaster.cli", "demo", "--limit", "0.03", "--no-sidecar"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "The run halted at refine[2].review: step 'review' was not run" in done.stdout


def test_the_demo_names_no_file_that_does_not_exist(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its prices are built in: the library's warning points to the paymaster.toml --config reads."""
    monkeypatch.setattr(pricing, "_warned", set())  # warned once per process: as in a fresh one
    assert demo.main(["--no-sidecar"]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "paymaster.pricing"]
    assert 'configure [cost.providers.openai."gpt-4o"] in paymaster.toml to pin them' in warning
    assert "demo paymaster.toml" not in caplog.text
