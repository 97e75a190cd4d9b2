"""Support-network speed on a generated community (prints numbers; asserts nothing).

    .venv/bin/python -m bench.network_metrics [--members 10000] [--exchanges 100000]
        [--database-url sqlite+aiosqlite:///bench-network.db | postgresql+asyncpg://...]

Builds a fresh database with the migrations, writes a community (80% of exchanges from 20% of
members, 30% of members inactive, 7% organisations) straight into the tables, then measures
through the ASGI app: full metrics cold and cached, member connections (p50/p99), a streamed
GraphML export (peak memory while streaming), and the same metrics in NetworkX.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import networkx as nx
from httpx import ASGITransport, AsyncClient

from app.cli import migrate
from app.main import create_app
from tests.conftest import make_settings
from tests.factories import Api
from tests.network.community import generate, insert_community, reference_graph, reference_metrics


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def run(members: int, exchanges: int, url: str) -> None:
    app = create_app(make_settings(url))
    async with app.router.lifespan_context(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://bench") as client:
            api = Api(client, app)
            community, admin = await api.community()
            t = time.perf_counter()
            generated = generate(
                uuid.UUID(community["id"]), members=members, exchanges=exchanges, seed=42
            )
            await insert_community(app.state.sessionmaker, generated)
            print(f"generated and inserted in {time.perf_counter() - t:.1f} s")
            metrics_url = f"/v1/communities/{community['id']}/network/metrics"

            t = time.perf_counter()
            cold = await client.get(metrics_url, headers=admin.headers)
            cold_s = time.perf_counter() - t
            body: dict[str, Any] = cold.json()
            m = body["metrics"]
            print(
                f"graph: {m['members']} members, {m['edges']} ties; betweenness "
                f"{m['betweenness']['method']} ({m['betweenness']['pivots']} pivots, "
                f"max_error {m['betweenness']['max_error']:.3f} at "
                f"{m['betweenness']['confidence']})"
            )
            print(f"metrics cold            {_ms(cold_s)}   (goal <= 2000 ms)")
            cached = []
            for _ in range(20):
                t = time.perf_counter()
                await client.get(metrics_url, headers=admin.headers)
                cached.append(time.perf_counter() - t)
            print(f"metrics cached (median) {_ms(statistics.median(cached))}   (goal <= 50 ms)")

            busiest = sorted(generated.members, key=lambda x: -abs(x.balance))[:50]
            timings = []
            for _ in range(4):
                for member in busiest:
                    t = time.perf_counter()
                    await client.get(f"/v1/members/{member.id}/connections", headers=admin.headers)
                    timings.append(time.perf_counter() - t)
            timings.sort()
            p99 = timings[max(0, int(len(timings) * 0.99) - 1)]
            print(
                f"connections p50        {_ms(statistics.median(timings))}\n"
                f"connections p99        {_ms(p99)}   (goal <= 20 ms; busiest members)"
            )

            tracemalloc.start()
            base_memory = tracemalloc.get_traced_memory()[0]
            size = 0
            t = time.perf_counter()
            async with client.stream(
                "GET",
                f"/v1/communities/{community['id']}/network",
                params={"format": "graphml"},
                headers=admin.headers,
            ) as response:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
            peak = tracemalloc.get_traced_memory()[1] - base_memory
            tracemalloc.stop()
            print(
                f"graphml export         {_ms(time.perf_counter() - t)}   {size / 1e6:.1f} MB "
                f"streamed, peak extra memory {peak / 1e6:.1f} MB while streaming"
            )

    t = time.perf_counter()
    graph = reference_graph(generated)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    reference_metrics(graph)
    pivots = m["betweenness"]["pivots"]
    if m["betweenness"]["method"] == "exact":
        nx.betweenness_centrality(graph)
    else:
        nx.betweenness_centrality(graph, k=pivots, seed=1)
    nx_s = time.perf_counter() - t
    print(
        f"networkx same metrics  {_ms(nx_s)}   (+{build_s:.1f} s to build the graph; "
        f"betweenness with the same {pivots} pivots)"
    )
    print(f"ratio networkx / ours (cold) {nx_s / cold_s:.1f}x   (goal >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url
    path = None
    if url is None:
        path = Path("bench-network.db")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite+aiosqlite:///{path}"
    migrate(url)
    print(f"machine: {platform.machine()} {platform.processor()} cpus={os.cpu_count()} {url}")
    try:
        asyncio.run(run(args.members, args.exchanges, url))
    finally:
        if path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
