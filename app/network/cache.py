"""Support-graph snapshots kept in process memory, one per community and date window.

A snapshot is tagged with the community's *version*: the newest transaction id in the
community (every posting and every reversal writes one, and they are time-ordered UUIDv7s)
plus the count and latest update of its members. A request reads the version (two indexed
aggregate queries) and reuses the snapshot when it matches; otherwise one request rebuilds it
while concurrent requests for the same key are answered from the old snapshot, marked
``stale`` with its age. See docs/network.md.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.core.clock import utcnow
from app.network.config import NetworkSettings
from app.network.graph import SupportGraph, Window

CacheKey = tuple[uuid.UUID, Window]


@dataclass(frozen=True)
class Snapshot:
    graph: SupportGraph
    stale: bool

    def age_seconds(self, now: datetime | None = None) -> float:
        return max(0.0, ((now or utcnow()) - self.graph.computed_at).total_seconds())


class NetworkCache:
    def __init__(self, settings: NetworkSettings) -> None:
        self.settings = settings
        self._graphs: OrderedDict[CacheKey, SupportGraph] = OrderedDict()
        self._locks: dict[CacheKey, asyncio.Lock] = {}
        self.builds = 0  # snapshots built so far (tests and the benchmark read it)

    def _usable(self, graph: SupportGraph | None, version: str, now: datetime) -> bool:
        if graph is None or graph.version != version:
            return False
        return (now - graph.computed_at).total_seconds() <= self.settings.max_age_seconds

    async def snapshot(
        self,
        key: CacheKey,
        version: str,
        build: Callable[[], Awaitable[SupportGraph]],
    ) -> Snapshot:
        asked_at = utcnow()
        current = self._graphs.get(key)
        if self._usable(current, version, asked_at):
            assert current is not None
            self._graphs.move_to_end(key)
            return Snapshot(current, stale=False)
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked() and current is not None:
            # Someone is rebuilding this snapshot: answer now from the previous one.
            return Snapshot(current, stale=True)
        async with lock:
            current = self._graphs.get(key)
            if current is not None and (
                self._usable(current, version, asked_at) or current.computed_at >= asked_at
            ):
                return Snapshot(current, stale=False)
            graph = await build()
            self.builds += 1
            self._graphs[key] = graph
            self._graphs.move_to_end(key)
            while len(self._graphs) > self.settings.cache_entries:
                evicted, _ = self._graphs.popitem(last=False)
                self._locks.pop(evicted, None)
            return Snapshot(graph, stale=False)

    def clear(self) -> None:
        self._graphs.clear()


def cache_from_state(state: Any) -> NetworkCache:
    """The app's cache, made on first use (``app.state.network_settings`` overrides the
    environment, which tests use to force sampling on small graphs)."""
    cache: NetworkCache | None = getattr(state, "network_cache", None)
    if cache is None:
        settings = getattr(state, "network_settings", None) or NetworkSettings()
        cache = NetworkCache(settings)
        state.network_cache = cache
    return cache
