"""The circuit breaker of the sidecar client (``paymaster._sidecar.breaker``), on a manual clock."""

from __future__ import annotations

from paymaster._sidecar.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    clock, changes = Clock(), []
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5, clock=clock, on_change=changes.append)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and changes == ["open"]
    assert not breaker.allow()
    assert breaker.seconds_until_probe() == 5


def test_after_the_cooldown_one_probe_goes_out_and_its_result_decides() -> None:
    clock, changes = Clock(), []
    breaker = CircuitBreaker(
        failure_threshold=1, reset_after_s=5, max_reset_after_s=12, clock=clock, on_change=changes.append
    )
    breaker.failure()
    clock.now += 5
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failure()  # the probe failed: open again, for twice as long
    assert breaker.state == "open" and breaker.seconds_until_probe() == 10
    clock.now += 10
    assert breaker.allow()
    breaker.failure()
    assert breaker.seconds_until_probe() == 12  # capped
    clock.now += 12
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()
    assert changes == ["open", "half_open", "open", "half_open", "open", "half_open", "closed"]
    breaker.failure()
    assert breaker.seconds_until_probe() == 5  # a fresh outage starts from the base cooldown
