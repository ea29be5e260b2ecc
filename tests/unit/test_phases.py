"""PhasedShape on a fake clock: ticks, phase log, callbacks, files, and the worker side."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gevent.pool import Group
from locust import User, constant, task
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner

from xmpp_user.run import phases
from xmpp_user.run.deviations import Deviations
from xmpp_user.run.phases import Phase, PhasedShape

T0 = 1_700_000_000.0


class _Quiet(User):
    wait_time = constant(1)

    @task
    def idle(self) -> None:
        pass


class _Other(_Quiet):
    pass


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return T0 + self.t


class _ThreeBatches(PhasedShape):
    def phases(self) -> list[Phase]:
        return [
            Phase("join", 10, 100, 10, params={"vcards": True}),
            Phase("talk", 20, 100, 10, params={"talk": True}),
            Phase("leave", 5, 0, 50, user_classes=[_Quiet]),
        ]


@pytest.fixture(autouse=True)
def _fresh_module_state(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [
        ("on_phase_change", []),
        ("_current", None),
        ("_current_key", (0.0, 0)),
        ("_log", []),
        ("_worker_environment", None),
        ("connected_sessions", None),
        ("settle_checks", []),
    ]:
        monkeypatch.setattr(phases, name, value)


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


def _shape(clock: _Clock, cls: type[PhasedShape] = _ThreeBatches) -> PhasedShape:
    shape = cls()
    shape.monotonic = clock.monotonic
    shape.wall_clock = clock.wall
    shape.reset_time()
    return shape


@pytest.fixture
def local(clock: _Clock, tmp_path: Path) -> Iterator[PhasedShape]:
    shape = _shape(clock)
    options = argparse.Namespace(csv_prefix=str(tmp_path / "out" / "run"))
    env = Environment(user_classes=[_Quiet], shape_class=shape, parsed_options=options)
    runner = env.create_local_runner()
    yield shape
    runner.quit()


def _run(shape: PhasedShape, clock: _Clock, times: list[float]) -> list[Any]:
    ticks = []
    for t in times:
        clock.t = t
        ticks.append(shape.tick())
    return ticks


def test_tick_walks_the_phases_then_ends(local: PhasedShape, clock: _Clock) -> None:
    ticks = _run(local, clock, [0, 9.9, 10, 29.9, 30, 34.9, 35])
    assert ticks == [(100, 10), (100, 10), (100, 10), (100, 10), (0, 50, [_Quiet]), (0, 50, [_Quiet]), None]
    assert phases.current_phase() is None


def test_current_phase_and_log_follow_the_run(local: PhasedShape, clock: _Clock) -> None:
    _run(local, clock, [0.5, 3])
    current = phases.current_phase()
    assert current is not None and (current.name, current.params) == ("join", {"vcards": True})
    assert phases.phase_log() == [
        {
            "phase": "join",
            "start_iso": "2023-11-14T22:13:20.500+00:00",
            "end_iso": None,
            "start_unix": T0 + 0.5,
            "end_unix": None,
            "users": 100,
            "connected_min": None,
            "connected_max": None,
            "spawn_rate": 10,
            "params": {"vcards": True},
            "skipped": False,
            "settle": 0.0,
            "waited": None,
            "settled": None,
        }
    ]
    _run(local, clock, [11, 31, 36])
    log = phases.phase_log()
    assert [e["phase"] for e in log] == ["join", "talk", "leave"]
    assert [(e["start_unix"] - T0, e["end_unix"] - T0) for e in log] == [(0.5, 11), (11, 31), (31, 36)]
    assert all(e["end_iso"].endswith("+00:00") for e in log)


def test_each_phase_records_the_sessions_really_open(local: PhasedShape, clock: _Clock) -> None:
    open_now = iter([0, 40, 100, 100, 97, 100, 100, 12, 0])
    phases.connected_sessions = lambda: next(open_now)
    _run(local, clock, [0, 5, 9, 10, 20, 29, 30, 33, 35])
    log = phases.phase_log()
    assert [(e["phase"], e["users"], e["connected_min"], e["connected_max"]) for e in log] == [
        ("join", 100, 0, 100), ("talk", 100, 97, 100), ("leave", 0, 12, 100),
    ]  # fmt: skip


def test_a_steady_phase_short_of_users_says_so(
    local: PhasedShape, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    deviations = Deviations()
    monkeypatch.setattr(phases, "DEVIATIONS", deviations)
    open_now = iter([100, 100, 45, 60, 10, 0, 0])
    phases.connected_sessions = lambda: next(open_now)
    _run(local, clock, [0, 9, 10, 29, 30, 34, 35])
    # The join reached 100; the talk (steady at 100 planned) never had more than 60 open; the leave is not steady.
    assert deviations.as_dict() == {
        "users_short": {"count": 1, "message": "in phase 'talk' at most 60 of the 100 planned users had a session open"}
    }


def test_callbacks_fire_once_per_change(local: PhasedShape, clock: _Clock) -> None:
    calls: list[str] = []
    phases.on_phase_change.append(lambda phase: calls.append(phase.name))
    _run(local, clock, [0, 1, 2, 10, 11, 12, 30, 31, 40, 41])
    assert calls == ["join", "talk", "leave"]


def test_a_failing_callback_does_not_stop_the_others(local: PhasedShape, clock: _Clock) -> None:
    calls: list[str] = []

    def broken(phase: Phase) -> None:
        raise RuntimeError("boom")

    phases.on_phase_change.extend([broken, lambda phase: calls.append(phase.name)])
    assert _run(local, clock, [0]) == [(100, 10)]
    assert calls == ["join"]


def test_files_are_written_at_each_phase_change_and_at_the_end(
    local: PhasedShape, clock: _Clock, tmp_path: Path
) -> None:
    _run(local, clock, [0, 10, 30])
    # A run killed now leaves the phases so far, the one in force without an end.
    so_far = json.loads((tmp_path / "out" / "run_phases.json").read_text())
    assert [(e["phase"], e["end_unix"] is None) for e in so_far] == [("join", False), ("talk", False), ("leave", True)]
    _run(local, clock, [35])
    with open(tmp_path / "out" / "run_phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(phases.CSV_COLUMNS)
    assert [r["phase"] for r in rows] == ["join", "talk", "leave"]
    assert [float(r["start_unix"]) - T0 for r in rows] == [0, 10, 30]
    assert [float(r["end_unix"]) - T0 for r in rows] == [10, 30, 35]
    assert rows[2]["end_iso"] == "2023-11-14T22:13:55.000+00:00"
    assert [json.loads(r["params_json"]) for r in rows] == [{"vcards": True}, {"talk": True}, {}]
    written = json.loads((tmp_path / "out" / "run_phases.json").read_text())
    assert written == phases.phase_log()


def test_a_stopped_run_closes_its_open_phase(local: PhasedShape, clock: _Clock, tmp_path: Path) -> None:
    _run(local, clock, [0, 12])
    clock.t = 15
    local.runner.environment.events.test_stop.fire(environment=local.runner.environment)
    assert [(e["phase"], e["end_unix"] - T0) for e in phases.phase_log()] == [("join", 10 + 2), ("talk", 15)]
    assert (tmp_path / "out" / "run_phases.json").exists()
    assert phases.current_phase() is None
    # A new run from the web UI starts a fresh log.
    local.reset_time()
    assert _run(local, clock, [15]) == [(100, 10)]
    assert [e["phase"] for e in phases.phase_log()] == ["join"]


def test_an_overrun_phase_is_logged_as_skipped(local: PhasedShape, clock: _Clock) -> None:
    calls: list[str] = []
    phases.on_phase_change.append(lambda phase: calls.append(phase.name))
    assert _run(local, clock, [0, 32]) == [(100, 10), (0, 50, [_Quiet])]
    log = phases.phase_log()
    assert [(e["phase"], e["skipped"]) for e in log] == [("join", False), ("talk", True), ("leave", False)]
    assert log[1]["start_unix"] == log[1]["end_unix"] == T0 + 32
    assert calls == ["join", "leave"]


class _Settling(PhasedShape):
    def phases(self) -> list[Phase]:
        return [
            Phase("join", 10, 0, 10, settle=30),
            Phase("talk", 20, 0, 10, params={"talk": True}),
            Phase("leave", 5, 0, 50, settle=4),
        ]


@pytest.fixture
def settling(clock: _Clock, tmp_path: Path) -> Iterator[PhasedShape]:
    shape = _shape(clock, _Settling)
    options = argparse.Namespace(csv_prefix=str(tmp_path / "out" / "run"))
    env = Environment(user_classes=[_Quiet], shape_class=shape, parsed_options=options)
    runner = env.create_local_runner()
    yield shape
    runner.quit()


def test_a_settling_phase_waits_for_quiet_and_the_later_phases_move_by_as_much(
    settling: PhasedShape, clock: _Clock, tmp_path: Path
) -> None:
    asked: list[float] = []

    def replies(since: float) -> str | None:
        asked.append(since - T0)
        return "3 replies outstanding" if clock.t < 17 else None

    phases.settle_checks.append(replies)
    busy_leave = [True]
    phases.settle_checks.append(lambda since: "server CPU 90 %" if busy_leave[0] and clock.t > 30 else None)
    names = []
    for t in [0, 9.9, 10, 12, 16.9, 17, 18, 36.9, 37, 41.9, 42, 44, 45.9, 46]:
        clock.t = t
        tick = settling.tick()
        names.append(None if tick is None else phases.current_phase().name)  # type: ignore[union-attr]
    assert names == ["join", "join", "join", "join", "join", "talk", "talk", "talk", "leave", "leave", "leave",
                     "leave", "leave", None]  # fmt: skip
    # The check is asked from the planned end of the join on, with that end as the moment to be quiet since.
    assert asked[:4] == [10, 10, 10, 10]
    log = phases.phase_log()
    assert [(e["phase"], e["start_unix"] - T0, e["end_unix"] - T0) for e in log] == [
        ("join", 0, 17), ("talk", 17, 37), ("leave", 37, 46)]  # fmt: skip
    assert [(e["waited"], e["settled"]) for e in log] == [(7, "quiet"), (None, None), (4, "server CPU 90 %")]
    with open(tmp_path / "out" / "run_phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["waited"], r["settled"]) for r in rows] == [("7.0", "quiet"), ("", ""), ("4.0", "server CPU 90 %")]


def test_a_phase_after_a_long_wait_runs_its_whole_length(settling: PhasedShape, clock: _Clock) -> None:
    # The join waits 28 s: longer than the whole talk after it, which must still run its 20 s.
    phases.settle_checks.append(lambda since: "busy" if clock.t < 38 else None)
    for t in [0, 10, 37, 38, 57.9, 58]:
        clock.t = t
        settling.tick()
    log = phases.phase_log()
    assert [(e["phase"], e["start_unix"] - T0, e["skipped"]) for e in log] == [
        ("join", 0, False), ("talk", 38, False), ("leave", 58, False)]  # fmt: skip


def test_a_settling_phase_waits_until_every_planned_user_is_started(settling: PhasedShape) -> None:
    runner = settling.runner
    assert runner is not None
    runner.state = "spawning"
    assert settling._not_quiet(Phase("join", 10, 5, 10, settle=30), T0) == ["0 of 5 users started"]
    runner.state = "running"  # a worker that went missing takes its users: the phase does not wait for them
    assert settling._not_quiet(Phase("join", 10, 5, 10, settle=30), T0) == []


def test_phases_are_sized_from_the_options(clock: _Clock) -> None:
    class Sized(PhasedShape):
        def phases(self) -> list[Phase]:
            viewers = self.runner.environment.parsed_options.viewers
            return [Phase("join", 5, viewers, viewers / 10, user_classes=[_Other])]

    shape = _shape(clock, Sized)
    env = Environment(
        user_classes=[_Other], shape_class=shape, parsed_options=argparse.Namespace(viewers=40, csv_prefix=None)
    )
    env.create_local_runner()
    assert _run(shape, clock, [0, 5]) == [(40, 4.0, [_Other]), None]
    env.runner.quit()


def test_invalid_phases_are_refused(clock: _Clock) -> None:
    class Bad(PhasedShape):
        def phases(self) -> list[Phase]:
            return [Phase("join", 5, 10, 0)]

    with pytest.raises(ValueError):
        _shape(clock, Bad).tick()


class _FakeMaster(MasterRunner):
    """A master that records its messages instead of binding a port."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.greenlet = Group()
        self.sent: list[tuple[str, Any]] = []

    def send_message(self, msg_type: str, data: Any = None, client_id: str | None = None) -> None:
        self.sent.append((msg_type, data))


