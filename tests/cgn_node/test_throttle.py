"""Failed-login throttling with a scripted clock."""

from __future__ import annotations

import pytest

from cgn_node.throttle import LoginThrottle, LoginThrottledError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pair_is_blocked_with_a_doubling_delay_and_cleared_by_success() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, clock=clock)
    for _ in range(3):
        throttle.begin("acct", "10.9.9.9")
        throttle.failed("acct", "10.9.9.9")
    throttle.begin("acct", "10.9.9.9")  # three free failures
    throttle.failed("acct", "10.9.9.9")
    with pytest.raises(LoginThrottledError) as blocked:
        throttle.begin("acct", "10.9.9.9")
    assert blocked.value.retry_after_s == 1
    throttle.begin("acct", "10.0.0.2")  # another address is not slowed
    throttle.begin("other", "10.9.9.9")  # nor another account from this address
    clock.now += 1.01
    throttle.failed("acct", "10.9.9.9")
    with pytest.raises(LoginThrottledError) as longer:
        throttle.begin("acct", "10.9.9.9")
    assert longer.value.retry_after_s == 2
    throttle.succeeded("acct", "10.9.9.9")
    throttle.begin("acct", "10.9.9.9")


def test_an_address_failing_across_accounts_hits_the_ceiling_until_the_window_frees() -> None:
    clock = Clock()
    throttle = LoginThrottle(address_failures=5, window_s=60, clock=clock)
    for n in range(5):
        throttle.begin(f"acct-{n}", "10.9.9.9")
        throttle.failed(f"acct-{n}", "10.9.9.9")
        clock.now += 1
    with pytest.raises(LoginThrottledError) as blocked:
        throttle.begin("acct-new", "10.9.9.9")
    assert blocked.value.retry_after_s == 55
    assert throttle.refused == 1
    clock.now += 55
    throttle.begin("acct-new", "10.9.9.9")


def test_concurrent_attempts_count_as_failures_until_they_end() -> None:
    throttle = LoginThrottle(free_failures=3, clock=Clock())
    for _ in range(3):
        throttle.begin("acct", "10.9.9.9")  # three in flight at once
    with pytest.raises(LoginThrottledError):
        throttle.begin("acct", "10.9.9.9")  # a fourth concurrent one is refused
    throttle.abandoned("acct", "10.9.9.9")
    throttle.begin("acct", "10.9.9.9")  # one ended without a verdict: room again
    for _ in range(3):
        throttle.succeeded("acct", "10.9.9.9")
    throttle.begin("acct", "10.9.9.9")


def test_memory_is_bounded() -> None:
    throttle = LoginThrottle(max_entries=10, clock=Clock())
    for n in range(100):
        throttle.failed(f"acct-{n}", f"10.0.0.{n}")
    assert len(throttle._pairs) == 10
    assert len(throttle._addresses) == 10
