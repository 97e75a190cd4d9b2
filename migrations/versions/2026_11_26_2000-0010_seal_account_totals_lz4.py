"""Seal account totals are compressed with lz4 on PostgreSQL.

Every sealing run stores its seal's account totals (four arrays, about 0.4 MB at 10,000
accounts) and clears its predecessor's. PostgreSQL's default TOAST compression (pglz) spends
about 24 ms storing them; lz4 about 12. Servers built without lz4 keep pglz (the statement is
skipped, not failed). SQLite keeps no totals.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 20:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("totals_accounts", "totals_entries", "totals_balances", "totals_earned")


def _set_compression(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    columns = ", ".join(f"ALTER COLUMN {name} SET COMPRESSION {method}" for name in _COLUMNS)
    op.execute(
        f"""
        DO $$
        BEGIN
            ALTER TABLE ledger_seals {columns};
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            RAISE NOTICE '{method} is not available on this server: totals are unchanged';
        END
        $$
        """
    )


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
