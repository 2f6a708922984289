"""The provider breaker and the backoff (pure, time passed in)."""

from __future__ import annotations

import random

from gateway.delivery.breaker import Breaker, BreakerState
from gateway.delivery.retry import CAP, backoff


def test_faults_in_a_row_open_it_and_one_probe_goes_through_after_the_cool_down() -> None:
    breaker = Breaker(threshold=3, cool_down=30)
    for t in range(2):
        breaker.fault(float(t))
    assert breaker.allow(2.0) and breaker.state is BreakerState.CLOSED
    breaker.fault(2.0)
    assert breaker.state is BreakerState.OPEN and breaker.resting(10.0)
    assert not breaker.allow(10.0)
    assert not breaker.resting(32.0)
    assert breaker.allow(32.0) and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(32.1)  # one probe at a time
    breaker.fault(33.0)  # the probe failed: open again, a new cool-down
    assert breaker.state is BreakerState.OPEN and not breaker.allow(40.0)
    assert breaker.allow(63.5)
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow(63.6)


def test_a_provider_fault_opens_it_at_once_and_success_resets_the_count() -> None:
    breaker = Breaker(threshold=5)
    breaker.fault(0.0)
    breaker.success()
    for t in range(4):
        breaker.fault(float(t))
    assert breaker.state is BreakerState.CLOSED
    breaker.fault(5.0, trip=True)
    assert breaker.state is BreakerState.OPEN


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(7)
    waits = [backoff(n, None, rng) for n in range(1, 8)]
    assert 0.1 <= waits[0] <= 0.2 and 0.2 <= waits[1] <= 0.4
    assert all(w <= CAP for w in waits)
    assert backoff(1, 5.0, rng) == 5.0  # Retry-After is a floor
