"""The generator's collector on a Locust environment with made-up stats: names and labels from
``observe.names``, histogram buckets cumulative and matching the counts, message truth, phases, workers,
and the exporter's HTTP server (served by masters and local runners only)."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
from locust import User, constant, task
from locust.argument_parser import get_empty_argument_parser
from locust.env import Environment
from locust.runners import STATE_MISSING, STATE_RUNNING, MasterRunner, WorkerNode, WorkerNodes, WorkerRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xmpp_user import observe
from xmpp_user.lab.procs import free_port
from xmpp_user.observe import metrics, names
from xmpp_user.observe.metrics import BUCKETS_MS, GeneratorCollector, histogram_buckets
from xmpp_user.run import outcome, phases
from xmpp_user.run.deviations import Deviations
from xmpp_user.run.phases import Phase, PhasedShape
from xmpp_user.run.truth import Tally

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Quiet(User):
    wait_time = constant(1)

    @task
    def idle(self) -> None:
        pass


class _Plan(PhasedShape):
    def phases(self) -> list[Phase]:
        return [Phase("join", 10, 40, 10), Phase("talk", 20, 40, 10), Phase("leave", 5, 0, 50)]


@pytest.fixture(autouse=True)
def _fresh_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("on_phase_change", []), ("_current", None), ("_current_key", (0.0, 0)), ("_log", []),
                        ("_worker_environment", None), ("connected_sessions", None)]:  # fmt: skip
        monkeypatch.setattr(phases, name, value)


@pytest.fixture
def env() -> Iterator[Environment]:
    environment = Environment(user_classes=[_Quiet], parsed_options=argparse.Namespace(csv_prefix=None))
    runner = environment.create_local_runner()
    yield environment
    runner.quit()


def scrape(environment: Environment) -> str:
    registry = CollectorRegistry()
    registry.register(GeneratorCollector(environment))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, family: str, **labels: str) -> float:
    return found[(family, tuple(sorted(labels.items())))]


def test_histogram_buckets_are_cumulative_and_respect_locust_rounding() -> None:
    # Locust's rounded keys: 1 ms and 2 ms lie under the 1 and 2.5 ms bounds, 250 under 0.25 s, 260 above it.
    buckets = histogram_buckets({0: 1, 1: 2, 2: 1, 3: 1, 100: 4, 250: 1, 260: 1, 60_000: 1, 70_000: 2})
    assert [b[0] for b in buckets] == [
        "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
        "30.0", "60.0", "+Inf",
    ]  # fmt: skip
    counts = dict(buckets)
    assert (counts["0.001"], counts["0.0025"], counts["0.005"], counts["0.1"]) == (3, 4, 5, 9)
    assert (counts["0.25"], counts["0.5"], counts["60.0"], counts["+Inf"]) == (10, 11, 12, 14)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
    assert histogram_buckets({}) == [(bound, 0) for bound, _ in buckets]
    assert len(BUCKETS_MS) == len(buckets) - 1


def test_requests_failures_and_durations_by_name(env: Environment) -> None:
    for ms in (0.4, 1, 1.4, 2, 3, 99.6, 254, 256, 70_000):
        env.stats.log_request("XMPP", "connect", ms, 0)
    env.stats.log_request("XMPP", "message", 12, 0)
    env.stats.log_request("XMPP", "message", 30_000, 0)
    env.stats.log_error("XMPP", "message", "timeout")
    env.stats.log_request("other", "message", 5, 0)  # the same name under another request type: one series
    env.stats.log_request("XMPP", "stream", 0, 0)
    env.stats.log_error("XMPP", "stream", "connection lost")
    found = samples(scrape(env))

    assert value(found, names.REQUESTS, name="connect") == 9
    assert value(found, names.REQUEST_FAILURES, name="connect") == 0
    assert value(found, names.REQUESTS, name="message") == 3
    assert value(found, names.REQUEST_FAILURES, name="message") == 1
    assert value(found, names.REQUEST_FAILURES, name="stream") == 1
    duration = names.REQUEST_DURATION
    assert value(found, f"{duration}_count", name="connect") == 9
    assert value(found, f"{duration}_bucket", name="connect", le="+Inf") == 9
    assert value(found, f"{duration}_sum", name="connect") == pytest.approx((0.4 + 1 + 1.4 + 2 + 3 + 99.6 + 510
                                                                              + 70_000) / 1000)  # fmt: skip
    bucket = {le: value(found, f"{duration}_bucket", name="connect", le=le) for le in ("0.001", "0.005", "0.25")}
    assert bucket == {"0.001": 3, "0.005": 5, "0.25": 7}
    assert value(found, f"{duration}_bucket", name="connect", le="60.0") == 8
    assert value(found, f"{duration}_count", name="message") == 3
    assert value(found, f"{duration}_bucket", name="message", le="0.005") == 1
    assert value(found, f"{duration}_bucket", name="message", le="0.025") == 2
    for name in ("connect", "message", "stream"):
        les = [(float(dict(k[1])["le"]), v) for k, v in found.items()
               if k[0] == f"{duration}_bucket" and dict(k[1])["name"] == name]  # fmt: skip
        counts = [v for _, v in sorted(les)]
        assert counts == sorted(counts) and counts[-1] == value(found, f"{duration}_count", name=name)
    assert not [k for k in found if k[0].startswith(names.REQUESTS) and dict(k[1]).get("name") == "Aggregated"]


def test_users_sessions_truth_and_deviations(env: Environment) -> None:
    tally, deviations = Tally(), Deviations()
    outcome.install(env, tally, deviations)
    phases.connected_sessions = lambda: 7
    tally.sent, tally.confirmed, tally.unconfirmed, tally.skipped = 10, 9, 1, 2
    tally.duplicated, tally.out_of_order = 3, 4
    tally.expected.update({"l.1.1|l": 10, "l.1.2|l": 10, "l.1.3|l": 5, "l.1.4|l": 3})
    tally.delivered.update({"l.1.1|l": 10, "l.1.2|l": 8, "l.1.3|l": 6, "l.1.4|l": 1})
    tally.ended("l.1.1", True, 0.0)  # l.1.2 is still in the room: its 2 are in flight
    tally.ended("l.1.3", False, 0.0)
    tally.ended("l.1.4", True, 0.0)
    deviations.note("no_room_vcard", "no vCard")
    deviations.note("messages_skipped", "skipped", count=2)
    found = samples(scrape(env))

    assert value(found, names.USERS) == 0
    assert value(found, names.SESSIONS) == 7
    truth = {name: found[(name, ())] for name in (
        names.MESSAGES_SENT, names.MESSAGES_CONFIRMED, names.MESSAGES_UNCONFIRMED, names.MESSAGES_SKIPPED,
        names.DELIVERIES_EXPECTED, names.DELIVERIES, names.DELIVERIES_DUPLICATED, names.DELIVERIES_OUT_OF_ORDER,
        names.DELIVERIES_IN_FLIGHT, names.DELIVERIES_LOST, names.DELIVERIES_UNEXPECTED, names.DELIVERIES_UNVERIFIED,
        names.MISSING_WORKERS, names.MISSING_USERS)}  # fmt: skip
    assert list(truth.values()) == [10, 9, 1, 2, 28, 25, 3, 4, 2, 2, 1, 0, 0, 0]
    assert value(found, names.DEVIATIONS, kind="no_room_vcard") == 1
    assert value(found, names.DEVIATIONS, kind="messages_skipped") == 2
    types = {f.name: f.type for f in text_string_to_metric_families(scrape(env))}
    assert types[names.MESSAGES_SENT.removesuffix("_total")] == "counter"
    assert types[names.DELIVERIES_LOST] == "gauge"
    assert types[names.REQUEST_DURATION] == "histogram"


def test_phase_series_follow_the_plan(env: Environment) -> None:
    found = samples(scrape(env))
    assert not [k for k in found if k[0] in (names.PHASE, names.PHASE_PLANNED_USERS)]  # no shape: no phases

    clock = [0.0]
    shape = _Plan()
    shape.monotonic = lambda: clock[0]
    shape.reset_time()
    env.shape_class = shape
    shape.runner = env.runner
    assert not [k for k in samples(scrape(env)) if k[0] == names.PHASE]  # the plan is asked for at the first tick
    shape.tick()
    found = samples(scrape(env))
    assert {dict(k[1])["phase"]: v for k, v in found.items() if k[0] == names.PHASE} == {
        "join": 1, "talk": 0, "leave": 0}  # fmt: skip
    assert value(found, names.PHASE_PLANNED_USERS) == 40
    clock[0] = 31
    shape.tick()
    found = samples(scrape(env))
    assert {dict(k[1])["phase"]: v for k, v in found.items() if k[0] == names.PHASE} == {
        "join": 0, "talk": 0, "leave": 1}  # fmt: skip
    assert value(found, names.PHASE_PLANNED_USERS) == 0


def test_a_master_counts_users_and_workers_by_state() -> None:
    env = Environment(user_classes=[_Quiet])
    runner = MasterRunner.__new__(MasterRunner)  # no sockets: the collector reads clients and stats only
    runner.environment, runner.clients, runner.greenlet = env, WorkerNodes(), None
    env.runner = runner
    for client_id, state, users in (("a", STATE_RUNNING, 5), ("b", STATE_RUNNING, 4), ("c", STATE_MISSING, 3)):
        node = WorkerNode(client_id, state=state)
        node.user_classes_count = {"_Quiet": users}
        runner.clients[client_id] = node
    run = outcome._Run(Tally(), Deviations())
    run.worker_recent_lag = {"a": 0.2, "b": 0.9, "c": 5.0}
    outcome._installed[env] = run
    found = samples(scrape(env))
    assert value(found, names.USERS) == 12  # what Locust's own master shows
    assert value(found, names.EVENT_LOOP_LAG) == 0.9  # the live workers' last reports (c is missing)
    workers = {dict(k[1])["state"]: v for k, v in found.items() if k[0] == names.WORKERS}
    assert workers["running"] == 2 and workers["missing"] == 1 and workers["ready"] == 0
    assert set(workers) >= {"ready", "spawning", "running", "cleanup", "stopping", "stopped", "missing"}


def test_a_local_runner_shows_its_own_event_loop_lag(env: Environment) -> None:
    from xmpp_user.run.lag import RECENT, TICK, lag

    watched = lag(env)
    watched.measured(0.7, True, Deviations())
    assert value(samples(scrape(env)), names.EVENT_LOOP_LAG) == 0.7
    for _ in range(round(RECENT / TICK)):  # the last RECENT seconds of ticks were on time
        watched.measured(0.0, True, Deviations())
    assert value(samples(scrape(env)), names.EVENT_LOOP_LAG) == 0.0


def test_a_local_runner_has_no_worker_series(env: Environment) -> None:
    assert not [k for k in samples(scrape(env)) if k[0] == names.WORKERS]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is missing (Debian package prometheus)")
def test_every_family_passes_promtool(env: Environment) -> None:
    env.stats.log_request("XMPP", "connect", 3, 0)
    env.stats.log_error("XMPP", "connect", "refused")
    outcome.install(env, Tally(), Deviations())
    text = scrape(env)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_install_serves_on_the_port_of_the_option(env: Environment) -> None:
    port = free_port()
    env.parsed_options = argparse.Namespace(csv_prefix=None, xmpp_metrics_port=port, xmpp_metrics_host="127.0.0.1")
    env.stats.log_request("XMPP", "ping", 2, 0)
    try:
        observe.install(env)
        with NO_PROXY.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert value(samples(text), names.REQUESTS, name="ping") == 1
        env.events.test_start.fire(environment=env)  # the form's port, already served: nothing more
    finally:
        metrics.stop()


def test_a_taken_port_is_one_line_and_exit_code_2(env: Environment, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env.parsed_options = argparse.Namespace(csv_prefix=None, xmpp_metrics_port=port,
                                                xmpp_metrics_host="127.0.0.1")  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            observe.install(env)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"locust-xmpp: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
    )
    assert not metrics._servers


def test_workers_serve_nothing() -> None:
    port = free_port()
    options = argparse.Namespace(xmpp_metrics_port=port, xmpp_metrics_host="127.0.0.1")
    env = Environment(user_classes=[_Quiet], parsed_options=options)
    env.runner = WorkerRunner.__new__(WorkerRunner)
    env.runner.greenlet = None
    observe.install(env)
    assert not metrics._servers


def test_the_options_are_in_the_web_ui_form() -> None:
    parser = get_empty_argument_parser()
    observe.add_options(parser)  # observation registers its own options
    shown = parser.args_included_in_web_ui
    assert shown["xmpp_metrics_port"].default == 0 and shown["xmpp_metrics_host"].default == "127.0.0.1"
    assert parser.parse_args(["--xmpp-metrics-port", str(names.GENERATOR_PORT)]).xmpp_metrics_port == 9646
    with pytest.raises(SystemExit):
        parser.parse_args(["--xmpp-metrics-port", "-1"])


def test_a_port_set_in_the_web_ui_form_serves_from_the_start_of_the_run(env: Environment) -> None:
    env.parsed_options = argparse.Namespace(csv_prefix=None, xmpp_metrics_port=0, xmpp_metrics_host="127.0.0.1")
    observe.install(env)
    assert not metrics._servers
    port = free_port()
    env.parsed_options.xmpp_metrics_port = port  # what Locust does with the form's value when a run starts
    try:
        env.events.test_start.fire(environment=env)
        with NO_PROXY.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert names.USERS in reply.read().decode()
    finally:
        metrics.stop()
