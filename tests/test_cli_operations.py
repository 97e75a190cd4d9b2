"""The operational commands: reconcile, repair-balances, auto-confirm, purge-idempotency-keys."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from app import cli
from tests.test_cli import database, migrated  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("migrated")


def _seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["seed-demo"]) == 0
    capsys.readouterr()


def test_reconcile_exits_0_on_clean_books_and_seals(
    migrated: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(capsys)
    assert cli.main(["reconcile", "--seal", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "passed"
    assert all(check["status"] == "pass" for check in report["report"]["checks"])


def test_reconcile_full_asks_for_a_full_verification(
    migrated: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(capsys)
    assert cli.main(["reconcile", "--seal", "--full", "--format", "json"]) == 0
    full_run = json.loads(capsys.readouterr().out)
    assert cli.main(["reconcile", "--format", "json"]) == 0
    plain_run = json.loads(capsys.readouterr().out)
    assert full_run["report"]["verification"]["mode"] == "full"
    with sqlite3.connect(migrated) as conn:
        requested = dict(conn.execute("SELECT id, full_requested FROM reconciliation_runs"))
    assert {str(k).replace("-", ""): bool(v) for k, v in requested.items()} == {
        full_run["id"].replace("-", ""): True,
        plain_run["id"].replace("-", ""): False,
    }


def test_reconcile_exits_1_and_names_the_row_when_a_balance_is_wrong(
    migrated: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(capsys)
    with sqlite3.connect(migrated) as conn:
        (account_id,) = conn.execute(
            "SELECT id FROM accounts WHERE kind = 'member' LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE accounts SET balance = 30, earned_total = 30 WHERE id = ?", (account_id,)
        )
    assert cli.main(["reconcile"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "cached_totals" in out

    assert cli.main(["repair-balances"]) == 0
    assert "1 account(s) repaired" in capsys.readouterr().out
    assert cli.main(["reconcile"]) == 0


def test_reconcile_exits_2_when_it_cannot_run(
    migrated: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["reconcile", "--community", "no-such-place"]) == 2
    assert "no community has the slug" in capsys.readouterr().err


def test_housekeeping_commands_report_what_they_did(
    migrated: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["auto-confirm"]) == 0
    assert "auto-confirmed 0 exchange(s)" in capsys.readouterr().out
    assert cli.main(["purge-idempotency-keys"]) == 0
    assert "purged 0 expired" in capsys.readouterr().out