class _FakeWorker(WorkerRunner):
    """A worker with no connection to a master: enough to register message handlers."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.greenlet = Group()
        self.custom_messages = {}


def test_master_broadcasts_on_every_tick_and_piggybacks_on_spawns(clock: _Clock) -> None:
    shape = _shape(clock)
    options = argparse.Namespace(csv_prefix=None)
    env = Environment(user_classes=[_Quiet], shape_class=shape, parsed_options=options)
    master = _FakeMaster(env)
    shape.runner = env.runner = master
    _run(shape, clock, [0, 1, 10])
    names = [data["name"] for kind, data in master.sent]
    assert {kind for kind, _ in master.sent} == {phases.MESSAGE}
    assert names == ["join", "join", "talk"]
    assert master.sent[0][1]["seq"] < master.sent[2][1]["seq"]
    assert getattr(options, phases.OPTION)["name"] == "talk"
    _run(shape, clock, [40])
    assert master.sent[-1][1]["end"] is True


def _states(clock: _Clock) -> list[dict[str, Any]]:
    """What a master sends for each phase of _ThreeBatches."""
    shape = _shape(clock)
    env = Environment(user_classes=[_Quiet], shape_class=shape, parsed_options=argparse.Namespace(csv_prefix=None))
    master = _FakeMaster(env)
    shape.runner = env.runner = master
    _run(shape, clock, [0, 10, 30, 40])
    states = []
    for _, data in master.sent:
        if data not in states:
            states.append(data)
    return states


def test_worker_adopts_newer_phases_only(clock: _Clock) -> None:
    join, talk, leave, end = _states(clock)
    phases._current, phases._current_key = None, (0.0, 0)  # this process now plays a fresh worker
    env = Environment(user_classes=[_Quiet], parsed_options=argparse.Namespace())
    env.runner = _FakeWorker(env)
    phases.install(env)
    phases.install(env)  # idempotent: a second registration would raise in Locust
    handler, _concurrent = env.runner.custom_messages[phases.MESSAGE]
    calls: list[str] = []
    phases.on_phase_change.append(lambda phase: calls.append(phase.name))
    for state in [join, join, talk, join, talk]:
        handler(environment=env, msg=Message(phases.MESSAGE, state, "master"))
    current = phases.current_phase()
    assert current is not None and (current.name, current.params, current.users) == ("talk", {"talk": True}, 100)
    assert calls == ["join", "talk"]
    # A spawn message from the master carries a newer phase in parsed_options.
    setattr(env.parsed_options, phases.OPTION, leave)
    current = phases.current_phase()
    assert current is not None and current.name == "leave" and current.user_classes is None
    assert calls == ["join", "talk", "leave"]
    handler(environment=env, msg=Message(phases.MESSAGE, end, "master"))
    assert phases.current_phase() is None


def test_batches_of_new_connections_with_their_logins_spread() -> None:
    from xmpp_user.run.batches import batch_phases

    options = argparse.Namespace(batch_size=100, batch_interval=10.0, batch_jitter=1.0)
    plan = batch_phases(options, 250, [_Quiet], {"talk": False})
    assert [(p.name, p.users, p.spawn_rate, p.duration) for p in plan] == [
        ("batch1", 100, 100, 10.0), ("batch2", 200, 100, 10.0), ("batch3", 250, 100, 10.0),
    ]  # fmt: skip
    assert all(p.params == {"talk": False, phases.LOGIN_JITTER: 1.0} and p.user_classes == [_Quiet] for p in plan)
    # The jitter never outlasts the interval between batches.
    short = batch_phases(argparse.Namespace(batch_size=10, batch_interval=0.5, batch_jitter=1.0), 10)
    assert short[0].params[phases.LOGIN_JITTER] == 0.5


def test_a_user_of_a_batch_waits_a_random_moment_within_its_jitter(local: PhasedShape, clock: _Clock) -> None:
    assert phases.login_delay() == 0.0  # no phase: no wait
    phases._adopt({"epoch": 1.0, "seq": 1, "name": "batch1", "duration": 10, "users": 100, "spawn_rate": 100,
                   "params": {phases.LOGIN_JITTER: 0.8}})  # fmt: skip
    delays = [phases.login_delay() for _ in range(200)]
    assert all(0 <= d <= 0.8 for d in delays) and max(delays) - min(delays) > 0.4
