"""Start ``timebank serve`` in its own process group, wait until it answers, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from bench import _procs
from bench._seed import PROJECT_ROOT, timebank_command


@dataclass
class Server:
    database_url: str
    workers: int
    log_path: Path
    port: int = field(default_factory=_procs.free_port)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "TIMEBANK_DATABASE_URL": self.database_url,
            "TIMEBANK_ENVIRONMENT": "development",
            "TIMEBANK_LOG_LEVEL": "WARNING",
            "TIMEBANK_ACCESS_TOKEN_TTL_SECONDS": "3600",
        }
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *timebank_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it and its workers
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200
                # With several workers, wait until each has started too.
                if ready and len(self.worker_pids()) >= self.workers:
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"the server did not become ready in {timeout:.0f} s:\n{self.log_tail()}"
        )

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn's spawned workers, or the server
        process itself when it runs one worker in-process."""
        if self.process is None:
            return []
        if self.workers == 1:
            return [self.process.pid]
        return [
            pid
            for pid in _procs.children_of(self.process.pid)
            if "resource_tracker" not in _procs.cmdline(pid)
        ]

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # uvicorn stops its workers gracefully
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # the group this class created
                process.wait(timeout=5)
        if process is not None:
            # A worker that outlived its supervisor would still be in the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
