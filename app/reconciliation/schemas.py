from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from app.core.schemas import InputModel, OutputModel, PublicId
from app.models.reconciliation import RunStatus


class ReconciliationCreate(InputModel):
    community_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="Check one community; omit to check (and seal) the whole ledger"
    )
    seal: bool = Field(default=True, description="Append a seal when every check passes")
    full: bool = Field(
        default=False,
        description="Re-hash every sealed row and transaction, even where the last seal's "
        "census shows nothing changed (whole-ledger runs; otherwise done on a schedule)",
    )


class ReconciliationRead(OutputModel):
    id: PublicId
    community_id: PublicId | None
    status: RunStatus
    progress: int = Field(description="Percent done")
    seal_requested: bool
    full_requested: bool
    findings_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    seal_id: PublicId | None
    report: dict[str, Any] = Field(description="Checks with findings, tampering, the seal")


class ExternalMatchRead(OutputModel):
    id: PublicId
    run_id: PublicId
    filename: str
    tolerance_days: int
    summary: dict[str, int]
    result: dict[str, list[dict[str, Any]]] = Field(
        description="matched, amount_mismatches, date_mismatches, missing_from_ledger, "
        "missing_from_file, duplicates, malformed (with line numbers)"
    )
    created_at: datetime
