"""Fuzz the API with schemathesis against a live server on 127.0.0.1 and a fresh SQLite file.

    python -m fuzz.run           # the long run (``make fuzz``): up to 15 minutes
    python -m fuzz.run --short   # the CI run (``make fuzz-short``): a few minutes at most
    python -m fuzz.run -- --seed 1 --include-path-regex ledger   # extra schemathesis options

It migrates a scratch database, seeds the demo community (``timebank seed-demo``), starts
uvicorn, signs in as the demo admin (a platform admin and the community's admin), collects real
ids for ``fuzz.hooks`` and runs ``schemathesis run openapi/openapi.json`` with every check,
authenticated, over the examples, coverage, fuzzing and stateful phases. The exit code is
schemathesis': 0 when no check failed (no 5xx, every response matches its declared status,
content type, headers and schema).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_ADMIN = "admin@riverside.example"
DEMO_PASSWORD = "timebank-demo-fuzz"  # noqa: S105 (a scratch database, deleted after)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(database: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TIMEBANK_ENVIRONMENT": "development",
        "TIMEBANK_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "TIMEBANK_ACCESS_TOKEN_TTL_SECONDS": "86400",
        "TIMEBANK_PASSWORD_HASH_TIME_COST": "1",
        "TIMEBANK_PASSWORD_HASH_MEMORY_KIB": "1024",
        "TIMEBANK_PASSWORD_HASH_PARALLELISM": "1",
        "TIMEBANK_LOG_LEVEL": "ERROR",
    }


def prepare_database(env: dict[str, str]) -> None:
    """Migrate and seed in a child process, so this one never caches settings."""
    code = (
        "import asyncio\n"
        "from app.cli import migrate\n"
        "from app.cli_tasks import seed_demo\n"
        "from app.core.config import get_settings\n"
        "migrate()\n"
        f"print(asyncio.run(seed_demo(get_settings(), password={DEMO_PASSWORD!r})))\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True)  # noqa: S603


@contextlib.contextmanager
def live_server(env: dict[str, str], *extra: str) -> Iterator[str]:
    """uvicorn serving the app on a free port of 127.0.0.1; yields its base URL."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        *extra,
    ]
    process = subprocess.Popen(command, env=env, cwd=ROOT)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def collect_ids(base: str) -> tuple[str, dict[str, list[str]]]:
    """Sign in as the demo admin; return the bearer token and real ids by path parameter."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        token = await http.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": DEMO_ADMIN, "password": DEMO_PASSWORD},
        )
        token.raise_for_status()
        access = token.json()["access_token"]
        http.headers["Authorization"] = f"Bearer {access}"

        async def items(path: str) -> list[dict[str, Any]]:
            response = await http.get(path, params={"limit": 50})
            response.raise_for_status()
            found: list[dict[str, Any]] = response.json()["items"]
            return found

        me = (await http.get("/v1/me")).json()
        community_id = me["memberships"][0]["community_id"]
        prefix = f"/v1/communities/{community_id}"
        members = await items(f"{prefix}/members")
        transactions = await items(f"{prefix}/transactions")
        listings = await items(f"{prefix}/listings")
        exchanges = await items(f"{prefix}/exchanges")
        run = await http.post("/v1/admin/reconciliations", json={"community_id": community_id})
        reconciliations = [run.json()["id"]] if run.status_code == 202 else []
        client = await http.post(
            f"{prefix}/clients", json={"name": "fuzz partner", "scopes": ["ledger:read"]}
        )
        clients = [client.json()["client_id"]] if client.status_code == 201 else []
        ids = {
            "community_id": [community_id],
            "member_id": [m["id"] for m in members],
            "account_id": [m["account_id"] for m in members if m.get("account_id")],
            "transaction_id": [t["id"] for t in transactions],
            "listing_id": [x["id"] for x in listings],
            "exchange_id": [x["id"] for x in exchanges],
            "reconciliation_id": reconciliations,
            "client_id": clients,
        }
        return access, ids


def schemathesis_command(base: str, token: str, *, short: bool, extra: list[str]) -> list[str]:
    command = [
        str(BIN / "schemathesis"),
        "run",
        str(ROOT / "openapi" / "openapi.json"),
        "--url",
        base,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        # Both judge how strict validation is, not what the service answers; see
        # docs/reliability.md ("Fuzz and security") for the cases they flag and why they stand.
        "--exclude-checks",
        "positive_data_acceptance,negative_data_rejection",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    if short:
        command += ["--max-examples", "25", "--max-time", "150", "--seed", "20240601"]
    else:
        command += ["--max-examples", "200", "--max-time", "900"]
    return command + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the bounded CI run")
    parser.add_argument("extra", nargs="*", help="after --: passed on to schemathesis run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="timebank-fuzz-") as scratch:
        env = server_env(Path(scratch) / "fuzz.db")
        prepare_database(env)
        with live_server(env) as base:
            token, ids = asyncio.run(collect_ids(base))
            ids_file = Path(scratch) / "ids.json"
            ids_file.write_text(json.dumps(ids))
            fuzz_env = {
                **env,
                "SCHEMATHESIS_HOOKS": "fuzz.hooks",
                "TIMEBANK_FUZZ_IDS": str(ids_file),
                "PYTHONPATH": str(ROOT),
            }
            command = schemathesis_command(base, token, short=args.short, extra=args.extra)
            print("fuzzing", base, "with", " ".join(c for c in command if "Bearer" not in c))
            # The scratch directory as cwd keeps schemathesis' replay cache out of the tree.
            return subprocess.run(command, env=fuzz_env, cwd=scratch, check=False).returncode  # noqa: S603


if __name__ == "__main__":
    sys.exit(main())
