"""Communities record when their default limits last changed.

Reconciliation forgives a balance left outside limits that were tightened after it was posted;
it used ``updated_at`` for that, which any edit (a rename) moves. Existing rows start from
their ``updated_at``, the closest honest value.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 12:32:27.658679
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (nullable): SQLite applies it in place, where a batch "copy and move"
    # of communities would have to drop a table that every other table references.
    op.add_column("communities", sa.Column("limits_changed_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE communities SET limits_changed_at = updated_at")


def downgrade() -> None:
    op.drop_column("communities", "limits_changed_at")
