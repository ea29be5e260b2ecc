"""The outcome of a Locust run of XMPP users: message truth and plan deviations summed over the
workers, lost workers noticed, results written, and an exit code that tells CI whether anything
went wrong.

Workers add their message tally and deviations to every stats report (keys ``xmpp_truth`` and
``xmpp_deviations``; with them, their open sessions, awaited requests and event loop delay) and zero
them, because Locust's worker reports are deltas; the master adds each report to its own. A local
runner simply owns the totals. The process that owns the totals logs each deviation the first time it
hears of it and, at the end of the run, logs the truth line and writes, with ``--csv PREFIX``,
``PREFIX_truth.json`` (counters, deviations, missing workers). A headless master fires ``test_stop``
before its workers have sent their final report (they send it when told to quit), so it reports when
it quits, after collecting them.

Exit code (Locust's conventions): 0 when nothing went wrong; 1 when a request failed (Locust's
own rule), a message was lost, or a worker went missing; 2 for bad settings or an unhandled
error. SIGTERM, which Kubernetes and CI runners send to stop a run, ends a run the way Ctrl+C
does: users stopped, workers told, files written.

The master notices a worker that stops answering (Locust marks it missing after three seconds
without a heartbeat): it says so once, counts its users as missing, and judges none of the
deliveries to or from its users, which nobody can verify any more. Locust's ``--csv`` stats file
is written once a second while the run goes on; it is written again at the very end, so that it
holds what the console table shows, the requests of users that were still stopping included.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from locust.env import Environment
from locust.runners import STATE_MISSING, LocalRunner, MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV, StatsCSVFileWriter

from xmpp_user.run import phases
from xmpp_user.run.deviations import DEVIATIONS, Deviations
from xmpp_user.run.lag import lag
from xmpp_user.run.truth import TALLY, Tally
from xmpp_user.session import requests
from xmpp_user.session.connection import ready_count
from xmpp_user.session.requests import outstanding

log = logging.getLogger(__name__)

TRUTH_KEY = "xmpp_truth"
"""Key of the tally in a worker's report to the master."""
DEVIATIONS_KEY = "xmpp_deviations"
CONNECTED_KEY = "xmpp_connected"
"""Key of the number of sessions a worker has open, in its reports."""
BUSY_KEY = "xmpp_busy"
"""Key of the number of requests and logins a worker awaits, in its reports."""
LAG_KEY = "xmpp_lag"
"""Key of the largest delay of a worker's event loop since its previous report, in seconds (``xmpp_user.run.lag``)."""
REPORT_NOW = "xmpp_report_now"
"""Custom message by which a master waiting for a phase to settle asks its workers for their report at once,
rather than in up to Locust's report interval (3 s)."""
ROUTE = "/xmpp/truth"
"""Web UI route serving ``summary()`` as JSON."""
MEMBER_COLUMNS = ("member", "group", "expected", "delivered", "state")
"""Columns of ``PREFIX_truth_members.csv``: each receiving member's deliveries from each sending worker, and
how the member's time in the room ended (left, broken, missing: see ``xmpp_user.run.truth``)."""
FLUSH_INTERVAL = 5.0
"""Seconds between two writes of the truth so far while a run goes on."""
PARTIAL = "the run had not ended when this was written: deliveries still in flight were not judged"
"""The ``partial`` key of a truth file written while the run went on (the final one has none)."""
EXIT_PROBLEM = 1
"""Locust's exit code for a run in which something went wrong."""


class _Run:
    """What the reporting process knows of the run."""

    def __init__(self, tally: Tally, deviations: Deviations) -> None:
        self.tally = tally
        self.deviations = deviations
        self.missing: dict[str, int] = {}
        """Groups (``w<index>``) of the workers that went missing, with their last user count."""
        self.worker_users: dict[str, int] = {}
        """Last user count each worker reported, by client id."""
        self.worker_connected: dict[str, int] = {}
        """Sessions each worker had open at its last report, by client id."""
        self.worker_busy: dict[str, tuple[int, float]] = {}
        """Requests and logins each worker awaited at its last report, and when that report came."""
        self.worker_lag: dict[str, float] = {}
        """The largest delay of each worker's event loop in the reports since ``generator_lag`` last read them."""
        self.worker_recent_lag: dict[str, float] = {}
        """The largest delay of each worker's event loop in its last report (about its last 3 s)."""
        self.asked_since = 0.0
        """The moment since which the workers were last asked to report at once (``REPORT_NOW``)."""
        self.reported: dict[str, Any] | None = None
        """What was last written, so a run that ends twice (test_stop, quitting) reports once."""
        self.stopping = False

    def summary(self, final: bool = False) -> dict[str, Any]:
        """The totals judged now; once the run is reported, as they were judged at its end."""
        if self.reported is not None and not final:
            return dict(self.reported)  # a copy: callers take the deviations out
        return {
            **self.tally.summary(self.missing, final=final),
            "missing_workers": len(self.missing),
            "missing_users": sum(self.missing.values()),
            "deviations": self.deviations.as_dict(),
        }


