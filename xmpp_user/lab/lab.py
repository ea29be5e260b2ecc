"""A private Prosody on loopback, for tests, benchmarks and demos.

The lab renders ``prosody.cfg.lua.in`` into a run directory, starts ``prosody -F`` in the background
and records its PID and ports in ``RUN/lab.json``; ``down`` and ``status`` find it again from there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from string import Template
from typing import Any

TEMPLATE = Path(__file__).with_name("prosody.cfg.lua.in")
INSTALL_HINT = "Prosody is not installed: run  sudo apt-get install -y prosody"
STORAGES = ("internal", "memory")
LOG_LEVELS = ("warn", "info", "debug")
DEFAULT_C2S_PORT = 15222
DEFAULT_HTTP_PORT = 15280
# No proxy for loopback, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LabError(RuntimeError):
    """An expected failure of the lab, with a one-line message for the user."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for tests; another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        # Prosody binds with SO_REUSEADDR too, so sockets in TIME_WAIT do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class Lab:
    """A Prosody for load tests: anonymous logins on ``domain``, registered accounts on
    ``registered_domain`` (SCRAM-SHA-1) and ``scram_domain`` (every SCRAM Prosody has), rooms on
    ``muc_domain``; WebSocket, BOSH and /metrics on ``http_port``."""

    domain = "localhost"
    registered_domain = "reg.localhost"
    scram_domain = "scram.localhost"
    muc_domain = "muc.localhost"

    def __init__(
        self,
        run_dir: str | Path = ".lab",
        c2s_port: int = DEFAULT_C2S_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        storage: str = "internal",
        log_level: str = "warn",
    ) -> None:
        if storage not in STORAGES:
            raise LabError(f"unknown storage {storage!r} (choose from {', '.join(STORAGES)})")
        if log_level not in LOG_LEVELS:
            raise LabError(f"unknown log level {log_level!r} (choose from {', '.join(LOG_LEVELS)})")
        self.run_dir = Path(run_dir).resolve()
        self.c2s_port = c2s_port
        self.http_port = http_port
        self.storage = storage
        self.log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_record(cls, run_dir: str | Path = ".lab") -> Lab:
        """The lab recorded in ``run_dir`` (its ports and storage), or a default one if none is."""
        lab = cls(run_dir)
        record = lab._read_record()
        if record:
            lab.c2s_port, lab.http_port = record["c2s_port"], record["http_port"]
            lab.storage, lab.log_level = record.get("storage", lab.storage), record.get("log_level", lab.log_level)
        return lab

    # Paths and addresses

    @property
    def config_path(self) -> Path:
        return self.run_dir / "prosody.cfg.lua"

    @property
    def record_path(self) -> Path:
        return self.run_dir / "lab.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "prosody.log"

    @property
    def console_path(self) -> Path:
        return self.run_dir / "prosody.out"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def websocket_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/xmpp-websocket"

    @property
    def bosh_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/http-bind"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    @property
    def c2s_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.c2s_port)

    # Process

    @property
    def pid(self) -> int | None:
        """PID of this lab's Prosody, or None if it is not running."""
        record = self._read_record()
        pid = record.get("pid") if record else None
        return pid if pid and self._is_ours(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _read_record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None

    def _is_ours(self, pid: int) -> bool:
        # A recycled PID or a zombie must not pass for our server: match the config path in its command line.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(self.config_path) in cmdline

    def cpu_seconds(self) -> float:
        """CPU time (user + system) Prosody has used so far."""
        return process_cpu_seconds(self._require_pid())

    def rss_bytes(self) -> int:
        """Prosody's resident memory."""
        return process_rss_bytes(self._require_pid())

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise LabError(f"the lab in {self.run_dir} is not running")
        return pid

    def render_config(self) -> str:
        return Template(TEMPLATE.read_text()).substitute(
            run_dir=str(self.run_dir),
            c2s_port=self.c2s_port,
            http_port=self.http_port,
            storage=self.storage,
            log_level=self.log_level,
            domain=self.domain,
            registered_domain=self.registered_domain,
            scram_domain=self.scram_domain,
            muc_domain=self.muc_domain,
        )

    def up(self, timeout: float = 20) -> bool:
        """Start Prosody and wait until it serves; False if this lab was already running."""
        record = self._read_record()
        if record and record.get("pid") and self._is_ours(record["pid"]):
            self.c2s_port, self.http_port = record["c2s_port"], record["http_port"]
            return False
        prosody = shutil.which("prosody")
        if prosody is None:
            raise LabError(INSTALL_HINT)
        for port in (self.c2s_port, self.http_port):
            if port_in_use(port):
                raise LabError(f"port {port} is already in use")

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A fresh data directory per run: internal storage truncates an archive past its quota on every append.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir()
        (self.run_dir / "certs").mkdir(exist_ok=True)
        for stale in (self.log_path, self.run_dir / "prosody.pid"):
            stale.unlink(missing_ok=True)
        self.config_path.write_text(self.render_config())

        with open(self.console_path, "wb") as console:
            self._proc = subprocess.Popen(
                [prosody, "-F", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the shell that ran "lab up" must not reach it
            )
        self.record_path.write_text(
            json.dumps(
                {
                    "pid": self._proc.pid,
                    "c2s_port": self.c2s_port,
                    "http_port": self.http_port,
                    "storage": self.storage,
                    "log_level": self.log_level,
                    "websocket_url": self.websocket_url,
                    "domain": self.domain,
                    "registered_domain": self.registered_domain,
                    "scram_domain": self.scram_domain,
                    "muc_domain": self.muc_domain,
                },
                indent=2,
            )
            + "\n"
        )
        try:
            self._wait_ready(timeout)
        except BaseException:  # also Ctrl-C: a half-started server must not outlive "lab up"
            self.down()
            raise
        return True

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            problem = self._startup_problem()
            if problem:
                raise LabError(problem)
            if self._proc.poll() is not None:
                raise LabError(f"Prosody exited with status {self._proc.returncode}: {self._last_words()}")
            if _port_open(self.c2s_port) and _port_open(self.http_port) and self._metrics_ok():
                return
            if time.monotonic() > deadline:
                raise LabError(f"Prosody did not answer within {timeout:g} s: {self._last_words()}")
            time.sleep(0.1)

    def _startup_problem(self) -> str | None:
        # Prosody keeps running when it cannot bind a port; its log is the only sign.
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        for port in (self.c2s_port, self.http_port):
            if f"Failed to open server port {port}" in log:
                return f"port {port} is already in use"
        return None

    def _metrics_ok(self) -> bool:
        try:
            with _OPENER.open(self.metrics_url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _last_words(self) -> str:
        words = " | ".join(t for t in (_tail(self.log_path), _tail(self.console_path)) if t)
        return words or f"no output (see {self.run_dir})"

    def down(self, timeout: float = 10) -> bool:
        """Stop this lab's Prosody; False if it was not running. Never signals another process."""
        record = self._read_record()
        pid = record.get("pid") if record else None
        stopped = False
        if pid and self._is_ours(pid):
            os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                os.kill(pid, signal.SIGKILL)
                self._wait_exit(pid, 5)
            stopped = True
        if self._proc is not None:
            self._proc.poll()  # reap our child if it died on its own
            self._proc = None
        self.record_path.unlink(missing_ok=True)
        return stopped

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            # Our own child: reap it, or it lingers as a zombie.
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self._is_ours(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def status(self) -> dict[str, Any]:
        pid = self.pid
        cpu = rss = None
        if pid is not None:
            try:
                cpu, rss = process_cpu_seconds(pid), process_rss_bytes(pid)
            except OSError:
                pid = None  # exited in between
        return {
            "running": pid is not None,
            "pid": pid,
            "run_dir": str(self.run_dir),
            "c2s_port": self.c2s_port,
            "http_port": self.http_port,
            "storage": self.storage,
            "websocket_url": self.websocket_url,
            "bosh_url": self.bosh_url,
            "metrics_url": self.metrics_url,
            "cpu_seconds": cpu,
            "rss_bytes": rss,
        }

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
