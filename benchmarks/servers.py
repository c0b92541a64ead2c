"""Start an ASGI app under hypercorn, uvicorn or granian in its own process.

Each server runs one worker process, pinned to one core with taskset when
``cpu`` is given, and is stopped by its process id.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("hypercorn", "uvicorn", "granian")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """Return a process's parent id and CPU seconds (user plus system)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in brackets, may contain spaces: fields follow it.
    fields = text.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def cpu_seconds(pid: int) -> float:
    """Return the CPU seconds used so far by ``pid`` and its descendants.

    Reads ``/proc`` (Linux only). Servers such as granian serve from a
    child process, so the whole tree counts.
    """
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _proc_stat(int(entry.name))
        if found is not None:
            children.setdefault(found[0], []).append(int(entry.name))
            used[int(entry.name)] = found[1]
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += used.get(current, 0.0)
        pending.extend(children.get(current, ()))
    return total


def server_available(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _command(server: str, factory: str, port: int) -> list[str]:
    python = sys.executable
    if server == "hypercorn":
        return [python, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", f"{factory}()"]  # fmt: skip
    if server == "uvicorn":
        # uvicorn picks uvloop and httptools when they are installed, as
        # the bench extra does.
        return [python, "-m", "uvicorn", "--factory", factory, "--host",
                "127.0.0.1", "--port", str(port), "--workers", "1",
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
    if server == "granian":
        return [python, "-m", "granian", "--interface", "asgi", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--runtime-threads", "1", "--loop", "uvloop", "--no-ws",
                "--log-level", "warning", factory]  # fmt: skip
    raise ValueError(f"unknown server {server!r}; use one of {', '.join(SERVERS)}")


class ServerProcess:
    """``factory`` (``module:function``) served by ``server`` on ``port``."""

    def __init__(
        self,
        server: str,
        factory: str,
        port: int,
        env: dict[str, str],
        cpu: int | None = None,
        log: Path | None = None,
    ) -> None:
        self.server = server
        self.port = port
        command = _command(server, factory, port)
        if cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(cpu), *command]
        self._log = log
        output = open(log, "ab") if log else subprocess.DEVNULL
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
            command,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        if log:
            output.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_healthy(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.server} exited with {self._process.returncode}; "
                    f"see {self._log}"
                )
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.server} on {self.port} not healthy in {timeout} s")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
