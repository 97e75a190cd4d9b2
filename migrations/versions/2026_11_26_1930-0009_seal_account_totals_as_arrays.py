"""Seals keep their account totals as aligned arrays instead of a jsonb object.

``ledger_seals.totals_accounts`` (account ids), ``totals_entries``, ``totals_balances`` and
``totals_earned`` hold, row for row, each account's figures over the entries the seal's census
counts as old (docs/seals.md, *Account totals*); spent is earned less the balance. Arrays cost
a fraction of the jsonb object to build, digest, store and read. The jsonb ``account_totals``
goes: a seal made before keeps the jsonb digest in its census under another key, so the next
run finds no totals it can use and sums every entry once, as after a seal without totals, and
leaves arrays in its own seal. On SQLite (which keeps no totals) the columns are JSON.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 19:30:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACCOUNT_IDS = postgresql.ARRAY(sa.Uuid()).with_variant(sa.JSON(), "sqlite")
_FIGURES = postgresql.ARRAY(sa.BigInteger()).with_variant(sa.JSON(), "sqlite")
_COLUMNS: dict[str, sa.types.TypeEngine[Any]] = {
    "totals_accounts": _ACCOUNT_IDS,
    "totals_entries": _FIGURES,
    "totals_balances": _FIGURES,
    "totals_earned": _FIGURES,
}


def upgrade() -> None:
    for name, column_type in _COLUMNS.items():
        op.add_column("ledger_seals", sa.Column(name, column_type, nullable=True))
    op.drop_column("ledger_seals", "account_totals")


def downgrade() -> None:
    op.add_column(
        "ledger_seals",
        sa.Column(
            "account_totals",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )
    for name in reversed(list(_COLUMNS)):
        op.drop_column("ledger_seals", name)
