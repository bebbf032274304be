"""Agents the SDK tests run: real objects with ``run`` methods, reporting usage the ways agents do."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass
class MetricOutput:
    """An output that reports its cost explicitly (the ExplicitCostReporter protocol)."""

    value: Any
    cost_usd: float = 0.1
    token_counts: int = 100


class FixedMetricAgent:
    """Adds one to its input; every call costs ``cost`` and ``tokens``."""

    def __init__(self, cost: Any = 0.1, tokens: int = 100) -> None:
        self.cost = cost
        self.tokens = tokens
        self.calls = 0

    async def run(self, data: Any) -> MetricOutput:
        self.calls += 1
        value = data.value if isinstance(data, MetricOutput) else data
        return MetricOutput(value=value + 1, cost_usd=self.cost, token_counts=self.tokens)


class CostlyAgent:
    """Sleeps ``delay`` seconds, then reports ``cost``; records whether it was cancelled."""

    def __init__(self, cost: Any = 0.1, tokens: int = 100, delay: float = 0.1) -> None:
        self.cost = cost
        self.tokens = tokens
        self.delay = delay
        self.calls = 0
        self.finished = 0
        self.cancelled = 0

    async def run(self, data: Any) -> MetricOutput:
        self.calls += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return MetricOutput(value=data, cost_usd=self.cost, token_counts=self.tokens)


class SyncAgent:
    """A plain synchronous ``run``."""

    def __init__(self, cost: Any = 0.01) -> None:
        self.cost = cost

    def run(self, data: Any) -> MetricOutput:
        return MetricOutput(value=f"sync:{data}", cost_usd=self.cost, token_counts=5)


class FlakyAgent:
    """Fails ``failures`` times, then succeeds at ``cost``."""

    def __init__(self, failures: int, cost: Any = 0.01) -> None:
        self.failures = failures
        self.cost = cost
        self.calls = 0

    async def run(self, data: Any) -> MetricOutput:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"transient failure {self.calls}")
        return MetricOutput(value=data, cost_usd=self.cost, token_counts=10)
