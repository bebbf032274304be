"""What every test shares: each starts with the process's learning estimator empty, as a new process
would, so no test's estimates depend on which tests ran before it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paymaster.estimation import default_learner


@pytest.fixture(autouse=True)
def _fresh_learner() -> Iterator[None]:
    default_learner().clear()
    yield
    default_learner().clear()