LATE_REPLIES = (
    "requests that had no reply within the timeout (each recorded as a failure) were answered later: the server "
    "was slow, not silent"
)


def _late_reply() -> None:
    DEVIATIONS.note("late_replies", LATE_REPLIES)


requests.on_late_reply.append(_late_reply)

awaiting: list[Callable[[], int]] = [outstanding]
"""What this process awaits from the server now: its requests, and what upper floors add (``xmpp_user.user``:
its users still logging in)."""


def busy() -> int:
    """How many requests and logins this process awaits from the server now."""
    return sum(count() for count in awaiting)


_installed: WeakKeyDictionary[Environment, _Run] = WeakKeyDictionary()
_sender_ids = itertools.count(1)


def sender_id(environment: Environment) -> str:
    """A truth sender id unique in the run: worker index (``w3``, or ``l`` for a local run) and a counter."""
    runner = environment.runner
    prefix = f"w{runner.worker_index}" if isinstance(runner, WorkerRunner) else "l"
    return f"{prefix}.{next(_sender_ids)}"


def summary(environment: Environment) -> dict[str, Any]:
    """The counters this process holds for the run, judged (totals on a master or local runner)."""
    run = _installed.get(environment)
    return run.summary() if run is not None else {**TALLY.summary(), "deviations": DEVIATIONS.as_dict()}


def generator_lag(environment: Environment) -> float:
    """The largest delay of the generator's event loop (of any worker's, on a master) since the last call, in
    seconds; on a master, as far as the workers have reported it."""
    run = _installed.get(environment)
    if isinstance(environment.runner, MasterRunner):
        if run is None:
            return 0.0
        largest = max(run.worker_lag.values(), default=0.0)
        run.worker_lag.clear()
        return largest
    return lag(environment).take_max()


def _live_workers(runner: MasterRunner) -> set[str]:
    """The client ids of the workers that still answer the master."""
    return {c.id for c in runner.clients.values() if c.state != STATE_MISSING}


def recent_lag(environment: Environment) -> float:
    """The largest delay of the generator's event loop over about the last 3 s: on a master, of any live worker
    in its last report."""
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        run = _installed.get(environment)
        if run is None:
            return 0.0
        live = _live_workers(runner)
        return max((v for client_id, v in run.worker_recent_lag.items() if client_id in live), default=0.0)
    return lag(environment).recent()


