"""The reference: the same transfer as one PL/pgSQL function, in a database of the same shape
(the service's own migrations, the same seed), driven by pgbench.

``bench_transfer(from_n, to_n, minutes, user)`` does what the posting engine does for a
two-entry transfer: lock both account rows in ascending id order, check status and limits
(community defaults unless the account overrides them; a limit only refuses movement away
from the range), insert the transaction (UUIDv7 id, SHA-256 content hash) and its two entries
with ``balance_after``/``account_version``, and update both accounts (balance, version,
earned/spent totals, updated_at). A refusal returns NULL and writes nothing. It does no
authentication and keeps no idempotency record: it is the floor the service is measured
against, not a competitor.
"""

from __future__ import annotations

import asyncio
import random
import re
import resource
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import _procs
from bench._load import percentile

FUNCTIONS_SQL = r"""
CREATE TABLE bench_account_ids (n integer PRIMARY KEY, id uuid NOT NULL);

CREATE FUNCTION bench_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
         substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
         FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

CREATE FUNCTION bench_transfer(p_to integer, p_from integer, p_minutes integer, p_user uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
  v_to uuid;
  v_from uuid;
  v_community uuid;
  v_to_after bigint;
  v_to_version bigint;
  v_from_after bigint;
  v_from_version bigint;
  v_found integer := 0;
  v_tx uuid := bench_uuid_v7();
  v_now timestamptz := clock_timestamp();
  r record;
BEGIN
  SELECT id INTO v_to FROM bench_account_ids WHERE n = p_to;
  SELECT id INTO v_from FROM bench_account_ids WHERE n = p_from;
  FOR r IN
    SELECT a.id, a.community_id, a.status, a.balance, a.version,
           coalesce(a.min_balance, c.default_min_balance) AS min_b,
           coalesce(a.max_balance, c.default_max_balance) AS max_b
      FROM accounts a JOIN communities c ON c.id = a.community_id
     WHERE a.id IN (v_to, v_from)
     ORDER BY a.id
       FOR UPDATE OF a
  LOOP
    IF r.status <> 'open' THEN
      RETURN NULL;
    END IF;
    IF r.id = v_to THEN
      v_to_after := r.balance + p_minutes;
      v_to_version := r.version + 1;
      IF v_to_after > r.max_b THEN RETURN NULL; END IF;
    ELSE
      v_from_after := r.balance - p_minutes;
      v_from_version := r.version + 1;
      IF v_from_after < r.min_b THEN RETURN NULL; END IF;
    END IF;
    v_community := r.community_id;
    v_found := v_found + 1;
  END LOOP;
  IF v_found <> 2 THEN
    RETURN NULL;
  END IF;

  INSERT INTO transactions (id, community_id, kind, memo, occurred_on, details, posted_at,
                            posted_by_user_id, posted_by_client_id, reverses_id, content_hash)
  VALUES (v_tx, v_community, 'transfer', 'bench', current_date, '{}'::jsonb, v_now,
          p_user, NULL, NULL,
          encode(sha256(convert_to(concat_ws(chr(31), v_tx::text, v_community::text,
                 'transfer', current_date::text, '', 'bench',
                 v_to::text || ':' || p_minutes, v_from::text || ':' || (-p_minutes)),
                 'UTF8')), 'hex'));
  INSERT INTO entries (transaction_id, account_id, amount, balance_after, account_version,
                       posted_at)
  VALUES (v_tx, v_to, p_minutes, v_to_after, v_to_version, v_now),
         (v_tx, v_from, -p_minutes, v_from_after, v_from_version, v_now);
  UPDATE accounts SET balance = v_to_after, version = v_to_version,
                      earned_total = earned_total + p_minutes, updated_at = v_now
   WHERE id = v_to;
  UPDATE accounts SET balance = v_from_after, version = v_from_version,
                      spent_total = spent_total + p_minutes, updated_at = v_now
   WHERE id = v_from;
  RETURN v_tx;
END
$$;

CREATE FUNCTION bench_transfer_many(p_to integer[], p_from integer[], p_minutes integer[],
                                    p_user uuid)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  i integer;
  v_posted integer := 0;
BEGIN
  FOR i IN 1 .. array_length(p_to, 1) LOOP
    IF bench_transfer(p_to[i], p_from[i], p_minutes[i], p_user) IS NOT NULL THEN
      v_posted := v_posted + 1;
    END IF;
  END LOOP;
  RETURN v_posted;
END
$$;
"""

