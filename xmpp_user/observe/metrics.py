"""The generator's Prometheus exporter: the run's state, read when Prometheus scrapes.

``GeneratorCollector`` holds no metric objects and the users never touch it: every number is read at
scrape time from what the run keeps anyway, so a request costs nothing more. On a master those
sources already hold every worker's data:

- requests, failures and the duration histogram come from Locust's stats entries, which the master
  extends with each worker's report (``StatsEntry.response_times`` maps rounded milliseconds to counts);
- users are ``runner.user_count`` (on a master, the sum of the counts the workers report);
- sessions are ``phases.connected_sessions()`` (on a master, the sum of the workers' last reports);
- message truth and deviations are ``outcome.summary(environment)``, summed from the workers' deltas;
- the phase comes from the load shape, which runs on the master;
- the event loop's lag is ``outcome.recent_lag(environment)`` (on a master, from the workers' last reports).

Workers report to the master every three seconds, so a master's numbers move in steps of that size.
``start`` serves the collector with prometheus-client's own HTTP server, in a thread that gevent's
monkey patching turns into a greenlet: a scrape takes its turn between the users' greenlets and never
blocks them for longer than reading these counters takes.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from typing import Any

from locust.env import Environment
from locust.runners import (
    STATE_CLEANUP,
    STATE_INIT,
    STATE_MISSING,
    STATE_RUNNING,
    STATE_SPAWNING,
    STATE_STOPPED,
    STATE_STOPPING,
    MasterRunner,
)
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from xmpp_user.observe import names
from xmpp_user.run import outcome, phases
from xmpp_user.session.connection import ready_count

log = logging.getLogger(__name__)

BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000)
"""Upper bounds of the duration histogram, in milliseconds: an IQ answered on loopback takes about a
millisecond, a loaded server seconds, and 60 s is past any reply timeout. Each bound lies on the grid of
Locust's rounding (whole ms below 100 ms, tens below 1 s, hundreds below 10 s, thousands above), so every
rounded time belongs to one bucket; a time within half a step above a bound is counted below it (1.4 ms
rounds to 1 ms), as it is in Locust's own percentiles."""
WORKER_STATES = (STATE_INIT, STATE_SPAWNING, STATE_RUNNING, STATE_CLEANUP, STATE_STOPPING, STATE_STOPPED,
                 STATE_MISSING)  # fmt: skip
"""Every state a worker can be in, each exported (0 included) so that a dashboard's series never vanish."""
TRUTH_COUNTERS = {
    "sent": (names.MESSAGES_SENT, "Messages that left, with a truth marker."),
    "confirmed": (names.MESSAGES_CONFIRMED, "Messages the room reflected to their sender."),
    "unconfirmed": (names.MESSAGES_UNCONFIRMED, "Messages never reflected (error, no reply in time, session ended)."),
    "skipped": (names.MESSAGES_SKIPPED, "Messages planned and not sent: their user was not connected, or the "
                                        "generator reached them an interval late."),
    "expected": (names.DELIVERIES_EXPECTED, "Deliveries due to our receivers."),
    "delivered": (names.DELIVERIES, "First live deliveries to our receivers."),
    "duplicated": (names.DELIVERIES_DUPLICATED, "Second and later deliveries of a message to a receiver."),
    "out_of_order": (names.DELIVERIES_OUT_OF_ORDER, "First deliveries after a later message of the same sender."),
}
"""Keys of ``outcome.summary()`` that only grow during a run (a new run starts them from zero again)."""
TRUTH_GAUGES = {
    "in_flight": (names.DELIVERIES_IN_FLIGHT, "Deliveries due and not delivered yet to receivers still in their "
                                              "room: not judged yet."),
    "lost": (names.DELIVERIES_LOST, "Deliveries due and never delivered to receivers that read their stream up to "
                                    "their own leave."),
    "unexpected": (names.DELIVERIES_UNEXPECTED, "Deliveries beyond what was due."),
    "unverified": (names.DELIVERIES_UNVERIFIED, "Deliveries due to receivers whose connection broke, or on lost "
                                                "workers: nobody can tell."),
    "missing_workers": (names.MISSING_WORKERS, "Workers that stopped answering the master."),
    "missing_users": (names.MISSING_USERS, "Users of the workers that stopped answering."),
}  # fmt: skip
"""Keys of ``outcome.summary()`` judged anew at every scrape: they can go down as deliveries arrive."""


