"""Failed-login throttling per account and per client address (sliding window, in memory).

Kept in process memory on purpose: a refused sign-in must not write to the database, and the
counters only need to slow guessing down. With N workers the effective limit is at most N
times the setting (docs/deployment.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

_MAX_TRACKED_KEYS = 100_000


class LoginThrottle:
    def __init__(self, *, window_seconds: int, per_account: int, per_address: int) -> None:
        self._window = float(window_seconds)
        self._limits = {"account": per_account, "address": per_address}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, account: str, address: str) -> int | None:
        """Seconds until another attempt is allowed, or ``None`` when it is allowed now."""
        now = time.monotonic()
        waits = []
        with self._lock:
            for kind, key in (("account", account), ("address", address)):
                times = self._recent(f"{kind}:{key}", now)
                if len(times) >= self._limits[kind]:
                    waits.append(times[0] + self._window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def record_failure(self, account: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"account:{account}", f"address:{address}"):
                times = self._failures.setdefault(key, deque())
                times.append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > _MAX_TRACKED_KEYS:
                self._failures.popitem(last=False)

    def record_success(self, account: str) -> None:
        with self._lock:
            self._failures.pop(f"account:{account}", None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times
