"""Failed sign-ins slow guessing down, per account and per client address, without sleeping."""

from __future__ import annotations

import pytest

from app.identity.login_throttle import LoginThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    # The module reads the clock as ``time.monotonic()``; these tests are synchronous, so no
    # event loop is looking at the same clock meanwhile.
    monkeypatch.setattr("app.identity.login_throttle.time.monotonic", fake)
    return fake


def _throttle() -> LoginThrottle:
    return LoginThrottle(window_seconds=60, per_account=3, per_address=5)


def test_attempts_are_allowed_until_an_account_reaches_its_limit(clock: FakeClock) -> None:
    throttle = _throttle()
    for _ in range(2):
        throttle.record_failure("joan@example.org", "10.0.0.1")
        assert throttle.retry_after("joan@example.org", "10.0.0.1") is None
    clock.now += 10
    throttle.record_failure("joan@example.org", "10.0.0.1")

    # The oldest failure (at t=1000) leaves the 60 s window at t=1060; it is now t=1010.
    assert throttle.retry_after("joan@example.org", "10.0.0.1") == 50
    assert throttle.retry_after("joan@example.org", "10.0.0.99") == 50  # from any address
    assert throttle.retry_after("dev@example.org", "10.0.0.1") is None  # other accounts


def test_the_window_slides(clock: FakeClock) -> None:
    throttle = _throttle()
    for _ in range(3):
        throttle.record_failure("joan@example.org", "10.0.0.1")
        clock.now += 10
    assert throttle.retry_after("joan@example.org", "10.0.0.1") == 30

    clock.now += 29.5
    assert throttle.retry_after("joan@example.org", "10.0.0.1") == 1  # never "0 seconds"
    clock.now += 0.5
    assert throttle.retry_after("joan@example.org", "10.0.0.1") is None


def test_an_address_guessing_across_accounts_is_throttled(clock: FakeClock) -> None:
    throttle = _throttle()
    for n in range(5):
        throttle.record_failure(f"user{n}@example.org", "203.0.113.7")
        clock.now += 1
    assert throttle.retry_after("someone-new@example.org", "203.0.113.7") == 55
    assert throttle.retry_after("someone-new@example.org", "198.51.100.2") is None


def test_a_successful_sign_in_clears_the_account_but_not_the_address(clock: FakeClock) -> None:
    throttle = _throttle()
    for _ in range(4):
        throttle.record_failure("joan@example.org", "203.0.113.7")
    throttle.record_success("joan@example.org")

    assert throttle.retry_after("joan@example.org", "198.51.100.2") is None
    throttle.record_failure("joan@example.org", "203.0.113.7")
    # Five failures from this address in the window, whoever later signed in.
    assert throttle.retry_after("joan@example.org", "203.0.113.7") == 60


def test_the_longer_wait_wins_when_both_limits_are_hit(clock: FakeClock) -> None:
    throttle = _throttle()
    for n in range(3):
        throttle.record_failure(f"other{n}@example.org", "203.0.113.7")
    clock.now += 20
    for _ in range(3):
        throttle.record_failure("joan@example.org", "203.0.113.7")
    clock.now += 1
    # Address limit frees at t=1060 (39 s); account limit at t=1080 (59 s).
    assert throttle.retry_after("joan@example.org", "203.0.113.7") == 59
