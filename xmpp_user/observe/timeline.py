"""Samples of a run while it goes on, and of the server under test, for the report.

On the master or a local runner, while a run goes on:

- every second, the run's state: time, users, sessions really open, requests and failures so far by
  request name, the message truth counters and the phase in force;
- when the server is observed, its process's CPU and resident memory five times a second, read
  from ``/proc`` as ``top`` does (CPU % over each 0.2 s, so it can pass 100 % on several cores);
- at each phase change and at the end, Locust's per-name statistics (counts and response time
  distributions; on a master the workers' aggregated ones), from which the report takes each phase's
  latency percentiles by difference.

The server is observed when ``--xmpp-server-pid N`` names its process on this host, or when
``--host`` is the WebSocket URL of the lab running in ``$LOCUST_XMPP_LAB_DIR`` (default ``./.lab``).

With ``--csv PREFIX`` the samples are written as ``PREFIX_timeline.csv``, ``PREFIX_server.csv`` and
``PREFIX_phase_stats.json`` every ``FLUSH_INTERVAL`` seconds while the run goes on (so that a generator
killed mid-run, an evicted or OOM-killed master pod among them, leaves its run up to then, and
``locust-xmpp report PREFIX`` draws it), and for the last time at the end of the run, after the phases
have closed and the last statistics have come in (at ``test_stop`` on a local runner, when quitting on a
master, which is when its workers' last reports arrive); a headless run then writes its report
(``xmpp_user.observe.report``). On a master the statistics are those the workers have reported so
far: they lag the run by up to Locust's report interval (3 s).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

import gevent
from locust import events
from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from xmpp_user.lab.procs import process_cpu_seconds, process_rss_bytes
from xmpp_user.observe.model import (
    TRUTH_KEYS,
    NameStats,
    Sample,
    Snapshot,
    write_phase_stats,
    write_server,
    write_timeline,
)
from xmpp_user.run import outcome, phases
from xmpp_user.run.options import option_group, positive

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of the run's state."""
SERVER_INTERVAL = 0.2
"""Seconds between two samples of the server process."""
MAX_SAMPLES = 200_000
"""Timeline samples kept at most (two days at one a second); later ones are dropped, and the log says so."""
MAX_SERVER_SAMPLES = 5 * MAX_SAMPLES
FLUSH_INTERVAL = 5.0
"""Seconds between two writes of the run's files while it goes on (longer when a write takes long: a write
costs at most a twentieth of the time between two)."""
QUIET_WINDOW = 2.0
"""Seconds of server samples over which its CPU is compared with its idle level (phases that settle)."""
QUIET_MARGIN = 10.0
"""Percentage points above its idle level at which the server still counts as quiet: its idle level is the
lowest mean CPU it showed over any ``QUIET_WINDOW`` of the run so far."""
LAB_DIR_VARIABLE = "LOCUST_XMPP_LAB_DIR"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = option_group(parser, "observation", "What locust-xmpp observes of the server under test")
    group.add_argument(
        "--xmpp-server-pid",
        type=positive(int),
        default=None,
        help="PID of the server process on this host, to sample its CPU and memory (default: the lab's, "
        "when --host is the WebSocket URL of the lab in $LOCUST_XMPP_LAB_DIR or ./.lab)",
    )


def find_server(options: Any, host: str | None) -> tuple[int | None, str, str]:
    """The server process to observe: (pid or None, how to name it, a note saying how it was found or why
    it was not)."""
    wanted = getattr(options, "xmpp_server_pid", None) if options is not None else None
    if wanted not in (None, "", "None"):  # the web UI form may send the default as text
        try:
            pid = int(wanted)
        except (TypeError, ValueError):
            return None, "the server", f"--xmpp-server-pid {wanted!r} is not a process id"
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None, "the server", f"no process {pid} on this host (--xmpp-server-pid)"
        return pid, f"{name} (pid {pid})", f"process {pid} ({name}), from --xmpp-server-pid"
    run_dir = os.environ.get(LAB_DIR_VARIABLE) or ".lab"
    why = (f"the server was not observed: --host is not the WebSocket URL of a lab running in {run_dir} "
           "and no --xmpp-server-pid was given")  # fmt: skip
    if not host:
        return None, "the server", why
    try:
        from xmpp_user.lab.lab import Lab

        lab = Lab.from_record(run_dir)
        pid = lab.pid
    except Exception as exc:  # a damaged record is not the run's problem
        log.debug("No lab in %s: %s", run_dir, exc)
        return None, "the server", why
    if pid is None or not same_url(lab.websocket_url, host):
        return None, "the server", why
    return pid, f"{lab.name} (pid {pid})", f"the lab's {lab.name} in {lab.run_dir}, pid {pid}"


def same_url(a: str, b: str) -> bool:
    """Whether two WebSocket URLs name the same endpoint (loopback names taken as one)."""
    ua, ub = urlsplit(a.strip()), urlsplit(b.strip())

    def host(u: Any) -> str:
        name = (u.hostname or "").lower()
        return "loopback" if name in LOOPBACK else name

    return (ua.scheme, host(ua), ua.port, ua.path.rstrip("/")) == (ub.scheme, host(ub), ub.port, ub.path.rstrip("/"))


