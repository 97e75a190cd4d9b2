"""Helpers for tests that need an app built with their own settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

ServeApp = Callable[[FastAPI], AbstractAsyncContextManager[AsyncClient]]


@asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture
def serve() -> ServeApp:
    """``async with serve(app) as client``: run a test-built app's lifespan and talk to it."""
    return _serve
