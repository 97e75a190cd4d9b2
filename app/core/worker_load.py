"""How many requests each worker process has in flight, on a board the workers share, so
that a worker carrying more than its share can send keep-alive clients elsewhere
(app/core/keepalive.py).

Why: uvicorn's workers accept from one listening socket, and keep-alive clients stay on the
worker that accepted them. A connection is closed after ``keepalive_requests`` requests, but
that alone drifts the wrong way: a busy worker answers more slowly, so its connections reach
their limit later and stay, while a quiet worker's connections churn and land anywhere. Under
the ledger bench's 32 connections the two workers were seen holding 24/8, 26/6 and 29/0, and
the busy one's clients waited while the other had a core to spare. With a worker shedding
what it carries beyond its share, the singles' p99 went 52.6-54.9 -> 37.6-37.9 ms
(alternating runs; bench/README.md).

The board is a small file mapped into memory by every worker (on Linux in /dev/shm, so it
never reaches a disk): one slot per worker, each holding the worker's pid and its requests
in flight. ``timebank serve --workers N`` (N > 1) creates it and names it to the workers in
``TIMEBANK_WORKER_LOAD``; a worker claims a free slot (or a dead worker's) under a file lock.
Each worker writes only its own slot; a torn read of another's is impossible (one aligned
8-byte word) and a stale one only delays a decision by a request.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import tempfile
from pathlib import Path

ENVIRONMENT = "TIMEBANK_WORKER_LOAD"
_SLOT = struct.Struct("=qq")  # pid, requests in flight
# A worker sheds a connection when it carries more than this many requests beyond the
# workers' mean: enough that ordinary jitter between two equal workers churns nothing. The
# bench's singles, alternating: p99 52.6-54.9 ms without shedding, 42.3-42.8 with a margin
# of 2, 37.6-37.9 with 4 (and the most postings/s).
SHED_MARGIN = 4


# (mkstemp makes the board there: a new file, O_EXCL, mode 0600.)
SHARED_MEMORY = "/dev/shm"  # noqa: S108


def _directory() -> str:
    return SHARED_MEMORY if os.path.isdir(SHARED_MEMORY) else tempfile.gettempdir()


def create_board(workers: int) -> Path:
    """A new board with ``workers`` empty slots; its path is also put in the environment,
    which the worker processes inherit. The caller removes the file when serving ends."""
    descriptor, name = tempfile.mkstemp(prefix="timebank-load-", dir=_directory())
    with os.fdopen(descriptor, "wb") as board:
        board.write(bytes(_SLOT.size * workers))
    os.environ[ENVIRONMENT] = name
    return Path(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (alive, another user's)
        return True
    return True


class WorkerLoad:
    """This worker's slot on the board, and what the others' say."""

    def __init__(self, path: Path, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        with open(path, "r+b") as board:
            self._map = mmap.mmap(board.fileno(), 0)
            self.slots = len(self._map) // _SLOT.size
            fcntl.flock(board.fileno(), fcntl.LOCK_EX)
            try:
                self.slot = self._claim()
            finally:
                fcntl.flock(board.fileno(), fcntl.LOCK_UN)

    @classmethod
    def from_environment(cls) -> WorkerLoad | None:
        """The board ``timebank serve`` made for several workers, else None (one worker, or
        a test server): nothing to balance."""
        path = os.environ.get(ENVIRONMENT)
        if not path or not os.path.exists(path):
            return None
        with contextlib.suppress(OSError, ValueError):
            return cls(Path(path))
        return None

    def _claim(self) -> int:
        pids = [_SLOT.unpack_from(self._map, i * _SLOT.size)[0] for i in range(self.slots)]
        for slot, pid in enumerate(pids):
            if pid == self.pid:
                return slot
        for slot, pid in enumerate(pids):
            if pid == 0 or not _alive(pid):
                _SLOT.pack_into(self._map, slot * _SLOT.size, self.pid, 0)
                return slot
        raise ValueError("the worker-load board has no free slot")

    def publish(self, in_flight: int) -> None:
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, self.pid, in_flight)

    def over_share(self, in_flight: int) -> bool:
        """Whether this worker, with ``in_flight`` requests, carries more than
        ``SHED_MARGIN`` beyond the mean of the workers on the board."""
        loads: list[tuple[int, int]] = [
            _SLOT.unpack_from(self._map, i * _SLOT.size) for i in range(self.slots)
        ]
        active = [load for pid, load in loads if pid]
        total = sum(active) - loads[self.slot][1] + in_flight
        return bool(in_flight > total / max(1, len(active)) + SHED_MARGIN)