PGBENCH_SCRIPT = """\
\\set a random(1, {n})
\\set d random(1, {n_minus_1})
\\set b 1 + (:a - 1 + :d) % {n}
\\set m random(1, 120)
SELECT bench_transfer(:a, :b, :m, '{user}');
"""


async def install(url: str, account_ids: Sequence[uuid.UUID]) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute(FUNCTIONS_SQL)  # asyncpg: several statements in one call
            await conn.execute(
                text("INSERT INTO bench_account_ids (n, id) VALUES (:n, :id)"),
                [{"n": n, "id": account_id} for n, account_id in enumerate(account_ids, 1)],
            )
            await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latencies_ms: list[float] = field(default_factory=list)
    pgbench_cpu: float = 0.0  # the load generator's own CPU seconds
    database_cpu: float = 0.0  # the database's backends
    machine_busy: float = 0.0
    machine_total: float = 0.0
    output: str = ""

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def run_pgbench(
    *,
    database: str,
    user_id: uuid.UUID,
    accounts: int,
    clients: int,
    duration: float,
) -> PgbenchResult:
    pgbench = _procs.pgbench_path()
    assert pgbench is not None
    with tempfile.TemporaryDirectory(prefix="timebank-pgbench-") as tmp:
        script = Path(tmp) / "transfer.sql"
        script.write_text(PGBENCH_SCRIPT.format(n=accounts, n_minus_1=accounts - 1, user=user_id))
        command = [
            pgbench,
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-n",  # no vacuum of pgbench's own tables (there are none)
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(max(1, round(duration))),
            "-f",
            str(script),
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
            database,
        ]
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, total0 = _procs.machine_busy_seconds()
        with _procs.BackendCpu(database) as backends:
            done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp)
        busy1, total1 = _procs.machine_busy_seconds()
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stderr}")
        output = done.stdout + done.stderr
        match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
        processed = re.search(r"number of transactions actually processed: (\d+)", output)
        failed = re.search(r"number of failed transactions: (\d+)", output)
        latencies: list[float] = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    latencies.append(int(parts[2]) / 1000)
        return PgbenchResult(
            tps=float(match.group(1)) if match else 0.0,
            transactions=int(processed.group(1)) if processed else 0,
            failed=int(failed.group(1)) if failed else 0,
            latencies_ms=latencies,
            pgbench_cpu=(children1.ru_utime + children1.ru_stime)
            - (children0.ru_utime + children0.ru_stime),
            database_cpu=backends.seconds,
            machine_busy=busy1 - busy0,
            machine_total=total1 - total0,
            output=output,
        )


@dataclass
class BatchReference:
    batches: int
    postings: int
    seconds: float
    batch_ms: list[float]

    @property
    def rate(self) -> float:
        return self.postings / self.seconds if self.seconds else 0.0


async def run_batch_reference(
    *, url: str, user_id: uuid.UUID, accounts: int, size: int, duration: float, min_batches: int
) -> BatchReference:
    """``bench_transfer`` called ``size`` times in a loop inside one statement (hence one
    transaction) per batch, timed from the client round trip."""
    rng = random.Random(11)
    engine = create_async_engine(url)
    statement = text("SELECT bench_transfer_many(:to, :frm, :m, :u)")
    batch_ms: list[float] = []
    postings = 0
    try:
        async with engine.connect() as conn:

            async def one() -> tuple[int, float]:
                to_ids: list[int] = []
                from_ids: list[int] = []
                for _ in range(size):
                    a, b = rng.sample(range(1, accounts + 1), 2)
                    to_ids.append(a)
                    from_ids.append(b)
                minutes = [rng.randint(1, 120) for _ in range(size)]
                t0 = time.perf_counter()
                posted = await conn.scalar(
                    statement, {"to": to_ids, "frm": from_ids, "m": minutes, "u": user_id}
                )
                await conn.commit()
                return int(posted or 0), time.perf_counter() - t0

            await one()  # warm-up
            seconds = 0.0
            t_start = time.perf_counter()
            while len(batch_ms) < min_batches or time.perf_counter() - t_start < duration:
                posted, elapsed = await one()
                postings += posted
                seconds += elapsed
                batch_ms.append(elapsed * 1000)
                await asyncio.sleep(0)
    finally:
        await engine.dispose()
    return BatchReference(len(batch_ms), postings, seconds, batch_ms)
