"""Seals carry a census for incremental verification; runs can ask for a full one.

``ledger_seals.census`` records, for the run that made the seal, which rows of ``entries`` and
``transactions`` it saw by row version (PostgreSQL ``xmin``) and where the seal's blocks start,
so the next run re-hashes only what can have changed (docs/seals.md). Seals made before have
none: the next run verifies in full. ``reconciliation_runs.full_requested`` asks a run to
re-hash everything regardless.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, or with a server default) so SQLite applies them in place.
    op.add_column(
        "ledger_seals",
        sa.Column(
            "census",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )
    op.add_column(
        "reconciliation_runs",
        sa.Column("full_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("reconciliation_runs", "full_requested")
    op.drop_column("ledger_seals", "census")