class Recorder:
    """The samples of one run on the master or a local runner."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.samples: list[Sample] = []
        self.server_rows: list[tuple[float, float, float | None, int]] = []
        self.snapshots: list[Snapshot] = []
        self.server: dict[str, Any] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self._full_said = False
        self.written = False
        self._last: deque[float] = deque(maxlen=max(1, round(QUIET_WINDOW / SERVER_INTERVAL)))
        self._recent: float | None = None
        self._idle: float | None = None

    # The run

    def start(self) -> None:
        """A run starts: forget the previous one, find the server, start sampling."""
        self.stop_sampling()
        self.samples, self.server_rows, self.snapshots = [], [], []
        self._last.clear()
        self._recent = self._idle = None
        self.written = False
        options = self.environment.parsed_options
        pid, name, note = find_server(options, self.environment.host or getattr(options, "host", None))
        self.server = {"pid": pid, "name": name, "note": "" if pid else note, "found": note if pid else ""}
        if pid:
            log.info("Observing %s", note)
        # The shape's first tick entered the first phase just before the runner cleared its statistics and
        # fired test_start: the phase begins from zero.
        phase = phases.current_phase()
        if phase is not None:
            self.snapshots.append(self.snapshot(phase.name))
        self._greenlets = [gevent.spawn(self._sample_loop)]
        if pid:
            self._greenlets.append(gevent.spawn(self._server_loop, pid))
        prefix = getattr(options, "csv_prefix", None) if options is not None else None
        if prefix:
            self._greenlets.append(gevent.spawn(self._flush_loop, prefix))

    def on_phase(self, phase: phases.Phase) -> None:
        runner = self.environment.runner
        if runner is not None and runner.state in ("ready", "stopped"):
            return  # the first tick, before test_start: taken in start()
        self.snapshots.append(self.snapshot(phase.name))

    def stop_sampling(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)
        self._greenlets = []

    def finish(self) -> None:
        """The run ended: the last samples, then the files and, for a headless run, the report."""
        if self.written or not (self.samples or self.snapshots):
            return
        self.written = True
        self.stop_sampling()
        self.samples.append(self.sample())
        self.snapshots.append(self.snapshot(None))
        options = self.environment.parsed_options
        prefix = getattr(options, "csv_prefix", None) if options is not None else None
        if not prefix:
            return
        self.write(prefix)
        if getattr(options, "headless", False):
            from xmpp_user.observe import report

            try:
                report.report_files(prefix)
            except Exception:
                log.exception("The report of %s could not be written", prefix)

    def write(self, prefix: str) -> None:
        if directory := os.path.dirname(prefix):
            os.makedirs(directory, exist_ok=True)
        # Each file is written whole under a temporary name, then takes its own: a reader never sees half a file.
        for path, write in (
            (f"{prefix}_timeline.csv", lambda p: write_timeline(p, self.samples)),
            (f"{prefix}_server.csv", lambda p: write_server(p, self.server_rows)),
            (f"{prefix}_phase_stats.json", lambda p: write_phase_stats(p, self.snapshots, self.server)),
        ):
            write(f"{path}.part")
            os.replace(f"{path}.part", path)

    def _flush_loop(self, prefix: str) -> None:
        """The run's files so far, every ``FLUSH_INTERVAL`` seconds or so, until the run ends."""
        interval = FLUSH_INTERVAL
        while not self.written:
            gevent.sleep(interval)
            if self.written:
                return
            started = time.monotonic()
            try:
                self.write(prefix)
            except OSError as exc:
                log.warning("The run's files could not be written to %s: %s", prefix, exc)
            interval = max(FLUSH_INTERVAL, 20 * (time.monotonic() - started))

    # Samples

    def sample(self) -> Sample:
        env = self.environment
        requests: dict[str, int] = {}
        failures: dict[str, int] = {}
        for (name, _method), entry in env.stats.entries.items():
            requests[name] = requests.get(name, 0) + entry.num_requests
            failures[name] = failures.get(name, 0) + entry.num_failures
        phase = phases.current_phase()
        sessions = phases.connected_sessions() if phases.connected_sessions is not None else None
        return Sample(
            t=time.time(),
            phase=phase.name if phase is not None else None,
            users=env.runner.user_count if env.runner is not None else 0,
            sessions=sessions,
            requests=requests,
            failures=failures,
            truth=self._truth(),
            lag=outcome.generator_lag(env),
        )

    def snapshot(self, phase: str | None) -> Snapshot:
        requests: dict[str, NameStats] = {}
        for (name, _method), entry in self.environment.stats.entries.items():
            s = requests.setdefault(name, NameStats())
            s.requests += entry.num_requests
            s.failures += entry.num_failures
            for ms, count in entry.response_times.items():
                s.response_times[float(ms)] = s.response_times.get(float(ms), 0) + count
        return Snapshot(time.time(), phase, requests, self._truth())

    def _truth(self) -> dict[str, int]:
        totals = outcome.summary(self.environment)
        return {k: int(totals[k]) for k in TRUTH_KEYS if k in totals}

    def last_server_sample(self) -> dict[str, Any] | None:
        """The server's latest sample for the web UI's XMPP tab (``webui.last_server_sample``): its CPU %, RSS,
        time and name; None when the server is not observed or before its second sample (the first has no CPU %)."""
        if not self.server.get("pid") or not self.server_rows:
            return None
        t, _cpu, percent, rss = self.server_rows[-1]
        if percent is None:
            return None
        return {"cpu_percent": percent, "rss_bytes": rss, "unix_time": t, "name": self.server.get("name", "")}

    def server_quiet(self, since: float) -> str | None:
        """None if the server's CPU over the last ``QUIET_WINDOW`` seconds is back near its idle level (or the
        server is not observed), else what it is."""
        if not self.server.get("pid"):
            return None
        if self._idle is None or self._recent is None:
            return "too few server samples yet"
        if self._recent <= self._idle + QUIET_MARGIN:
            return None
        return f"server CPU {self._recent:.0f} % (idle {self._idle:.0f} %)"

    def _window(self, percent: float) -> None:
        """Keep the server's mean CPU over the last ``QUIET_WINDOW`` and the lowest such mean of the run."""
        window = self._last
        window.append(percent)
        if len(window) == window.maxlen:
            self._recent = sum(window) / len(window)
            self._idle = self._recent if self._idle is None else min(self._idle, self._recent)

    def _sample_loop(self) -> None:
        began = time.monotonic()
        slot = 0
        for _ in range(MAX_SAMPLES):
            self.samples.append(self.sample())
            slot = _next_slot(slot, began, SAMPLE_INTERVAL)
            gevent.sleep(max(0.0, began + slot * SAMPLE_INTERVAL - time.monotonic()))
        self._say_full("timeline")

    def _server_loop(self, pid: int) -> None:
        began = time.monotonic()
        previous: tuple[float, float] | None = None
        slot = 0
        for _ in range(MAX_SERVER_SAMPLES):
            try:
                cpu, rss, now = process_cpu_seconds(pid), process_rss_bytes(pid), time.time()
            except (OSError, ValueError, IndexError):
                log.warning("The server process %d is gone: its CPU and memory are no longer sampled", pid)
                self.server["note"] = f"the server process {pid} ended during the run"
                return
            percent = None
            if previous is not None and now > previous[0]:
                percent = (cpu - previous[1]) / (now - previous[0]) * 100
            self.server_rows.append((now, cpu, percent, rss))
            if percent is not None:
                self._window(percent)
            previous = (now, cpu)
            slot = _next_slot(slot, began, SERVER_INTERVAL)
            gevent.sleep(max(0.0, began + slot * SERVER_INTERVAL - time.monotonic()))
        self._say_full("server")

    def _say_full(self, what: str) -> None:
        if not self._full_said:
            self._full_said = True
            log.warning("The %s samples reached their limit: later ones are not kept", what)


