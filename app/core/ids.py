"""Time-ordered identifiers (UUIDv7, RFC 9562).

Ids sort by creation time, so keyset pagination and "newest first" need no second column,
and B-tree inserts stay at the right-hand edge of the index.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_sequence = 0


def new_id() -> uuid.UUID:
    """Return a UUIDv7 that is strictly increasing within this process."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[uuid.UUID]:
    """Return ``count`` UUIDv7s, strictly increasing within this process, drawing their random
    bits from one ``os.urandom`` call (a batch of 1,000 postings makes one system call, not a
    thousand)."""
    global _last_ms, _sequence
    random_bits = os.urandom(8 * count)
    ids: list[uuid.UUID] = []
    with _lock:
        for i in range(count):
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= _last_ms:
                # Same millisecond (or a clock step back): keep order with a 12-bit counter.
                _sequence += 1
                if _sequence > 0xFFF:
                    _last_ms += 1
                    _sequence = 0
                now_ms = _last_ms
            else:
                _last_ms = now_ms
                _sequence = 0
            rand_b = int.from_bytes(random_bits[8 * i : 8 * i + 8], "big") & 0x3FFF_FFFF_FFFF_FFFF
            value = (now_ms & 0xFFFF_FFFF_FFFF) << 80
            value |= 0x7 << 76  # version 7
            value |= _sequence << 64
            value |= 0b10 << 62  # RFC 4122 variant
            value |= rand_b
            ids.append(uuid.UUID(int=value))
    return ids


def parse_id(raw: str) -> uuid.UUID | None:
    """Parse a client-supplied id; ``None`` when it is not one of ours (the caller answers 404)."""
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        return None
