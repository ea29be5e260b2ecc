"""Named phases of a load test: a load shape that says which phase is on, on every process.

A ``PhasedShape`` walks a list of ``Phase`` by run time and returns each phase's user count
and spawn rate to Locust; after the last phase it returns None, which ends the run. It
records when each phase actually started and ended (the shape ticks once a second, and a
slow ramp-up can delay a tick, so planned and actual times differ) and, with
``--csv PREFIX``, writes them to ``PREFIX_phases.csv`` and ``PREFIX_phases.json`` at every phase change
(the phase in force without an end) and at the end.

A phase with ``settle`` does not end with its planned duration: it goes on until the run has gone
quiet, for at most ``settle`` more seconds, and the later phases move by as much. Quiet means every
planned user runs and every check of ``settle_checks`` passes (registered by the floors that know:
no request or login outstanding, no delivery in flight, the server's CPU back near its idle level).
The phase log says how long each phase waited, and for what when it gave up.

Every process knows the current phase (``current_phase()``) and calls the ``on_phase_change``
callbacks once per change. The master and a local runner learn it from the shape itself.
Workers learn it from the master through two channels, both carrying a (master epoch,
sequence) key so that a worker only ever moves forward:

- on every tick the master sends an ``xmpp_phase`` message to all workers: a change
  reaches connected workers before the spawn messages of the phase, and a worker that
  connected late, or whose handler was not registered yet when a message came, is up to
  date within a second;
- the master also stores the phase in its ``parsed_options``, which Locust copies into
  every spawn message and applies on the worker before it starts the users: a user that
  calls ``current_phase()`` in ``on_start`` sees the phase it was spawned for, even on a
  worker that joined a moment ago. On a worker, ``current_phase()`` adopts that copy if it is
  newer, and then calls the callbacks from the calling user's greenlet.

Workers need ``install(environment)`` at ``init`` to receive the messages; masters and local
runners install on the first tick as well.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from locust import LoadTestShape
from locust.env import Environment
from locust.runners import STATE_SPAWNING, MasterRunner, WorkerRunner

from xmpp_user.run.deviations import DEVIATIONS

if TYPE_CHECKING:
    from locust import User
    from locust.rpc import Message

log = logging.getLogger(__name__)

MESSAGE = "xmpp_phase"
"""Custom message type of the master's phase broadcast."""
OPTION = "xmpp_phase"
"""Attribute of ``parsed_options`` through which spawn messages carry the phase."""
LOGIN_JITTER = "login_jitter"
"""Phase parameter: seconds over which the users a phase starts spread their logins."""
CSV_COLUMNS = (
    "phase", "start_iso", "end_iso", "start_unix", "end_unix", "users", "connected_min", "connected_max", "params_json",
    "waited", "settled",
)  # fmt: skip


@dataclass
class Phase:
    """One named stretch of the run with a fixed target user count."""

    name: str
    duration: float
    """Planned length in seconds."""
    users: int
    """Target user count during the phase."""
    spawn_rate: float
    """Users started (or stopped) per second, for the whole cluster."""
    user_classes: list[type[User]] | None = None
    """User classes to spawn in this phase; None for all. Not sent to workers."""
    params: dict[str, Any] = field(default_factory=dict)
    """What users should emulate in this phase, e.g. ``{"vcards": False}``; must be msgpack-able."""
    settle: float = 0.0
    """Seconds the phase may go on after its duration until the run is quiet (``settle_checks``); 0: none."""


on_phase_change: list[Callable[[Phase], None]] = []
"""Called with the new phase, once per change, on every process that has installed this module."""
settle_checks: list[Callable[[float], str | None]] = []
"""Called, while a phase with ``settle`` waits, with the Unix time its planned duration ended: each returns
None once its part of the run is quiet since then, or why not yet ("12 replies outstanding")."""
connected_sessions: Callable[[], int | None] | None = None
"""How many sessions are really open now across the run (set by ``xmpp_user.run.outcome``); sampled at
every tick into each phase's ``connected_min`` and ``connected_max``, beside its planned ``users``."""

_EPOCH = time.time()
"""Orders the phases of a restarted master after those of the previous one."""
_seq = itertools.count(1)
_current: Phase | None = None
_current_key: tuple[float, int] = (0.0, 0)
_log: list[dict[str, Any]] = []
_installed: WeakSet[Environment] = WeakSet()
_worker_environment: Environment | None = None


def current_phase() -> Phase | None:
    """The phase in force on this process, None before the first one and after the last one."""
    if _worker_environment is not None and _worker_environment.parsed_options is not None:
        state = getattr(_worker_environment.parsed_options, OPTION, None)
        if state:
            _adopt(state)
    return _current


def login_delay() -> float:
    """How long a user starting now waits before it logs in: a random moment within the current
    phase's ``login_jitter``, 0 without one."""
    phase = current_phase()
    jitter = float(phase.params.get(LOGIN_JITTER, 0) or 0) if phase is not None else 0.0
    return random.uniform(0, jitter) if jitter > 0 else 0.0


