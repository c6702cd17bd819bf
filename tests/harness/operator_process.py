"""The real operator as a process (`python -m kubetune_operator.cli.kubetune_operator`), for e2e and the bench.

No pytest here: `bench/operator_scale.py` imports it too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p + 1 free too (/metrics + /readyz on p, kopf's /healthz on p + 1)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as second:
                second.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two adjacent free ports")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, check: Callable[[], None] | None = None) -> T:
    """Poll `probe` until it returns something truthy; `check` runs first each time (e.g. "still alive?")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        value = probe()
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class OperatorProcess:
    """The operator against an emulated API (its kubeconfig), restartable, with its log in a file.

    `args` are CLI flags (default `--all-namespaces`); `settings` are extra KUBETUNE_* variables.
    """

    def __init__(self, kubeconfig: Path, log_path: Path, *args: str, **settings: str) -> None:
        self.port = free_port_pair()
        self.log_path = log_path
        self.args = list(args) or ["--all-namespaces"]
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(log_path.parent),
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("api", "operator")),
            "KUBETUNE_HEALTH_PORT": str(self.port),
            "KUBETUNE_TRAINER_IMAGE": "kubetune/trainer:test",
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        """The operator's command line; ImageOperator (tests/e2e/test_images.py) runs the image's instead."""
        return [sys.executable, "-m", "kubetune_operator.cli.kubetune_operator", *self.args]

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,  # stop() signals the group: a launcher's children too
            )
        wait_for(lambda: self.get("/readyz") == "ok" or None, timeout, "the operator to be ready", self.check_alive)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log()[-3000:]}")

    def get(self, path: str, port: int | None = None) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.port}{path}", timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def metrics(self) -> str:
        return self.get("/metrics") or ""

    def proc_status(self, key: str) -> int:
        """A kB figure from /proc/<pid>/status (VmHWM, VmRSS), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the operator process (all its threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
