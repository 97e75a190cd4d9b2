"""Several workers share a board of their requests in flight, and one carrying more than its
share closes keep-alive connections after their response, so clients reconnect to a less
busy worker (app/core/worker_load.py, app/core/keepalive.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.core import worker_load
from app.core.keepalive import KeepAliveLimitMiddleware
from app.core.worker_load import ENVIRONMENT, WorkerLoad, create_board

pytestmark = pytest.mark.anyio


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(worker_load, "_directory", lambda: str(tmp_path))
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    path = create_board(2)
    monkeypatch.setenv(ENVIRONMENT, str(path))  # (undone after the test, as create_board's)
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_worker_over_its_share_sheds_and_one_at_or_under_it_does_not(board: Path) -> None:
    this = WorkerLoad(board)
    other = WorkerLoad(board, pid=os.getppid())  # (a live process: the test runner's parent)
    assert {this.slot, other.slot} == {0, 1}
    other.publish(10)
    this.publish(22)
    assert this.over_share(22)  # 22 against a mean of 16: more than 4 beyond it
    assert not other.over_share(10)
    other.publish(13)
    this.publish(19)
    assert not this.over_share(19)  # ordinary jitter between equal workers churns nothing
    other.publish(0)  # an idle neighbour: 8 in flight is 4 above the mean of 4, 9 more
    assert this.over_share(9)
    assert not this.over_share(8)


def test_a_dead_workers_slot_is_claimed_by_its_successor_and_a_full_board_refuses(
    board: Path,
) -> None:
    WorkerLoad(board, pid=os.getppid())
    gone = WorkerLoad(board, pid=_dead_pid())
    successor = WorkerLoad(board)
    assert successor.slot == gone.slot
    assert WorkerLoad(board).slot == successor.slot  # the same process, the same slot
    with pytest.raises(ValueError, match="no free slot"):
        WorkerLoad(board, pid=os.getpid() + 1_000_000)  # (neither slot is free)


def test_only_a_server_with_several_workers_has_a_board(
    board: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WorkerLoad.from_environment() is not None
    monkeypatch.delenv(ENVIRONMENT)
    assert WorkerLoad.from_environment() is None
    monkeypatch.setenv(ENVIRONMENT, str(board.with_name("gone")))
    assert WorkerLoad.from_environment() is None


class _Board:
    """A board whose answer the test sets, recording what the middleware publishes."""

    def __init__(self, over: bool) -> None:
        self.over = over
        self.published: list[int] = []

    def publish(self, in_flight: int) -> None:
        self.published.append(in_flight)

    def over_share(self, in_flight: int) -> bool:
        return self.over


async def _closes(middleware: KeepAliveLimitMiddleware, requests: int) -> list[bool]:
    closed: list[bool] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            closed.append((b"connection", b"close") in message.get("headers", []))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware.app = ok
    for _ in range(requests):
        await middleware({"type": "http", "client": ("10.0.0.1", 5000)}, receive, send)
    return closed


async def test_the_middleware_closes_connections_while_its_worker_is_over_its_share() -> None:
    busy = _Board(over=True)
    middleware = KeepAliveLimitMiddleware(
        None,  # type: ignore[arg-type]  # (set by _closes)
        max_requests=100,
        load=busy,  # type: ignore[arg-type]
    )
    assert await _closes(middleware, 3) == [True, True, True]
    assert busy.published == [1, 0, 1, 0, 1, 0]  # each request in flight, then done

    calm = _Board(over=False)
    middleware = KeepAliveLimitMiddleware(
        None,  # type: ignore[arg-type]
        max_requests=2,
        load=calm,  # type: ignore[arg-type]
    )
    assert await _closes(middleware, 3) == [False, True, False]  # the request limit still holds