def phase_log() -> list[dict[str, Any]]:
    """Phases of the latest run on this master or local runner, with actual start and end times."""
    return [dict(entry) for entry in _log]


def install(environment: Environment) -> None:
    """Prepare this process for phases; call from an ``init`` listener. Repeated calls do nothing."""
    global _worker_environment
    if environment in _installed:
        return
    _installed.add(environment)
    if isinstance(environment.runner, WorkerRunner):
        _worker_environment = environment
        environment.runner.register_message(MESSAGE, _on_message)

    def on_test_stop(**_kw: Any) -> None:
        # A run stopped from the web UI or by a signal never sees its last tick.
        shape = environment.shape_class
        if isinstance(shape, PhasedShape) and not isinstance(environment.runner, WorkerRunner):
            shape.end_run()

    environment.events.test_stop.add_listener(on_test_stop)


def _on_message(environment: Environment, msg: Message, **_kw: Any) -> None:
    _adopt(msg.data)


def _adopt(state: dict[str, Any], phase: Phase | None = None) -> None:
    """Make ``state`` the current phase if it is newer than the current one."""
    global _current, _current_key
    key = (float(state["epoch"]), int(state["seq"]))
    if key <= _current_key:
        return
    _current_key = key
    if state.get("end"):
        _current = None
        return
    if phase is None:
        phase = Phase(state["name"], state["duration"], state["users"], state["spawn_rate"], None, state["params"])
    _current = phase
    for callback in list(on_phase_change):
        try:
            callback(phase)
        except Exception:
            log.exception("on_phase_change callback %r failed", callback)


