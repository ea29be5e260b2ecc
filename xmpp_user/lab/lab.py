"""A private XMPP server on loopback for tests, benchmarks and demos: what every lab server shares.

``Lab(run_dir, ..., server="prosody" | "ejabberd", rooms="persistent" | "stock")`` makes the lab of
that server: ``ProsodyLab`` (prosody.py) or ``EjabberdLab`` (ejabberd.py). A lab renders its server's
config template from this package, starts the server in the foreground as a background process and
records its PIDs and ports in ``RUN/lab.json``; ``down``, ``status`` and ``Lab.from_record`` find it
again from there. Both servers serve the same names: anonymous logins on ``domain``, accounts on
``registered_domain``, rooms on ``muc_domain``, WebSocket and BOSH on ``http_port``.

With ``exporter_port``, ``up`` also starts ``locust-xmpp exporter`` beside the server, watching its PID
file (``RUN/server.pid``) and passing on Prosody's ``/metrics``; ``down`` stops it first.

A lab listens on 127.0.0.1 by default. The Prosody lab can run inside a network namespace instead
(``netns``, made beforehand with ``ip netns add``; needs root) and listen on an address of it
(``interface``), so that generators in other namespaces reach it as they would a server on another host:
its command is then prefixed with ``ip netns exec NAME`` (which execs, so the PID is still Prosody's) and
the lab probes its ports and metrics from inside that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xmpp_user.lab.procs import (  # noqa: F401  (free_port and the process helpers are this module's API too)
    free_port,
    mentions,
    port_in_use,
    port_open,
    process_cpu_seconds,
    process_rss_bytes,
    raise_open_files_limit,
)

SERVERS = ("prosody", "ejabberd")
# persistent: rooms outlive their last occupant, are archived and open at once (load tests);
# stock: each server's own defaults for room lifetime, locking and archiving (see the templates).
ROOMS = ("persistent", "stock")
STORAGES = ("internal", "memory")
RESUME_TIMEOUT = 60
"""Seconds a dropped resumable session is kept: the servers' defaults keep it 10 minutes (Prosody) or 5
(ejabberd), which would hold a test's dropped viewers in their rooms for as long."""
LOG_LEVELS = ("warn", "info", "debug")
DEFAULT_C2S_PORT = 15222
DEFAULT_HTTP_PORT = 15280


class LabError(RuntimeError):
    """An expected failure of the lab, with a one-line message for the user."""


_SERVER_CLASSES: dict[str, type[Lab]] = {}
"""Each server's lab class, registered by the class itself (``Lab.__init_subclass__``); the package's
``__init__`` imports every server module, so all are here once ``xmpp_user.lab`` is imported."""


def server_class(name: str) -> type[Lab]:
    if name not in _SERVER_CLASSES:
        raise LabError(f"unknown server {name!r} (choose from {', '.join(SERVERS)})")
    return _SERVER_CLASSES[name]


