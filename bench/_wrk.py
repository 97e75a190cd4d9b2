"""``wrk`` as the load generator for single postings (the issue names it; Debian: ``wrk``).

wrk is a C program: about 20 us of CPU per request against 110-180 us for the bench's own
asyncio client, and the load generator shares the machine's two cores with the server and
PostgreSQL. A Lua script makes each request a transfer between two random accounts with a
fresh ``Idempotency-Key``, counts responses by status and prints wrk's latency percentiles
(from its HdrHistogram, of every request) as one JSON line, which ``run_wrk`` reads back into a
``LoadResult`` like the Python clients'.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import _procs
from bench._load import LoadResult

SCRIPT = r"""
local accounts = {%(accounts)s}
local count = #accounts
local threads = {}
local prefix = nil
local sent = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(%(seed)d + id * 7919)
  prefix = string.format("%(run)s-%%d-", id)
  statuses = {}
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer %(token)s"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local a = math.random(count)
  local b = math.random(count - 1)
  if b >= a then b = b + 1 end
  local minutes = math.random(120)
  sent = sent + 1
  wrk.headers["Idempotency-Key"] = prefix .. sent
  local body = string.format(
    '{"kind":"transfer","entries":[{"account_id":"%%s","minutes":%%d},' ..
    '{"account_id":"%%s","minutes":%%d}],"memo":"bench"}',
    accounts[a], minutes, accounts[b], -minutes)
  return wrk.format(nil, "%(path)s", nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%%d":%%d', status, n))
  end
  io.write(string.format(
    'WRK-RESULT {"requests":%%d,"duration_us":%%d,"errors":%%d,' ..
    '"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"statuses":{%%s}}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ",")))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    *,
    base_url: str,
    token: str,
    path: str,
    accounts: Sequence[str],
    concurrency: int,
    warmup: float,
    duration: float,
    server_pids: Sequence[int],
    database: str | None = None,
    seed: int = 1,
) -> LoadResult:
    """``warmup`` seconds of load unmeasured, then ``duration`` seconds measured, from
    ``concurrency`` connections on 2 wrk threads."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "transfer.lua"
        if warmup > 0:
            _write_script(script, token, path, accounts, seed, "warm")
            _wrk(base_url, script, concurrency, warmup)
        _write_script(script, token, path, accounts, seed, f"run{time.time_ns()}")
        backends = _procs.BackendCpu(database) if database else None
        server0 = sum(_procs.cpu_seconds(p) for p in server_pids)
        busy0, total0 = _procs.machine_busy_seconds()
        client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.monotonic()
        if backends is not None:
            backends.__enter__()
        try:
            output = _wrk(base_url, script, concurrency, duration)
        finally:
            if backends is not None:
                backends.__exit__()
        wall = time.monotonic() - wall0
        client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1, total1 = _procs.machine_busy_seconds()
        server1 = sum(_procs.cpu_seconds(p) for p in server_pids)
    line = next(x for x in output.splitlines() if x.startswith("WRK-RESULT "))
    report = json.loads(line.removeprefix("WRK-RESULT "))
    result = LoadResult()
    result.statuses.update({int(s): n for s, n in report["statuses"].items()})
    result.requests = int(report["requests"])
    result.ok = result.ok_window = sum(n for s, n in result.statuses.items() if 200 <= s < 300)
    for status, n in result.statuses.items():
        if not 200 <= status < 300:
            result.codes[f"{status} (wrk does not read bodies)"] += n
    if report["errors"]:
        result.statuses[0] += int(report["errors"])
        result.codes["0 connection errors"] += int(report["errors"])
    result.seconds = report["duration_us"] / 1e6
    result.reported_percentiles_ms = {q: report[f"p{q}"] / 1000 for q in (50, 90, 99)} | {
        100: report["max"] / 1000
    }
    result.client_cpu = (client1.ru_utime + client1.ru_stime) - (
        client0.ru_utime + client0.ru_stime
    )
    result.server_cpu = server1 - server0
    result.machine_busy = busy1 - busy0
    result.machine_total = total1 - total0
    result.database_cpu = backends.seconds if backends is not None else 0.0
    result.cpu_window = wall
    return result


def _write_script(
    script: Path, token: str, path: str, accounts: Sequence[str], seed: int, run: str
) -> None:
    script.write_text(
        SCRIPT
        % {
            "accounts": ",".join(f'"{a}"' for a in accounts),
            "seed": seed,
            "run": run,
            "token": token,
            "path": path,
        }
    )


def _wrk(base_url: str, script: Path, concurrency: int, seconds: float) -> str:
    completed = subprocess.run(
        [
            "wrk",
            "--threads",
            "2",
            "--connections",
            str(concurrency),
            "--duration",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "--script",
            str(script),
            base_url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout
