"""Cursor (keyset) pagination: ``limit`` and ``cursor`` in, ``items`` and ``next_cursor`` out.

A cursor is an opaque, URL-safe encoding of the last row's sort key. Keyset pages stay
fast and stable while rows are added, unlike offsets.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.core.errors import InvalidCursor

T = TypeVar("T")
Row = TypeVar("Row")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; absent on the last page."
    )


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None


def page_params(
    request: Request,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size; the server caps it (default 50, max 200).")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=500, description="`next_cursor` of the previous page.")
    ] = None,
) -> PageParams:
    settings = request.app.state.settings
    size = settings.default_page_size if limit is None else min(limit, settings.max_page_size)
    return PageParams(limit=size, cursor=cursor)


Pagination = Annotated[PageParams, Depends(page_params)]


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [str(v) if isinstance(v, uuid.UUID) else v for v in values]
    raw = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("The cursor is not one this server issued.") from exc
    if not isinstance(values, list):
        raise InvalidCursor("The cursor is not one this server issued.")
    return values


def _cursor_uuid(cursor: str) -> uuid.UUID:
    values = decode_cursor(cursor)
    try:
        return uuid.UUID(str(values[0]))
    except (IndexError, ValueError) as exc:
        raise InvalidCursor("The cursor is not one this server issued.") from exc


async def paginate_by_id(
    session: AsyncSession,
    stmt: Select[Row],
    id_column: InstrumentedAttribute[uuid.UUID],
    params: PageParams,
    *,
    newest_first: bool = False,
    row_id: Callable[[Row], uuid.UUID],
) -> tuple[list[Row], str | None]:
    """Page through ``stmt`` ordered by a time-ordered UUID column."""
    if params.cursor is not None:
        after = _cursor_uuid(params.cursor)
        stmt = stmt.where(id_column < after if newest_first else id_column > after)
    stmt = stmt.order_by(id_column.desc() if newest_first else id_column.asc()).limit(
        params.limit + 1
    )
    rows = list((await session.scalars(stmt)).all())
    next_cursor = None
    if len(rows) > params.limit:
        rows = rows[: params.limit]
        next_cursor = encode_cursor([row_id(rows[-1])])
    return rows, next_cursor
