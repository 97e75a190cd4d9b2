"""Seals keep each account's figures over the entries their census counts as old.

``ledger_seals.account_totals`` maps an account id to ``[entries, total, earned, spent]`` over
the entries the sealing run saw that its census counts as old (docs/seals.md). The next run,
the census holding, adds the fresh entries to these instead of summing every entry again.
The census holds their digest, so they are as tamper-evident as the seal; only the latest
seal keeps them (a new seal clears its predecessor's). Seals made before have none: the next
run sums every entry, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ledger_seals",
        sa.Column(
            "account_totals",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_column("ledger_seals", "account_totals")
