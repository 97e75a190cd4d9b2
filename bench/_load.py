"""The load generator: N concurrent keep-alive connections posting two-entry transfers.

Two clients, same protocol:

- ``httpx``: ``httpx.AsyncClient`` with a pool of N connections (what the issue suggested);
- ``raw``: a minimal HTTP/1.1 keep-alive client on asyncio streams, one connection per
  worker task, that only does what this bench needs (fixed headers, Content-Length bodies).
  It costs several times less CPU per request than httpx, which matters because the load
  generator shares the machine's cores with the server and PostgreSQL.

Both record the client's own CPU time, so its share of the machine is printed, not guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from bench import _procs

Sender = Callable[[str, bytes, str], Awaitable[tuple[int, bytes]]]


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0  # 2xx within the measured seconds
    ok_window: int = 0  # 2xx started after measuring began, including the tail in flight
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)  # problem `code` of refusals
    client_cpu: float = 0.0  # CPU seconds the load generator used while measuring
    server_cpu: float = 0.0  # CPU seconds of the server workers while measuring
    machine_busy: float = 0.0  # busy CPU seconds of the whole machine while measuring
    machine_total: float = 0.0
    database_cpu: float = 0.0  # CPU seconds of the database's backends while measuring
    cpu_window: float = 0.0  # seconds over which the CPU figures were taken
    # Percentiles the load generator computed itself (wrk), when it does not hand over every
    # latency: {50: ms, 90: ms, 99: ms, 100: max ms}.
    reported_percentiles_ms: dict[float, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_posting_us(self) -> float:
        """Server + database CPU per posting (the load generator excluded)."""
        if not self.ok_window:
            return float("nan")
        return (self.server_cpu + self.database_cpu) / self.ok_window * 1e6

    def percentile(self, q: float) -> float:
        if q in self.reported_percentiles_ms:
            return self.reported_percentiles_ms[q]
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def transfer_json(accounts: Sequence[str], rng: random.Random) -> dict[str, object]:
    a, b = rng.sample(accounts, 2)
    minutes = rng.randint(1, 120)
    return {
        "kind": "transfer",
        "entries": [
            {"account_id": a, "minutes": minutes},
            {"account_id": b, "minutes": -minutes},
        ],
        "memo": "bench",
    }


def transfer_body(accounts: Sequence[str], rng: random.Random) -> bytes:
    return json.dumps(transfer_json(accounts, rng), separators=(",", ":")).encode()


class RawConnection:
    """One HTTP/1.1 keep-alive connection: enough for fixed POSTs with JSON bodies."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.prefix = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        request = b"".join(
            (
                f"POST {path} HTTP/1.1\r\n".encode(),
                self.prefix,
                f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode(),
                body,
            )
        )
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run_load(
    *,
    base_url: str,
    token: str,
    path: str,
    accounts: Sequence[str],
    concurrency: int,
    warmup: float,
    duration: float,
    client: str,
    server_pids: Sequence[int],
    database: str | None = None,
    seed: int = 1,
) -> LoadResult:
    """Post single transfers from ``concurrency`` connections: ``warmup`` seconds unmeasured,
    then ``duration`` seconds measured."""
    result = LoadResult()
    clock = time.monotonic
    start = clock()
    measure_from = start + warmup
    stop_at = measure_from + duration
    started = asyncio.Event()
    marks: dict[str, float] = {}
    backends = _procs.BackendCpu(database) if database else None

    def mark_start() -> None:
        if not started.is_set():
            started.set()
            marks["wall"] = clock()
            marks["client"] = time.process_time()
            marks["server"] = sum(_procs.cpu_seconds(p) for p in server_pids)
            marks["busy"], marks["total"] = _procs.machine_busy_seconds()
            if backends is not None:
                backends.__enter__()

    async def worker(index: int, send: Sender) -> None:
        rng = random.Random(seed * 1000 + index)
        while True:
            now = clock()
            if now >= stop_at:
                return
            if now >= measure_from:
                mark_start()
            body = transfer_body(accounts, rng)
            key = uuid.uuid4().hex
            t0 = clock()
            try:
                status, payload = await send(path, body, key)
            except (OSError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
                status, payload = 0, type(exc).__name__.encode()
            t1 = clock()
            elapsed_ms = (t1 - t0) * 1000
            if 200 <= status < 300 and t0 >= marks.get("wall", float("inf")):
                result.ok_window += 1
            if t1 <= stop_at and t0 >= marks.get("wall", float("inf")):
                result.requests += 1
                result.statuses[status] += 1
                result.latencies_ms.append(elapsed_ms)
                if 200 <= status < 300:
                    result.ok += 1
                else:
                    result.codes[_problem_code(status, payload)] += 1

    host, port = base_url.removeprefix("http://").split(":")
    if client == "raw":
        connections = [RawConnection(host, int(port), token) for _ in range(concurrency)]
        try:
            await asyncio.gather(*(worker(i, c.send) for i, c in enumerate(connections)))
        finally:
            for c in connections:
                await c.close()
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(
            base_url=base_url, headers=headers, limits=limits, timeout=60.0
        ) as http:

            async def send(p: str, body: bytes, key: str) -> tuple[int, bytes]:
                response = await http.post(p, content=body, headers={"Idempotency-Key": key})
                return response.status_code, response.content

            await asyncio.gather(*(worker(i, send) for i in range(concurrency)))

    end_wall = clock()
    if backends is not None and started.is_set():
        backends.__exit__()
        result.database_cpu = backends.seconds
    result.cpu_window = end_wall - marks.get("wall", end_wall)
    result.client_cpu = time.process_time() - marks.get("client", time.process_time())
    result.server_cpu = sum(_procs.cpu_seconds(p) for p in server_pids) - marks.get("server", 0)
    busy, total = _procs.machine_busy_seconds()
    result.machine_busy = busy - marks.get("busy", busy)
    result.machine_total = total - marks.get("total", total)
    # Up to the last measured completion: in-flight requests at the deadline are not counted.
    result.seconds = min(end_wall, marks.get("wall", end_wall) + duration) - marks.get(
        "wall", end_wall
    )
    return result


def _problem_code(status: int, payload: bytes) -> str:
    try:
        code = json.loads(payload).get("code")
    except (ValueError, AttributeError):
        code = None
    return f"{status} {code or payload[:40].decode(errors='replace')}"


async def login(base_url: str, email: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as http:
        response = await http.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


@dataclass
class BatchResult:
    batches: int = 0
    postings: int = 0
    seconds: float = 0.0
    batch_ms: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.postings / self.seconds if self.seconds else 0.0


async def run_batches(
    *,
    base_url: str,
    token: str,
    path: str,
    accounts: Sequence[str],
    size: int,
    duration: float,
    min_batches: int,
    server_pids: Sequence[int],
    seed: int = 7,
) -> BatchResult:
    """Post atomic batches of ``size`` transfers one after another (one connection) until
    ``duration`` seconds have passed and at least ``min_batches`` were sent. The first batch
    is a warm-up and not counted."""
    rng = random.Random(seed)
    result = BatchResult()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300.0) as http:

        async def one() -> tuple[int, bytes, float]:
            body = json.dumps(
                {
                    "atomic": True,
                    "transactions": [transfer_json(accounts, rng) for _ in range(size)],
                },
                separators=(",", ":"),
            ).encode()
            t0 = time.perf_counter()
            response = await http.post(
                path, content=body, headers={"Idempotency-Key": uuid.uuid4().hex}
            )
            return response.status_code, response.content, time.perf_counter() - t0

        await one()  # warm-up
        cpu0 = sum(_procs.cpu_seconds(p) for p in server_pids)
        t_start = time.perf_counter()
        while result.batches < min_batches or time.perf_counter() - t_start < duration:
            status, payload, elapsed = await one()
            result.batches += 1
            result.batch_ms.append(elapsed * 1000)
            if status == 200:
                result.postings += int(json.loads(payload)["posted"])
            else:
                result.failures[_problem_code(status, payload)] += 1
            result.seconds += elapsed  # body building on the client is not counted
        result.server_cpu = sum(_procs.cpu_seconds(p) for p in server_pids) - cpu0
    return result
