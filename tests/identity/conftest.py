from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.factories import IdentityApi


@pytest.fixture
def api(client: AsyncClient, app: FastAPI) -> IdentityApi:
    return IdentityApi(client, app)