def install(environment: Environment, tally: Tally = TALLY, deviations: Deviations = DEVIATIONS) -> None:
    """Wire the process tally and deviations into the run; call from an ``init`` listener.
    Repeated calls do nothing."""
    if environment in _installed:
        return
    phases.install(environment)  # first: a run stopped early closes its phases before it is reported
    run = _installed[environment] = _Run(tally, deviations)
    runner = environment.runner
    events = environment.events

    if not isinstance(runner, MasterRunner):
        lag(environment)  # this process runs users: watch its loop
    if isinstance(runner, WorkerRunner):

        def on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
            # No greenlet switch between reading and zeroing, so no count falls between two reports.
            data[TRUTH_KEY] = tally.as_dict()
            data[DEVIATIONS_KEY] = deviations.as_dict()
            data[CONNECTED_KEY] = ready_count()
            data[BUSY_KEY] = busy()
            data[LAG_KEY] = lag(environment).take_max()
            tally.reset()
            deviations.reset()

        events.report_to_master.add_listener(on_report_to_master)

        def on_report_now(**_kw: Any) -> None:
            send = getattr(runner, "_send_stats", None)  # Locust's own report, sent now (not public API)
            if send is not None:
                send()

        runner.register_message(REPORT_NOW, on_report_now)
        return

    deviations.on_new.append(lambda kind, message: log.warning("Run differs from the plan: %s", message))

    def on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
        tally.merge(data.get(TRUTH_KEY) or {})
        deviations.merge(data.get(DEVIATIONS_KEY) or {})
        if "user_count" in data:
            run.worker_users[client_id] = int(data["user_count"])
        if CONNECTED_KEY in data:
            run.worker_connected[client_id] = int(data[CONNECTED_KEY])
        if BUSY_KEY in data:
            run.worker_busy[client_id] = (int(data[BUSY_KEY]), time.time())
        if LAG_KEY in data:
            run.worker_lag[client_id] = max(run.worker_lag.get(client_id, 0.0), float(data[LAG_KEY]))
            run.worker_recent_lag[client_id] = float(data[LAG_KEY])

    def on_test_start(**_kw: Any) -> None:
        tally.reset()
        deviations.reset()
        run.missing.clear()
        run.reported = None
        run.stopping = False
        gevent.spawn(_flush_truth, environment, run)

    def on_test_stop(**_kw: Any) -> None:
        run.stopping = True
        if isinstance(environment.runner, LocalRunner):
            _report(environment, run)

    def on_quitting(**_kw: Any) -> None:
        runner = environment.runner
        run.stopping = True
        if isinstance(runner, MasterRunner) and len(runner.greenlet):
            # Quitting fires its listeners last-added first, so the master's own quit (which
            # collects the workers' final reports) has not run yet after a Ctrl+C or SIGTERM.
            runner.quit()
        _report(environment, run)

    def on_quit(**_kw: Any) -> None:
        _write_final_csv(environment)

    events.worker_report.add_listener(on_worker_report)
    events.test_start.add_listener(on_test_start)
    events.test_stop.add_listener(on_test_stop)
    events.quitting.add_listener(on_quitting)
    events.quit.add_listener(on_quit)
    if isinstance(runner, MasterRunner):
        gevent.spawn(_watch_workers, runner, run)

        def connected() -> int:
            live = _live_workers(runner)
            return sum(n for client_id, n in run.worker_connected.items() if client_id in live)

        phases.connected_sessions = connected

        def awaited(since: float) -> int | None:
            """Requests and logins the live workers awaited, by reports sent after ``since``; None until each
            live worker has sent one (they are asked for one at once)."""
            total = 0
            for client in runner.clients.values():
                if client.state == STATE_MISSING:
                    continue
                count, received = run.worker_busy.get(client.id, (0, 0.0))
                if received <= since:
                    if run.asked_since != since:
                        run.asked_since = since
                        runner.send_message(REPORT_NOW, None)
                    return None
                total += count
            return total
    else:
        phases.connected_sessions = ready_count

        def awaited(since: float) -> int | None:
            return busy()

    def quiet(since: float) -> str | None:
        if environment.runner is not runner:
            return None
        count = awaited(since)
        if count is None:
            return "waiting for the workers' reports"
        if count:
            return f"{count} requests or logins awaiting the server"
        in_flight = run.tally.summary(run.missing)["in_flight"]
        return f"{in_flight} deliveries in flight" if in_flight else None

    phases.settle_checks.append(quiet)
    _stop_on_sigterm(environment)

    web_ui = environment.web_ui
    if web_ui is not None:
        view = web_ui.auth_required_if_enabled(lambda: summary(environment))
        web_ui.app.add_url_rule(ROUTE, endpoint="xmpp_truth", view_func=view)


def _watch_workers(runner: MasterRunner, run: _Run) -> None:
    """Notice workers that stop answering (and come back) while the run goes on."""
    while True:
        gevent.sleep(1)
        for client in list(runner.clients.values()):
            group = f"w{runner.get_worker_index(client.id)}"
            if client.state == STATE_MISSING and group not in run.missing and not run.stopping:
                users = run.worker_users.get(client.id, 0)
                run.missing[group] = users
                run.deviations.note(
                    "worker_missing",
                    f"worker {client.id} (index {group[1:]}) stopped answering with {users} users: they are "
                    "missing from the run, and deliveries to or from them are not judged",
                )
            elif client.state != STATE_MISSING and group in run.missing:
                log.warning("Worker %s (index %s) answers again", client.id, group[1:])
                del run.missing[group]


