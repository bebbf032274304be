"""The sidecar's own counters and histograms: exact sums per label set, buckets by upper bound."""

from __future__ import annotations

import threading

import pytest

from collector_processor.telemetry.selfmetrics import SelfMetrics


def test_counters_sum_per_label_set_whatever_the_label_order() -> None:
    m = SelfMetrics()
    m.inc("paymaster_things_total", labels={"a": "1", "b": "2"})
    m.inc("paymaster_things_total", 2, labels={"b": "2", "a": "1"})
    m.inc("paymaster_things_total", labels={"a": "other"})
    m.inc("paymaster_bare_total")
    counters = m.snapshot().counters
    assert counters["paymaster_things_total"] == {(("a", "1"), ("b", "2")): 3.0, (("a", "other"),): 1.0}
    assert counters["paymaster_bare_total"] == {(): 1.0}


def test_a_counter_never_decreases() -> None:
    with pytest.raises(ValueError, match="counter paymaster_x_total cannot decrease"):
        SelfMetrics().inc("paymaster_x_total", -1)


def test_histograms_count_each_observation_in_the_first_bucket_whose_bound_holds_it() -> None:
    m = SelfMetrics(buckets=(0.01, 0.1))
    for value in (0.005, 0.01, 0.05, 3.0):
        m.observe("paymaster_op_seconds", value)
    hist = m.snapshot().histograms["paymaster_op_seconds"][()]
    assert (hist.counts, hist.count, hist.total) == ((2, 1, 1), 4, pytest.approx(3.065))


def test_buckets_must_ascend() -> None:
    with pytest.raises(ValueError, match="distinct and ascending"):
        SelfMetrics(buckets=(0.1, 0.01))


def test_concurrent_increments_are_never_lost() -> None:
    m = SelfMetrics()

    def work() -> None:
        for _ in range(10_000):
            m.inc("paymaster_n_total")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot().counters["paymaster_n_total"][()] == 40_000
