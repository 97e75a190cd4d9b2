"""PostgreSQL: the ledger's references are checked once per statement, not once per row.

A posting inserts a transaction and its entries. Six foreign keys were checked on every row:
entries' account and transaction, and transactions' community, poster (a user or a partner
client) and reversed transaction. PostgreSQL checks a foreign key with one query per inserted
row, run through its internal query interface; a NULL reference still costs a trigger call.
For a batch of 1,000 transfers that is 6,000 queries and 2,000 more calls. They were about
45 % of the database's work on the batch's write (EXPLAIN ANALYZE of the write statement:
59-72 ms with them, 31-37 ms without).

These constraints give way to triggers that keep the same promise over all of a statement's
rows at once (transition tables), with one query per reference:

- *Child side* (``ledger_check_entry_references`` and
  ``ledger_check_transaction_references``, AFTER INSERT FOR EACH STATEMENT). Every inserted
  entry names an account and a transaction that exist. Every inserted transaction names a
  community that exists, and, where it names them, a user, a partner client and a reversed
  transaction that exist. The account, community, user and client rows are locked FOR KEY
  SHARE until the end of the transaction, as a foreign key's check locks them, so nobody can
  delete them meanwhile. Transaction rows are not locked: transactions are append-only
  (migration 0001's triggers refuse UPDATE, DELETE and TRUNCATE), so one that exists stays.
- *Parent side* (``ledger_keep_referenced``, on accounts, communities, users and api_clients).
  Deleting a row, or changing its id, is refused while a ledger row names it (AFTER DELETE
  and AFTER UPDATE OF id, FOR EACH ROW). TRUNCATE is refused while the ledger table holds a
  row naming any (BEFORE TRUNCATE). A foreign key without ON DELETE refuses the same.

Why the two sides together keep the promise under concurrency, as PostgreSQL's own checks do:
a delete of a parent and an insert naming it meet on the parent's row lock. If the insert's
trigger locks the row first, the delete waits for the insert's transaction to end, and then
the parent-side check, which runs under READ COMMITTED with a fresh snapshot, sees the
committed child and refuses. If the delete comes first, the insert's lock waits for it, finds
the row gone, and the insert is refused. PostgreSQL's own checks also cover a delete under
REPEATABLE READ, whose snapshot can be older than the child's commit, with a second snapshot
that a trigger cannot take: so the parent-side trigger refuses to delete or truncate under
any isolation but READ COMMITTED. The service never deletes these rows (accounts are closed and
partner clients revoked, not deleted); an operator who must, deletes them under the default
isolation.

The triggers raise what a foreign key raises: SQLSTATE 23503 (foreign_key_violation) with the
constraint's former name, table and key in the message and detail, and for TRUNCATE 0A000.
They are ordinary triggers, so ``session_replication_role = replica`` skips them, as it skips
foreign keys' checks; unlike a foreign key, it skips the TRUNCATE check too. SQLite keeps its foreign keys (each a cheap index probe inside the process); the
models keep declaring all six references, and ``migrations/env.py`` leaves these six out of
``alembic check`` on PostgreSQL (``app.models.ledger.STATEMENT_CHECKED_REFERENCES``).

The triggers name every table they read with its schema, so a temporary table of the same
name cannot stand in for it.

The downgrade first looks for rows naming a missing row (written with the triggers skipped)
and stops, naming one, before it changes anything. Then it puts the foreign keys back NOT
VALID and validates them after the commit, so the table scan of the validation does not
block postings.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 07:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (constraint, child table, child column, parent table): the references this revision moves.
REFERENCES = (
    ("fk_entries_account_id_accounts", "entries", "account_id", "accounts"),
    ("fk_entries_transaction_id_transactions", "entries", "transaction_id", "transactions"),
    ("fk_transactions_community_id_communities", "transactions", "community_id", "communities"),
    ("fk_transactions_posted_by_user_id_users", "transactions", "posted_by_user_id", "users"),
    (
        "fk_transactions_posted_by_client_id_api_clients",
        "transactions",
        "posted_by_client_id",
        "api_clients",
    ),
    ("fk_transactions_reverses_id_transactions", "transactions", "reverses_id", "transactions"),
)
# (table, trigger function, transition table): the child-side checks.
CHILD_CHECKS = (
    ("entries", "ledger_check_entry_references", "new_entries"),
    ("transactions", "ledger_check_transaction_references", "new_transactions"),
)
# The parents that can be deleted: transactions cannot (append-only triggers).
GUARDED_PARENTS = tuple(r for r in REFERENCES if r[3] != "transactions")

# A missing parent, as a foreign key reports it. {lock} locks the parents this statement's
# rows name; a row whose parent is missing (or deleted by a transaction that committed while
# the lock waited) finds no row to lock.
_MISSING = """
    SELECT n.{column}::text INTO v_missing
      FROM {new} n
      LEFT JOIN LATERAL (SELECT p.id FROM {schema}.{parent} p WHERE p.id = n.{column}{lock}) p ON true
     WHERE n.{column} IS NOT NULL AND p.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "{table}" violates foreign key constraint "{name}"'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = '{name}', TABLE = '{table}',
                  DETAIL = format('Key ({column})=(%s) is not present in table "{parent}".',
                                  v_missing);
    END IF;"""


def _child_check(schema: str, table: str, function: str, new: str) -> list[str]:
    checks = "".join(
        _MISSING.format(
            name=name,
            table=table,
            column=column,
            parent=parent,
            schema=schema,
            new=new,
            lock="" if parent == "transactions" else " FOR KEY SHARE",
        )
        for name, child, column, parent in REFERENCES
        if child == table
    )
    return [
        f"""