class GeneratorCollector(Collector):
    """The ``locust_xmpp_*`` families of one run (master or local runner)."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def collect(self) -> Iterator[Metric]:
        runner = self.environment.runner
        if runner is None:
            return
        yield GaugeMetricFamily(names.USERS, "Locust users running (on a master, as the workers report).",
                                value=runner.user_count)  # fmt: skip
        sessions = phases.connected_sessions() if phases.connected_sessions is not None else ready_count()
        yield GaugeMetricFamily(names.SESSIONS, "XMPP sessions really open.", value=sessions or 0)
        yield GaugeMetricFamily(names.EVENT_LOOP_LAG, "Largest delay of the generator's event loop over about the "
                                "last 3 s (any live worker's): latencies measured then include up to that much.",
                                value=outcome.recent_lag(self.environment))  # fmt: skip
        yield from self._requests()
        yield from self._truth()
        yield from self._phase()
        yield from self._workers(runner)

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(names.REQUESTS, "Requests ended, successes and failures.", labels=["name"])
        failures = CounterMetricFamily(names.REQUEST_FAILURES, "Failed requests.", labels=["name"])
        durations = HistogramMetricFamily(names.REQUEST_DURATION, "Round-trip time of requests.", labels=["name"],
                                          unit="seconds")  # fmt: skip
        for name, (count, failed, response_times, total_ms) in sorted(_by_name(self.environment).items()):
            requests.add_metric([name], count)
            failures.add_metric([name], failed)
            durations.add_metric([name], histogram_buckets(response_times), total_ms / 1000)
        yield from (requests, failures, durations)

    def _truth(self) -> Iterator[Metric]:
        summary = outcome.summary(self.environment)
        for key, (name, doc) in TRUTH_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=summary.get(key, 0))
        for key, (name, doc) in TRUTH_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=summary.get(key, 0))
        deviations = CounterMetricFamily(names.DEVIATIONS, "How often the run differed from its plan.", labels=["kind"])
        for kind, entry in sorted(summary.get("deviations", {}).items()):
            deviations.add_metric([kind], entry["count"])
        yield deviations

    def _phase(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily(names.PHASE, "1 for the phase in force, 0 for the other phases of the plan.",
                                  labels=["phase"])  # fmt: skip
        planned = GaugeMetricFamily(names.PHASE_PLANNED_USERS, "Planned user count of the phase in force.")
        current = phases.current_phase()
        # The plan lives in the shape, which asks for it at its first tick: no series before the run starts.
        plan = getattr(self.environment.shape_class, "_phases", None) or []
        for name in dict.fromkeys(p.name for p in plan):
            phase.add_metric([name], 1 if current is not None and current.name == name else 0)
        if current is not None:
            planned.add_metric([], current.users)
        yield from (phase, planned)

    def _workers(self, runner: Any) -> Iterator[Metric]:
        workers = GaugeMetricFamily(names.WORKERS, "Workers connected to the master, by state.", labels=["state"])
        if isinstance(runner, MasterRunner):
            states = [client.state for client in runner.clients.values()]
            for state in dict.fromkeys([*WORKER_STATES, *states]):
                workers.add_metric([state], states.count(state))
        yield workers


def _by_name(environment: Environment) -> dict[str, tuple[int, int, dict[int, int], float]]:
    """Requests, failures, response times and their total (ms) by request name, over request types."""
    found: dict[str, tuple[int, int, dict[int, int], float]] = {}
    for (name, _method), entry in list(environment.stats.entries.items()):
        count, failed, times, total = found.get(name, (0, 0, {}, 0.0))
        times = dict(times)
        for ms, n in list(entry.response_times.items()):
            times[ms] = times.get(ms, 0) + n
        found[name] = (count + entry.num_requests, failed + entry.num_failures, times,
                       total + entry.total_response_time)  # fmt: skip
    return found


def histogram_buckets(response_times: dict[int, int]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets (``le`` in seconds, ``+Inf`` last) from Locust's {rounded ms: count}."""
    counts = [0] * (len(BUCKETS_MS) + 1)
    for ms, n in response_times.items():
        counts[bisect.bisect_left(BUCKETS_MS, ms)] += n
    buckets = []
    total = 0
    for bound, n in zip([*(floatToGoString(ms / 1000) for ms in BUCKETS_MS), "+Inf"], counts, strict=True):
        total += n
        buckets.append((bound, total))
    return buckets


_servers: dict[int, Any] = {}
"""The HTTP servers started in this process, by port."""


def start(environment: Environment, port: int, host: str = "127.0.0.1") -> None:
    """Serve the run's families on ``host:port`` until the process ends; raises OSError if the port is taken."""
    if port in _servers:
        return
    registry = CollectorRegistry()
    registry.register(GeneratorCollector(environment))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    _servers[port] = server
    log.info("Prometheus metrics of the run at http://%s:%d/metrics", host, port)


def stop() -> None:
    """Close every server ``start`` opened (for tests: a real run keeps its server until it exits)."""
    while _servers:
        _port, server = _servers.popitem()
        server.shutdown()
        server.server_close()