def _stop_on_sigterm(environment: Environment) -> None:
    """SIGTERM stops the run as Ctrl+C does.

    In a headless run Locust installs its own SIGTERM handler only once the load shape has ended,
    so until then SIGTERM would kill the process outright: no users stopped, no files, workers
    left running. While the shape runs, ours raises KeyboardInterrupt in the main greenlet, the
    way Ctrl+C does.
    """
    options = environment.parsed_options
    if options is None or not getattr(options, "headless", False):
        return  # with the web UI, Locust's own handler is in place from the start
    main = gevent.getcurrent()
    runner = environment.runner

    def on_sigterm() -> None:
        shape = getattr(runner, "shape_greenlet", None)
        if shape is not None and not shape.dead:
            log.info("Got SIGTERM: stopping the run as on Ctrl+C")
            main.throw(KeyboardInterrupt)

    gevent.signal_handler(signal.SIGTERM, on_sigterm)


def _flush_truth(environment: Environment, run: _Run) -> None:
    """While the run goes on, ``PREFIX_truth.json`` holds the counts so far every ``FLUSH_INTERVAL`` seconds,
    marked ``partial`` (what is in flight is not judged yet): what a generator killed mid-run leaves."""
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if not prefix:
        return
    while True:
        gevent.sleep(FLUSH_INTERVAL)
        if run.reported is not None or environment.runner is None or environment.runner.state == "stopped":
            return
        totals = {**run.summary(), "partial": PARTIAL}
        try:
            _write_json(f"{prefix}_truth.json", totals)
        except OSError as exc:
            log.warning("The truth so far could not be written: %s", exc)


def _write_json(path: str, data: Any) -> None:
    if directory := os.path.dirname(path):
        os.makedirs(directory, exist_ok=True)
    with open(f"{path}.part", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(f"{path}.part", path)


def _report(environment: Environment, run: _Run) -> None:
    totals = run.summary(final=True)
    if totals == run.reported:
        return
    run.reported = totals
    counters = {k: v for k, v in totals.items() if k != "deviations"}
    log.info("Message truth: %s", " ".join(f"{k}={v}" for k, v in counters.items()))
    for kind, entry in totals["deviations"].items():
        log.warning("Run differed from the plan (%s, %d times): %s", kind, entry["count"], entry["message"])
    if totals["lost"] or totals["missing_workers"]:
        environment.process_exit_code = max(environment.process_exit_code or 0, EXIT_PROBLEM)
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if prefix:
        _write_json(f"{prefix}_truth.json", totals)
        with open(f"{prefix}_truth_members.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, MEMBER_COLUMNS)
            writer.writeheader()
            writer.writerows(run.tally.members(run.missing))


def _writer_stops_with_its_files() -> None:
    """Locust 2.47 closes its CSV files at shutdown while its ``stats_writer`` greenlet sleeps between writes;
    one more switch to the hub before the process is gone (monkey-patched threading joins its threads at
    exit) wakes the writer on closed files, and a good run ends on ``ValueError: I/O operation on closed
    file``. Here the writer greenlet is remembered when it starts and killed before the files are closed."""
    start, close = StatsCSVFileWriter.stats_writer, StatsCSVFileWriter.close_files
    if getattr(close, "stops_writer", False):
        return

    def stats_writer(self: StatsCSVFileWriter) -> None:
        self._writer_greenlet = gevent.getcurrent()  # type: ignore[attr-defined]
        start(self)

    def close_files(self: StatsCSVFileWriter) -> None:
        writer = getattr(self, "_writer_greenlet", None)
        if writer is not None and writer is not gevent.getcurrent() and hasattr(writer, "kill"):
            writer.kill(block=True, timeout=2)
        close(self)

    close_files.stops_writer = True  # type: ignore[attr-defined]
    StatsCSVFileWriter.stats_writer = stats_writer  # type: ignore[method-assign]
    StatsCSVFileWriter.close_files = close_files  # type: ignore[method-assign]


_writer_stops_with_its_files()


def _write_final_csv(environment: Environment) -> None:
    """Write Locust's stats, failures and exceptions files once more, now that every user has stopped."""
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if not prefix:
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv),
                          ("exceptions", writer.exceptions_csv)):  # fmt: skip
        path = f"{prefix}_{suffix}.csv"
        with open(f"{path}.final", "w", newline="") as f:
            write(csv.writer(f))
        # Locust still holds the old file open and flushes it on exit: a new file takes its name.
        os.replace(f"{path}.final", path)