class PhasedShape(LoadTestShape):
    """A load shape made of named phases; subclasses implement ``phases()``."""

    abstract = True

    monotonic: Callable[[], float] = staticmethod(time.perf_counter)
    """Clock of the run time (tests replace it)."""
    wall_clock: Callable[[], float] = staticmethod(time.time)
    """Clock of the recorded start and end times (tests replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.start_time = self.monotonic()
        self._phases: list[Phase] = []
        self._index: int | None = None
        """Index of the phase in force; -1 before the first tick's phase; None outside a run."""
        self._state: dict[str, Any] | None = None
        """The current phase as broadcast to workers."""
        self._offset = 0.0
        """Seconds the phases so far waited beyond their plan: the plan's clock runs that much behind."""
        self._last_run_time = 0.0

    def phases(self) -> list[Phase]:
        """The phases of a run, asked at its first tick (``self.runner.environment`` is set then)."""
        raise NotImplementedError

    def reset_time(self) -> None:
        self.start_time = self.monotonic()

    def get_run_time(self) -> float:
        return self.monotonic() - self.start_time

    def tick(self) -> tuple[int, float] | tuple[int, float, list[type[User]]] | None:
        if self._index is None:
            self._begin_run()
        assert self._index is not None
        run_time = self.get_run_time()
        if run_time < self._last_run_time:
            # The run time went back to zero without an end: a restart from the web UI.
            self.end_run()
            self._begin_run()
        self._last_run_time = run_time
        index = self._index_at(run_time - self._offset)
        if index > self._index >= 0:
            # A settling phase holds the plan; once it stops waiting the plan's clock has moved back.
            index = self._index if self._settling(run_time) else self._index_at(run_time - self._offset)
        if index != self._index:
            self._enter(index)
        self._sample_connected()
        self._publish()
        if index >= len(self._phases):
            self.end_run()
            return None
        phase = self._phases[index]
        if phase.user_classes is not None:
            return phase.users, phase.spawn_rate, phase.user_classes
        return phase.users, phase.spawn_rate

    def end_run(self) -> None:
        """Close the open phase and write the phase files; does nothing outside a run."""
        if self._index is None:
            return
        if 0 <= self._index < len(self._phases):
            left = len(self._phases) - self._index - 1
            DEVIATIONS.note(
                "stopped_early",
                f"the run was stopped during phase {self._phases[self._index].name!r}; "
                f"{left} later phase{'s' if left != 1 else ''} did not run",
            )
        self._close(self.wall_clock())
        self._index = None
        if self._state is not None:
            self._state = {"epoch": _EPOCH, "seq": next(_seq), "end": True}
            _adopt(self._state)
            self._publish()
        self._write_files()

    def _begin_run(self) -> None:
        global _log
        if self.runner is not None:
            install(self.runner.environment)
        self._phases = list(self.phases())
        for phase in self._phases:
            if phase.duration < 0 or phase.users < 0 or phase.spawn_rate <= 0:
                raise ValueError(f"phase {phase.name!r}: negative duration or users, or no spawn rate")
        self._index = -1
        self._state = None
        self._offset = self._last_run_time = 0.0
        _log = []

    def _settling(self, run_time: float) -> bool:
        """Whether the current phase, past its planned end, goes on waiting for the run to be quiet. When it
        stops waiting, the plan's clock moves back by the time it waited, so the next phase starts now."""
        assert self._index is not None
        phase = self._phases[self._index]
        if phase.settle <= 0:
            return False
        planned_end = sum(p.duration for p in self._phases[: self._index + 1])
        waited = max(0.0, run_time - self._offset - planned_end)
        reasons = self._not_quiet(phase, self.wall_clock() - waited)
        if reasons and waited < phase.settle:
            return True
        self._offset += waited
        if _log and _log[-1]["end_unix"] is None:
            _log[-1].update(waited=round(waited, 3), settled="; ".join(reasons) if reasons else "quiet")
            if reasons:
                log.warning("Phase %r did not settle within %g s: %s", phase.name, phase.settle, "; ".join(reasons))
        return False

    def _not_quiet(self, phase: Phase, since: float) -> list[str]:
        """Why the run is not quiet since ``since`` (Unix time): empty once it is."""
        reasons = []
        runner = self.runner
        if runner is not None and runner.state == STATE_SPAWNING:
            reasons.append(f"{runner.user_count} of {phase.users} users started")
        for check in list(settle_checks):
            try:
                reason = check(since)
            except Exception:
                log.exception("settle check %r failed", check)
                continue
            if reason:
                reasons.append(reason)
        return reasons

    def _index_at(self, run_time: float) -> int:
        end = 0.0
        for i, phase in enumerate(self._phases):
            end += phase.duration
            if run_time < end:
                return i
        return len(self._phases)

    def _enter(self, index: int) -> None:
        assert self._index is not None
        now = self.wall_clock()
        self._close(now)
        for skipped in self._phases[self._index + 1 : index]:
            log.warning("Phase %r skipped: the previous phase overran it", skipped.name)
            _log.append(_entry(skipped, now, now, skipped=True))
        if index >= len(self._phases):
            self._index = index
            return
        phase = self._phases[index]
        log.info("Phase %r starts: %d users at %g/s, %s", phase.name, phase.users, phase.spawn_rate, phase.params)
        _log.append(_entry(phase, now, None))
        self._index = index
        self._state = {
            "epoch": _EPOCH,
            "seq": next(_seq),
            "name": phase.name,
            "duration": phase.duration,
            "users": phase.users,
            "spawn_rate": phase.spawn_rate,
            "params": phase.params,
        }
        _adopt(self._state, phase)
        self._write_files()  # the phases so far, the one in force open: what a run killed now leaves

    def _sample_connected(self) -> None:
        count = connected_sessions() if connected_sessions is not None else None
        if count is None or not _log or _log[-1]["end_unix"] is not None:
            return
        entry = _log[-1]
        low, high = entry["connected_min"], entry["connected_max"]
        entry["connected_min"] = count if low is None else min(low, count)
        entry["connected_max"] = count if high is None else max(high, count)

    def _close(self, now: float) -> None:
        if _log and _log[-1]["end_unix"] is None:
            entry = _log[-1]
            entry.update(end_unix=now, end_iso=_iso(now))
            steady = len(_log) > 1 and _log[-2]["users"] == entry["users"] > 0
            if steady and entry["connected_max"] is not None and entry["connected_max"] < entry["users"]:
                DEVIATIONS.note(
                    "users_short",
                    f"in phase {entry['phase']!r} at most {entry['connected_max']} of the {entry['users']} "
                    "planned users had a session open",
                )

    def _publish(self) -> None:
        """Tell workers the current phase: by message now, and with every later spawn message."""
        if self._state is None or self.runner is None:
            return
        options = self.runner.environment.parsed_options
        if options is not None:
            setattr(options, OPTION, self._state)
        if isinstance(self.runner, MasterRunner):
            self.runner.send_message(MESSAGE, self._state)

    def _write_files(self) -> None:
        options = self.runner.environment.parsed_options if self.runner is not None else None
        prefix = getattr(options, "csv_prefix", None)
        if not prefix:
            return
        if directory := os.path.dirname(prefix):
            os.makedirs(directory, exist_ok=True)
        with open(f"{prefix}_phases.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for e in _log:
                row = [e["phase"], e["start_iso"], e["end_iso"], e["start_unix"], e["end_unix"], e["users"],
                       e["connected_min"], e["connected_max"], json.dumps(e["params"], sort_keys=True),
                       e["waited"], e["settled"]]  # fmt: skip
                writer.writerow(row)
        with open(f"{prefix}_phases.json", "w", encoding="utf-8") as f:
            json.dump(_log, f, indent=2)
            f.write("\n")


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="milliseconds")


def _entry(phase: Phase, start: float, end: float | None, skipped: bool = False) -> dict[str, Any]:
    return {
        "phase": phase.name,
        "start_iso": _iso(start),
        "end_iso": _iso(end) if end is not None else None,
        "start_unix": start,
        "end_unix": end,
        "users": phase.users,
        "connected_min": None,
        "connected_max": None,
        "spawn_rate": phase.spawn_rate,
        "params": phase.params,
        "skipped": skipped,
        "settle": phase.settle,
        "waited": None,  # seconds the phase went on after its planned duration, waiting for quiet (settle)
        "settled": None,  # 'quiet', or what was still going on when it gave up waiting
    }
