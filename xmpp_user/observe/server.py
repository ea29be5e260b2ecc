"""``locust-xmpp exporter``: the server under test, seen from beside it, for Prometheus.

At every scrape, and only then, the exporter reads the watched process from /proc with
prometheus-client's ``ProcessCollector`` pointed at that PID (namespace ``xmpp_server``: CPU seconds,
resident and virtual memory, open and maximum file descriptors, start time), adds its thread count
(which ``ProcessCollector`` does not read) and ``xmpp_server_up``, and, given ``--server-metrics URL``
(Prosody's ``/metrics``), fetches the server's own families and passes them on unchanged. The
process figures never depend on that fetch: a server too busy to answer in time still shows its CPU,
and ``xmpp_server_metrics_up`` says the fetch failed.

The watched process is named by PID (``--pid``: that process only; a PID the system reuses for
another program does not count), by a PID file read at each scrape, or by its program name, looked
up again when the process it found is gone (a restarted server). ejabberd's server process is
``beam.smp``; Prosody's is a Lua interpreter running ``/usr/bin/prosody``, and either name finds it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from xmpp_user.observe import names

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 0.8
"""Seconds to wait for the server's own metrics: below dashboards/prometheus.yml's 1 s scrape timeout, so
that a slow server costs the scrape its own families, never the process figures."""
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is near: no proxy


class TargetError(ValueError):
    """The process to watch cannot be found, or the input naming it is wrong (one line)."""


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the PID, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19]) if fields[0] != b"Z" else None  # a zombie has done its work


def _program_names(pid: int) -> set[str]:
    """Names a process answers to: its command name, its program and, for an interpreter, its script."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        args = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return set()
    found = {comm}
    if args:
        found.add(os.path.basename(args[0].decode(errors="replace")))
    if len(args) > 1 and args[1].startswith(b"/"):  # an interpreter's script: "lua5.4 /usr/bin/prosody -F ..."
        found.add(os.path.basename(args[1].decode(errors="replace")))
    return found


def processes_named(name: str) -> list[int]:
    """Live processes answering to ``name`` (a bounded scan of /proc)."""
    own = os.getpid()
    return sorted(int(e) for e in os.listdir("/proc")
                  if e.isdigit() and int(e) != own and name in _program_names(int(e)))  # fmt: skip


class Target:
    """The process to watch; ``pid()`` is its PID now, or None while there is none."""

    def __init__(self, pid: int | None = None, pidfile: str | None = None, name: str | None = None) -> None:
        if [pid, pidfile, name].count(None) != 2:
            raise TargetError("name the process with exactly one of --pid, --pidfile, --process-name")
        self.fixed_pid, self.pidfile, self.name = pid, Path(pidfile) if pidfile else None, name
        self._pid: int | None = None
        self._start: int | None = None
        self._ambiguous = False
        self.describe = f"pid {pid}" if pid else f"the process in {pidfile}" if pidfile else f"process {name!r}"
        found = self._find(strict=True)
        if found is None:
            raise TargetError(f"no process to watch: {self.describe} is not running")

    def pid(self) -> int | None:
        if self._pid is not None:
            if _start_ticks(self._pid) == self._start and (self.pidfile is None or self._read_pidfile() == self._pid):
                return self._pid
            log.warning("The watched process, pid %d, is gone", self._pid)
            self._pid = self._start = None
        if self.fixed_pid is not None:  # that process is gone, and a later one with its PID is another
            return None
        found = self._find(strict=False)
        if found is not None:
            log.warning("Watching %s again: pid %d", self.describe, found)
        return found

    def _find(self, strict: bool) -> int | None:
        """The live process the input names now; once the watched one is gone, found again at each scrape."""
        if self.fixed_pid is not None:
            candidates = [self.fixed_pid]
        elif self.pidfile is not None:
            candidates = [p for p in [self._read_pidfile(strict)] if p is not None]
        else:
            assert self.name is not None
            candidates = processes_named(self.name)
            ambiguous, self._ambiguous = self._ambiguous, len(candidates) > 1
            if self._ambiguous:
                if strict:
                    raise TargetError(f"{len(candidates)} processes answer to {self.name!r} "
                                      f"({', '.join(map(str, candidates))}): pass --pid")  # fmt: skip
                if not ambiguous:  # said once, not at every scrape
                    log.warning("%d processes answer to %r: watching none until one is left", len(candidates),
                                self.name)  # fmt: skip
                return None
        for pid in candidates:
            start = _start_ticks(pid)
            if start is not None:
                self._pid, self._start = pid, start
                return pid
        return None

    def _read_pidfile(self, strict: bool = False) -> int | None:
        assert self.pidfile is not None
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            if strict:
                reason = exc.strerror if isinstance(exc, OSError) else "it holds no PID"
                raise TargetError(f"cannot read the pid file {self.pidfile}: {reason}") from None
            return None


