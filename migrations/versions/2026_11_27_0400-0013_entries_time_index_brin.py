"""Entries: the (account_id, posted_at) b-tree gives way to a BRIN index on posted_at.

Every posting wrote two entries into four b-trees, and the one on (account_id, posted_at)
cost the most: a random place in a large index for each entry, about 7 of the ~70 ms of
database time a 1,000-transfer batch takes (EXPLAIN ANALYZE of the batch's write statement,
five runs each way: 23-25 -> 16-17 ms for inserting the 2,000 entries).

What it served is served otherwise. An account's entries run in time order as in version
order (app.ledger.posting.posting_time, and the database function of migration 0011), so a
statement or a balance ``as_of`` an instant reads the account's entries newest first through
the unique (account_id, account_version) index and stops at the first one in range. Where an
account has many entries and the range is narrow, PostgreSQL can combine that index with a
BRIN index on posted_at: entries are appended in time order, so a block range's min/max
posted_at brackets it tightly, and the index costs a few bytes per 128 pages to keep
(about 1 ms of the batch). SQLite builds the same index as a b-tree, appended at its right
edge (its planner reads an account's entries through the unique index anyway).

On PostgreSQL both indexes change CONCURRENTLY, outside a transaction, the new one first:
postings and statements go on while a large table is read to build it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 04:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _replace("ix_entries_account_id_posted_at", "ix_entries_posted_at", ["posted_at"], "brin")


def downgrade() -> None:
    _replace("ix_entries_posted_at", "ix_entries_account_id_posted_at", ["account_id", "posted_at"])


def _replace(old: str, new: str, columns: list[str], using: str = "btree") -> None:
    """Index ``new`` on entries, then ``old`` dropped.

    On PostgreSQL CONCURRENTLY, outside a transaction: postings go on while the index is built
    (one read of the table) and the old one is dropped. On SQLite plain index statements, not
    a batch, which could rebuild the table and its append-only triggers."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(new, "entries", columns)
        op.drop_index(old, table_name="entries")
        return
    with op.get_context().autocommit_block():
        op.create_index(
            new,
            "entries",
            columns,
            postgresql_using=using,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(old, table_name="entries", postgresql_concurrently=True, if_exists=True)