def _choose(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise LabError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")
    return value


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class Lab:
    """One lab server; ``Lab(...)`` returns the subclass named by ``server`` (default Prosody)."""

    server = ""  # "prosody" or "ejabberd", set by each subclass
    name = ""  # for messages: "Prosody", "ejabberd"
    install_hint = ""
    storages = STORAGES
    # The SCRAM mechanism the registered host offers (beside PLAIN), and SASL mechanisms per host.
    scram_mechanism = ""
    sasl_mechanisms: dict[str, tuple[str, ...]] = {}
    domain = "localhost"
    registered_domain = "reg.localhost"
    muc_domain = "muc.localhost"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A server's own lab registers; a subclass of it that names no server of its own (a benchmark's) does not.
        if cls.__dict__.get("server"):
            _SERVER_CLASSES.setdefault(cls.server, cls)

    def __new__(cls, *args: Any, server: str | None = None, **kwargs: Any) -> Lab:
        if cls is Lab:
            cls = server_class(server or "prosody")
        elif server not in (None, cls.server):
            raise LabError(f"{cls.__name__} is the {cls.server} lab, not {server!r}")
        return super().__new__(cls)

    def __init__(
        self,
        run_dir: str | Path = ".lab",
        c2s_port: int = DEFAULT_C2S_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        storage: str = "internal",
        log_level: str = "warn",
        *,
        server: str | None = None,
        rooms: str = "persistent",
        interface: str = "127.0.0.1",
        netns: str | None = None,
        resume_timeout: int = RESUME_TIMEOUT,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.interface = interface
        """The address the server listens on (all its ports)."""
        self.netns = netns or None
        """The network namespace the server runs in (a name given by ``ip netns add``), None for ours."""
        self.c2s_port = c2s_port
        self.http_port = http_port
        self.storage = _choose("storage", storage, STORAGES)
        self.log_level = _choose("log level", log_level, LOG_LEVELS)
        self.rooms = _choose("room setting", rooms, ROOMS)
        self.resume_timeout = resume_timeout
        """Seconds the server keeps a resumable session (and its room occupants) after its connection drops."""
        if storage not in self.storages:
            raise LabError(f"the {self.server} lab has no {storage} storage (choose from {', '.join(self.storages)})")
        self._proc: subprocess.Popen[bytes] | None = None
        self._server_pid: int | None = None
        self._exporter: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_record(cls, run_dir: str | Path = ".lab") -> Lab:
        """The lab recorded in ``run_dir`` (its server, ports and settings), or a default one if none is."""
        record = _read_record(Path(run_dir).resolve() / "lab.json")
        lab = Lab(run_dir, server=record.get("server", "prosody") if record else None)
        if record:
            lab._restore(record)
        return lab

    def _restore(self, record: dict[str, Any]) -> None:
        self.c2s_port, self.http_port = record["c2s_port"], record["http_port"]
        self.storage = record.get("storage", self.storage)
        self.log_level = record.get("log_level", self.log_level)
        self.rooms = record.get("rooms", "persistent")
        self.interface = record.get("interface", "127.0.0.1")
        self.netns = record.get("netns")
        self.resume_timeout = record.get("resume_timeout", RESUME_TIMEOUT)

    # Paths and addresses

    @property
    def record_path(self) -> Path:
        return self.run_dir / "lab.json"

    @property
    def config_path(self) -> Path:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def console_path(self) -> Path:
        return self.run_dir / f"{self.server}.out"

    @property
    def websocket_url(self) -> str:
        return f"ws://{self.interface}:{self.http_port}/xmpp-websocket"

    @property
    def bosh_url(self) -> str:
        return f"http://{self.interface}:{self.http_port}/http-bind"

    @property
    def metrics_url(self) -> str | None:
        """The OpenMetrics endpoint, or None for a server without one (ejabberd)."""
        return None

    @property
    def pid_path(self) -> Path:
        """The server's PID, for ``locust-xmpp exporter --pidfile``; written once the server is found."""
        return self.run_dir / "server.pid"

    @property
    def exporter_url(self) -> str | None:
        """Where the lab's exporter serves, if it runs."""
        record = self._read_record() or {}
        pid = record.get("exporter_pid")
        # Its command line names our PID file: a recycled PID does not pass for it.
        return f"http://127.0.0.1:{record['exporter_port']}/metrics" if pid and mentions(pid, self.pid_path) else None

    @property
    def c2s_address(self) -> tuple[str, int]:
        return (self.interface, self.c2s_port)

    # Process

    @property
    def pid(self) -> int | None:
        """PID of this lab's server process (the one doing the work), or None if it is not running."""
        record = self._read_record()
        if not record or record.get("server", "prosody") != self.server:
            return None
        pid = record.get("pid")
        return pid if pid and self._is_server(pid, record) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _read_record(self) -> dict[str, Any] | None:
        return _read_record(self.record_path)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far."""
        return process_cpu_seconds(self._require_pid())

    def rss_bytes(self) -> int:
        """The server's resident memory."""
        return process_rss_bytes(self._require_pid())

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise LabError(f"the lab in {self.run_dir} is not running")
        return pid

    # What each server defines

    def executable(self) -> str | None:
        """The server's start program, or None if its package is not installed."""
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """Why this server cannot start on this machine (one line), or None if it can."""
        if self.executable() is None:
            return self.install_hint
        return self._netns_problem()

    def _netns_problem(self) -> str | None:
        if not self.netns:
            return None
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return "a lab in a network namespace needs root and the ip command (iproute2)"
        if not Path(f"/run/netns/{self.netns}").exists():
            return f"there is no network namespace {self.netns} (make it with  ip netns add {self.netns})"
        return None

    def render_config(self) -> str:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write the config and make fresh data directories before a start."""
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        return None  # inherit ours

    def _record_extra(self) -> dict[str, Any]:
        return {}

    def _is_server(self, pid: int, record: dict[str, Any]) -> bool:
        """Whether ``pid`` is still this lab's server process (not a recycled PID)."""
        raise NotImplementedError

    def _find_server_pid(self) -> int | None:
        """The server process once it exists (the launcher itself, or one of its descendants)."""
        assert self._proc is not None
        return self._proc.pid

    def _serving(self) -> bool:
        """Beyond open ports: does the server answer?"""
        return True

    def _startup_problem(self) -> str | None:
        """A reason to give up starting, read from the server's log."""
        return None

    def _stop_processes(self, record: dict[str, Any], timeout: float) -> bool:
        """Stop the recorded server process; True if it was running."""
        pid = record.get("pid")
        if not pid or not self._is_server(pid, record):
            return False
        self._terminate(pid, lambda: self._is_server(pid, record), timeout)
        return True

    def _cleanup(self, record: dict[str, Any] | None) -> None:
        """After the server is gone: what else the lab made outside the run directory."""

    # Start and stop

    def up(self, timeout: float = 20, exporter_port: int | None = None) -> bool:
        """Start the server (and its exporter on ``exporter_port``) and wait until it serves; False if this lab
        was already running (its exporter is started then if it has none)."""
        current = Lab.from_record(self.run_dir)
        if current.running:
            if current.server != self.server:
                raise LabError(f"a {current.server} lab is already running in {self.run_dir}: "
                               "stop it first with  locust-xmpp lab down")  # fmt: skip
            self._restore(current._read_record() or {})
            if exporter_port and self.exporter_url is None:
                self.start_exporter(exporter_port)
            return False
        reason = self.unavailable()
        if reason:
            raise LabError(reason)
        if exporter_port and self.netns:
            raise LabError("the lab's exporter runs only beside a lab on loopback (not in a network namespace)")
        for port in (self.c2s_port, self.http_port):
            if port_in_use(port, self.interface, self.netns):
                raise LabError(f"port {port} is already in use")
        for port in [exporter_port] if exporter_port else []:
            if port_in_use(port):
                raise LabError(f"port {port} is already in use")

        current._cleanup(current._read_record())  # what a lab that died without "lab down" left behind
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        try:
            with open(self.console_path, "wb") as console:
                self._proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.netns, *self._command()] if self.netns else self._command(),
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the shell that ran "lab up" must not reach it
                    preexec_fn=raise_open_files_limit,
                )
        except BaseException:
            self._cleanup(self._record_extra())
            raise
        self._server_pid = None
        self._write_record()
        try:
            self._wait_ready(timeout)
            if exporter_port:
                self.start_exporter(exporter_port)
        except BaseException:  # also Ctrl-C: a half-started server must not outlive "lab up"
            self.down()
            raise
        return True

    def start_exporter(self, port: int, timeout: float = 15) -> None:
        """Start ``locust-xmpp exporter`` for the running server on 127.0.0.1:``port`` and wait until it serves."""
        self._require_pid()
        if port_in_use(port):
            raise LabError(f"port {port} is already in use")
        command = [sys.executable, "-m", "xmpp_user.cli", "exporter", "--pidfile", str(self.pid_path)]
        command += ["--port", str(port)]
        if self.metrics_url:
            command += ["--server-metrics", self.metrics_url]
        output = self.run_dir / "exporter.out"
        with open(output, "wb") as out:
            self._exporter = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)  # fmt: skip
        self._update_record(exporter_pid=self._exporter.pid, exporter_port=port)
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if self._exporter.poll() is not None or time.monotonic() > deadline:
                self.stop_exporter()
                raise LabError(f"the exporter did not start: {_tail(output) or 'no output'}")
            time.sleep(0.1)

    def stop_exporter(self, timeout: float = 5) -> bool:
        """Stop the lab's exporter; False if none was running."""
        record = self._read_record() or {}
        pid = record.get("exporter_pid")
        running = bool(pid) and mentions(pid, self.pid_path)
        if running:
            self._terminate(pid, lambda: mentions(pid, self.pid_path), timeout)
        if self._exporter is not None:
            self._exporter.wait(timeout)  # ours: reap it
            self._exporter = None
        if record:
            self._update_record(exporter_pid=None, exporter_port=None)
        return running

    def _update_record(self, **fields: Any) -> None:
        record = self._read_record() or {}
        record.update(fields)
        self.record_path.write_text(json.dumps(record, indent=2) + "\n")

    def _write_record(self) -> None:
        assert self._proc is not None
        record = {
            "server": self.server,
            "rooms": self.rooms,
            "pid": self._server_pid,
            "launcher_pid": self._proc.pid,
            "c2s_port": self.c2s_port,
            "http_port": self.http_port,
            "interface": self.interface,
            "netns": self.netns,
            "storage": self.storage,
            "log_level": self.log_level,
            "resume_timeout": self.resume_timeout,
            "websocket_url": self.websocket_url,
            "metrics_url": self.metrics_url,
            "domain": self.domain,
            "registered_domain": self.registered_domain,
            "muc_domain": self.muc_domain,
            **self._record_extra(),
        }
        self.record_path.write_text(json.dumps(record, indent=2) + "\n")
        if self._server_pid is not None:
            self.pid_path.write_text(f"{self._server_pid}\n")

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._server_pid is None:
                self._server_pid = self._find_server_pid()
                if self._server_pid is not None:
                    self._write_record()
            problem = self._startup_problem()
            if problem:
                raise LabError(problem)
            if self._proc.poll() is not None:
                raise LabError(f"{self.name} exited with status {self._proc.returncode}: {self._last_words()}")
            if (
                self._server_pid is not None
                and port_open(self.c2s_port, self.interface, self.netns)
                and port_open(self.http_port, self.interface, self.netns)
                and self._serving()
            ):
                return
            if time.monotonic() > deadline:
                raise LabError(f"{self.name} did not answer within {timeout:g} s: {self._last_words()}")
            time.sleep(0.1)

    def _last_words(self) -> str:
        words = " | ".join(t for t in (_tail(self.log_path), _tail(self.console_path)) if t)
        return words or f"no output (see {self.run_dir})"

    def down(self, timeout: float = 10) -> bool:
        """Stop this lab's server; False if it was not running. Never signals another process."""
        record = self._read_record()
        if record and record.get("server", "prosody") != self.server:
            return Lab.from_record(self.run_dir).down(timeout)  # the lab recorded there, whatever self is
        if record:
            self.stop_exporter()
        stopped = self._stop_processes(record, timeout) if record else False
        if self._proc is not None:
            self._proc.poll()  # reap our child if it died on its own
            self._proc = None
        self._cleanup(record)
        self.record_path.unlink(missing_ok=True)
        self.pid_path.unlink(missing_ok=True)
        return stopped

    def _terminate(self, pid: int, alive: Any, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; ``alive()`` says whether ``pid`` is still our process."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_exit(pid, alive, wait):
                return

    def _wait_exit(self, pid: int, alive: Any, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            # Our own child: reap it, or it lingers as a zombie.
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while alive():
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
            "server": self.server,
            "rooms": self.rooms,
            "running": pid is not None,
            "pid": pid,
            "run_dir": str(self.run_dir),
            "c2s_port": self.c2s_port,
            "http_port": self.http_port,
            "interface": self.interface,
            "netns": self.netns,
            "storage": self.storage,
            "websocket_url": self.websocket_url,
            "bosh_url": self.bosh_url,
            "metrics_url": self.metrics_url,
            "exporter_url": self.exporter_url,
            "cpu_seconds": cpu,
            "rss_bytes": rss,
        }

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        return (f"<{type(self).__name__} {self.run_dir} rooms={self.rooms} {self.interface}{where} c2s={self.c2s_port} "
                f"http={self.http_port}>")  # fmt: skip


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
