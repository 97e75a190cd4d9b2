"""The ``timebank`` command: serve, migrate, create-admin, seed-demo, openapi."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.core.config import get_settings
from app.core.worker_load import create_board

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = PROJECT_ROOT / "openapi" / "openapi.json"


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    if url:
        config.attributes["url"] = url
    return config


def migrate(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def render_openapi() -> str:
    from app.main import create_app

    return json.dumps(create_app().openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _display_path(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if not args.no_migrate:
        migrate()
    # Several workers share a board of their requests in flight (app/core/worker_load.py).
    board = create_board(args.workers) if args.workers > 1 else None
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            proxy_headers=True,
            access_log=False,
            log_level="warning",
        )
    finally:
        if board is not None:
            board.unlink(missing_ok=True)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    migrate(revision=args.revision)
    print(f"database at {args.revision}")
    return 0


def _cmd_openapi(args: argparse.Namespace) -> int:
    document = render_openapi()
    if args.check:
        current = OPENAPI_PATH.read_text() if OPENAPI_PATH.exists() else ""
        if current != document:
            print(
                f"{_display_path(OPENAPI_PATH)} is out of date: run `make openapi`",
                file=sys.stderr,
            )
            return 1
        print(f"{_display_path(OPENAPI_PATH)} matches the app")
        return 0
    if args.stdout:
        sys.stdout.write(document)
    else:
        OPENAPI_PATH.parent.mkdir(exist_ok=True)
        OPENAPI_PATH.write_text(document)
        print(f"wrote {_display_path(OPENAPI_PATH)}")
    return 0


def _cmd_create_admin(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.cli_tasks import create_platform_admin
    from app.identity.schemas import UserCreate

    password = args.password or os.environ.get("TIMEBANK_ADMIN_PASSWORD")
    if not password:
        password = getpass.getpass("Password for the platform admin: ")
        if getpass.getpass("Repeat the password: ") != password:
            print("the passwords do not match", file=sys.stderr)
            return 2
    # The same rules as sign-up, so the admin can sign in with what was accepted here.
    try:
        credentials = UserCreate(email=args.email, password=password)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            print(f"{field}: {error['msg']}", file=sys.stderr)
        return 2
    user_id, created = asyncio.run(
        create_platform_admin(get_settings(), credentials.email, credentials.password)
    )
    if created:
        print(f"created platform admin {credentials.email} (user {user_id})")
    else:
        print(
            f"promoted existing user {credentials.email} to platform admin and set the "
            f"password (user {user_id})"
        )
    return 0


def _cmd_seed_demo(args: argparse.Namespace) -> int:
    from app.cli_tasks import seed_demo

    summary = asyncio.run(seed_demo(get_settings(), password=args.password))
    print(summary)
    return 0


def _cmd_reconcile(args: argparse.Namespace) -> int:
    """Exit 0 when the books are clean, 1 on findings, 2 when the run could not be made."""
    from app.cli_tasks import reconcile
    from app.models.reconciliation import RunStatus
    from app.reconciliation.service import render_text

    try:
        run = asyncio.run(reconcile(get_settings(), args.community, args.seal, full=args.full))
    except Exception as exc:
        print(f"reconciliation could not run: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(
            json.dumps(
                {"id": str(run.id), "status": run.status, "report": run.report},
                indent=2,
                default=str,
            )
        )
    else:
        print(render_text(run))
    return {RunStatus.passed: 0, RunStatus.failed: 1}.get(RunStatus(run.status), 2)


def _cmd_repair_balances(args: argparse.Namespace) -> int:
    from app.cli_tasks import repair_balances

    changes = asyncio.run(repair_balances(get_settings()))
    for change in changes:
        print(f"account {change['account_id']}: {change['from']} -> {change['to']}")
    print(f"{len(changes)} account(s) repaired")
    return 0


def _cmd_auto_confirm(args: argparse.Namespace) -> int:
    from app.cli_tasks import auto_confirm

    posted, skipped = asyncio.run(auto_confirm(get_settings()))
    print(f"auto-confirmed {posted} exchange(s); {skipped} left proposed (a limit refused them)")
    return 0


def _cmd_purge_idempotency_keys(args: argparse.Namespace) -> int:
    from app.cli_tasks import purge_idempotency_keys

    print(
        f"purged {asyncio.run(purge_idempotency_keys(get_settings()))} expired idempotency key(s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timebank", description="Run and manage a timebank service."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate the database, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-migrate", action="store_true", help="skip `alembic upgrade head`")
    serve.set_defaults(handler=_cmd_serve)

    mig = sub.add_parser("migrate", help="upgrade the database schema")
    mig.add_argument("revision", nargs="?", default="head")
    mig.set_defaults(handler=_cmd_migrate)

    admin = sub.add_parser("create-admin", help="create (or promote) a platform admin")
    admin.add_argument("email")
    admin.add_argument("--password", help="default: $TIMEBANK_ADMIN_PASSWORD, else asked for")
    admin.set_defaults(handler=_cmd_create_admin)

    seed = sub.add_parser("seed-demo", help="create a small realistic demo community")
    seed.add_argument("--password", default="timebank-demo", help="password of every demo login")
    seed.set_defaults(handler=_cmd_seed_demo)

    rec = sub.add_parser(
        "reconcile", help="check the books (exit 0 clean, 1 findings, 2 error) and seal them"
    )
    rec.add_argument("--community", metavar="SLUG", help="check one community (no seal)")
    rec.add_argument("--format", choices=("text", "json"), default="text")
    rec.add_argument("--seal", action="store_true", help="append a seal when every check passes")
    rec.add_argument(
        "--full",
        action="store_true",
        help="re-verify every sealed row, even where the last seal's census shows no change "
        "(PostgreSQL runs otherwise verify incrementally; see docs/seals.md)",
    )
    rec.set_defaults(handler=_cmd_reconcile)

    repair = sub.add_parser(
        "repair-balances", help="rebuild cached balances from entries, logging every change"
    )
    repair.set_defaults(handler=_cmd_repair_balances)

    auto = sub.add_parser(
        "auto-confirm", help="confirm proposals older than each community's auto-confirm days"
    )
    auto.set_defaults(handler=_cmd_auto_confirm)

    purge = sub.add_parser("purge-idempotency-keys", help="delete idempotency keys past retention")
    purge.set_defaults(handler=_cmd_purge_idempotency_keys)

    api = sub.add_parser("openapi", help="write openapi/openapi.json from the app")
    api.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    api.add_argument("--stdout", action="store_true")
    api.set_defaults(handler=_cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