class ServerMetrics:
    """The server's own metrics endpoint, fetched and parsed at each scrape."""

    def __init__(self, url: str, timeout: float = FETCH_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetError(f"--server-metrics must be an http:// or https:// URL, not {url!r}")
        self.url, self.timeout = url, timeout
        self.failing: str | None = None
        """Why the last fetch failed, None if it worked: a change is logged once, not at every scrape."""

    def fetch(self) -> list[Metric]:
        """The server's families; raises OSError or ValueError with the reason when it cannot."""
        with _OPENER.open(self.url, timeout=self.timeout) as response:
            body = response.read().decode("utf-8", errors="replace")
            kind = response.headers.get("Content-Type", "")
        parse = parse_openmetrics if kind.startswith("application/openmetrics-text") else parse_text
        return list(parse(body))

    def collect(self) -> Iterator[Metric]:
        try:
            families = self.fetch()
        except (OSError, ValueError) as exc:
            reason = fetch_error(exc)
            if reason != self.failing:
                log.warning("Cannot fetch the server's metrics from %s: %s", self.url, reason)
            self.failing = reason
            families = []
        else:
            if self.failing is not None:
                log.warning("The server's metrics at %s answer again", self.url)
            self.failing = None
        up = int(self.failing is None)
        yield GaugeMetricFamily(names.SERVER_METRICS_UP, "1 if the server's own metrics answered this scrape.",
                                value=up)  # fmt: skip
        yield from families


def fetch_error(exc: Exception) -> str:
    """Why a fetch of the server's metrics failed, in a few words."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class ServerCollector(Collector):
    """``xmpp_server_*`` for the target process, and the server's own families if asked for."""

    def __init__(self, target: Target, server_metrics: ServerMetrics | None = None) -> None:
        self.target = target
        self.server_metrics = server_metrics
        self._pid: int | None = None
        self._process = ProcessCollector(namespace=names.SERVER, pid=lambda: self._pid, registry=None)

    def collect(self) -> Iterator[Metric]:
        self._pid = pid = self.target.pid()
        # ProcessCollector reads what it can and leaves out the rest: a process that ends meanwhile has no RSS.
        process = list(self._process.collect()) if pid is not None else []
        threads = _threads(pid) if pid is not None else None
        yield GaugeMetricFamily(names.SERVER_UP, "1 while the watched process runs.", value=int(bool(process)))
        yield from process
        if threads is not None:
            yield GaugeMetricFamily(names.SERVER_THREADS, "Threads of the process.", value=threads)
        if self.server_metrics is not None:
            yield from self.server_metrics.collect()


def _threads(pid: int) -> int | None:
    """The thread count from /proc/PID/status (ProcessCollector has none; beam.smp runs a scheduler per core)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def serve(collector: ServerCollector, port: int, host: str, ready: Callable[[str], None] = print) -> None:
    """Serve ``collector`` on ``host:port`` until SIGTERM or SIGINT; OSError if the port is taken."""
    registry = CollectorRegistry()
    registry.register(collector)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
        try:
            ready(f"exporter serving {collector.target.describe} at http://{host}:{port}/metrics")
            while not stop.wait(3600):
                pass
        finally:
            server.shutdown()
            server.server_close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
