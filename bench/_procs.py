"""Machine facts and per-process CPU/RSS from /proc (Linux only; no extra dependency)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def pgbench_path() -> str | None:
    return shutil.which("pgbench")


def pgbench_version() -> str:
    path = pgbench_path()
    if path is None:
        return "not installed"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (scans /proc: ``/proc/<pid>/task/*/children`` needs a
    kernel option that is not always on)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces or parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass(frozen=True)
class Memory:
    rss_mib: float  # VmRSS now
    hwm_mib: float  # VmHWM: the peak RSS of the process's life


def memory(pid: int) -> Memory | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0]) / 1024
    return Memory(values.get("VmRSS", 0.0), values.get("VmHWM", 0.0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    # Fields after "(comm)": state=0, ppid=1, ..., utime=11, stime=12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in first]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user/nice
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


class BackendCpu:
    """CPU seconds used by the PostgreSQL backends of one database while it runs.

    A thread samples /proc every ``interval`` seconds and finds backends by their process
    title (``postgres: ... <user> <database> ...``). A backend born during the window counts
    from zero; one that exits between two samples loses at most ``interval`` of its time.
    Only works when PostgreSQL runs on this machine, visible in /proc (else it reports 0).
    """

    def __init__(self, database: str, interval: float = 0.25) -> None:
        self.marker = f" {database} "
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._ignore: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._scans = 0

    def __enter__(self) -> BackendCpu:
        self._scan()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._scan()

    def _scan(self) -> None:
        first_scan = self._scans == 0
        self._scans += 1
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in self._ignore:
                continue
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    self._ignore.add(pid)
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if self.marker not in title:
                continue  # another database, a background process, or still starting up
            used = cpu_seconds(pid)
            if pid not in self.first:
                self.first[pid] = used if first_scan else 0.0
            self.last[pid] = used