def _next_slot(slot: int, began: float, interval: float) -> int:
    """The next sampling slot still ahead: a loop woken late (a generator whose CPU is saturated) skips the slots
    it missed rather than catching up with samples milliseconds apart, whose CPU % (clock ticks over a few
    milliseconds) would read thousands of per cent."""
    return max(slot + 1, int((time.monotonic() - began) / interval) + 1)


_installed: WeakKeyDictionary[Environment, Recorder] = WeakKeyDictionary()


def recorder(environment: Environment) -> Recorder | None:
    return _installed.get(environment)


def install(environment: Environment) -> None:
    """Sample the run on the master or a local runner; call from an ``init`` listener after
    ``outcome.install``. Workers only report; repeated calls do nothing."""
    runner = environment.runner
    if environment in _installed or runner is None or isinstance(runner, WorkerRunner):
        return
    rec = _installed[environment] = Recorder(environment)
    phases.on_phase_change.append(lambda phase: rec.on_phase(phase) if rec.environment.runner is runner else None)
    phases.settle_checks.append(lambda since: rec.server_quiet(since) if rec.environment.runner is runner else None)

    def on_test_start(**_kw: Any) -> None:
        rec.start()

    def on_test_stop(**_kw: Any) -> None:
        # Phases closed and outcome reported before this listener (both were installed first).
        if isinstance(environment.runner, LocalRunner):
            rec.finish()

    def on_quitting(**_kw: Any) -> None:
        # Quitting fires its listeners last-added first: the master's own quit, which collects the workers'
        # final reports, has not run yet.
        if isinstance(runner, MasterRunner) and len(runner.greenlet):
            runner.quit()
        rec.finish()

    environment.events.test_start.add_listener(on_test_start)
    environment.events.test_stop.add_listener(on_test_stop)
    environment.events.quitting.add_listener(on_quitting)