CREATE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    v_missing text;
BEGIN{checks}
    RETURN NULL;
END
$fn$""",
        f"CREATE TRIGGER {table}_check_references AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS {new} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


KEEP_REFERENCED = r"""
CREATE FUNCTION ledger_keep_referenced() RETURNS trigger
LANGUAGE plpgsql AS $fn$
-- TG_ARGV: the referencing table, its column, the name of the reference.
DECLARE
    v_referenced boolean;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% on table "%" runs under READ COMMITTED only', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Table "%s" references it (%s), checked by a trigger that '
                                  'must see the latest committed rows.', TG_ARGV[0], TG_ARGV[2]);
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM %I.%I WHERE %I IS NOT NULL)', TG_TABLE_SCHEMA,
                       TG_ARGV[0], TG_ARGV[1]) INTO v_referenced;
        IF v_referenced THEN
            RAISE EXCEPTION 'cannot truncate a table referenced in a foreign key constraint'
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = format('Table "%s" references "%s" (%s).', TG_ARGV[0],
                                      TG_TABLE_NAME, TG_ARGV[2]);
        END IF;
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT FROM %I.%I WHERE %I = $1)', TG_TABLE_SCHEMA, TG_ARGV[0],
                   TG_ARGV[1])
        INTO v_referenced USING OLD.id;
    IF v_referenced THEN
        RAISE EXCEPTION 'update or delete on table "%" violates foreign key constraint "%" on table "%"',
                TG_TABLE_NAME, TG_ARGV[2], TG_ARGV[0]
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = TG_ARGV[2],
                  TABLE = TG_TABLE_NAME,
                  DETAIL = format('Key (id)=(%s) is still referenced from table "%s".', OLD.id,
                                  TG_ARGV[0]);
    END IF;
    RETURN NULL;
END
$fn$;
"""


def _parent_triggers(name: str, child: str, column: str, parent: str) -> list[str]:
    arguments = f"'{child}', '{column}', '{name}'"
    trigger = f"{parent}_keep_{child}_{column}"
    run = f"EXECUTE FUNCTION ledger_keep_referenced({arguments})"
    return [
        f"CREATE TRIGGER {trigger}_on_delete AFTER DELETE ON {parent} FOR EACH ROW {run}",
        f"CREATE TRIGGER {trigger}_on_update AFTER UPDATE OF id ON {parent} FOR EACH ROW "
        f"WHEN (OLD.id IS DISTINCT FROM NEW.id) {run}",
        f"CREATE TRIGGER {trigger}_on_truncate BEFORE TRUNCATE ON {parent} "
        f"FOR EACH STATEMENT {run}",
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Every table the triggers read is named with its schema: a temporary table of the same
    # name (pg_temp comes first in any search_path) must not stand in for it.
    schema = op.get_bind().exec_driver_sql("SELECT quote_ident(current_schema())").scalar_one()
    for table, function, new in CHILD_CHECKS:
        for statement in _child_check(schema, table, function, new):
            op.execute(statement)
    op.execute(KEEP_REFERENCED)
    for reference in GUARDED_PARENTS:
        for statement in _parent_triggers(*reference):
            op.execute(statement)
    for name, child, _column, _parent in REFERENCES:
        op.drop_constraint(name, child, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # A row written with the triggers skipped (session_replication_role = replica) may name a
    # missing row. The foreign keys could not be validated then: say which, before any change.
    for name, child, column, parent in REFERENCES:
        orphan = (
            op.get_bind()
            .exec_driver_sql(
                f"SELECT c.{column}::text FROM {child} c WHERE c.{column} IS NOT NULL "
                f"AND NOT EXISTS (SELECT FROM {parent} p WHERE p.id = c.{column}) LIMIT 1"
            )
            .scalar()
        )
        if orphan is not None:
            raise RuntimeError(
                f"cannot restore {name}: {child}.{column} = {orphan} names no row of {parent}"
            )
    for name, child, column, parent in REFERENCES:
        op.create_foreign_key(name, child, parent, [column], ["id"], postgresql_not_valid=True)
    for name, child, column, parent in GUARDED_PARENTS:
        trigger = f"{parent}_keep_{child}_{column}"
        for event in ("delete", "update", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}_on_{event} ON {parent}")
    op.execute("DROP FUNCTION IF EXISTS ledger_keep_referenced()")
    for table, function, _new in CHILD_CHECKS:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_check_references ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    # (After the commit of the above: validating reads the tables with postings going on.)
    with op.get_context().autocommit_block():
        for name, child, _column, _parent in REFERENCES:
            op.execute(f"ALTER TABLE {child} VALIDATE CONSTRAINT {name}")
