"""What the report is drawn from: one in-memory model of a run, whichever source filled it.

A run is its phases (from ``PREFIX_phases.json``), a timeline of the generator's state about once a
second, the server process's CPU and memory sampled more often, and snapshots of the per-name request
statistics taken at each phase change and at the end. ``load_files`` fills the model from the files a
run writes with ``--csv PREFIX`` (``xmpp_user.observe.timeline``); ``xmpp_user.observe.prometheus``
fills it from Prometheus. This module only reads and writes plain data: no Locust, no matplotlib.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUTH_KEYS = (
    "sent", "confirmed", "unconfirmed", "skipped", "expected", "delivered", "in_flight", "lost", "unexpected",
    "unverified",
    "duplicated", "out_of_order", "missing_workers", "missing_users",
)  # fmt: skip
"""The message truth counters a timeline sample and a snapshot carry (``outcome.summary`` less deviations)."""
REQUESTS_COLUMN = "requests."
FAILURES_COLUMN = "failures."
LAG_COLUMN = "generator_lag_s"
TIMELINE_COLUMNS = ("t_unix", "phase", "users", "sessions", LAG_COLUMN, *TRUTH_KEYS)
"""Fixed columns of ``PREFIX_timeline.csv``; then ``requests.NAME`` and ``failures.NAME`` per request name."""
SERVER_COLUMNS = ("t_unix", "cpu_seconds", "cpu_percent", "rss_bytes")
PHASE_STATS_VERSION = 1


@dataclass
class PhaseSpan:
    """One phase of the run as it really went (``PREFIX_phases.json``)."""

    name: str
    start: float
    end: float | None
    """Unix time; None while the phase is still open (a run that died)."""
    users: int = 0
    connected_min: int | None = None
    connected_max: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    settle: float = 0.0
    """Seconds the phase could go on after its planned duration, waiting for the server to go quiet."""
    waited: float | None = None
    """Seconds it did go on so (None: the log does not say, e.g. a phase without ``settle``)."""
    settled: str | None = None
    """'quiet', or what was still going on when it gave up waiting."""


@dataclass
class Sample:
    """The generator's state at one moment: counters are cumulative since the run's start."""

    t: float
    phase: str | None
    users: int
    sessions: int | None
    requests: dict[str, int] = field(default_factory=dict)
    """Requests ended (successes and failures) by request name."""
    failures: dict[str, int] = field(default_factory=dict)
    truth: dict[str, int] = field(default_factory=dict)
    lag: float | None = None
    """The largest delay of the generator's event loop since the previous sample, in seconds (on a master, as far
    as its workers had reported it; ``xmpp_user.run.lag``); None where the source does not carry it."""


@dataclass
class ServerSample:
    """The server process at one moment; ``cpu_percent`` is over the time since the previous sample."""

    t: float
    cpu_percent: float | None
    rss_bytes: float | None
    cpu_seconds: float | None = None
    """CPU time the process had used since it started: what it did before the run shows in the first sample."""


@dataclass
class NameStats:
    """Cumulative statistics of one request name."""

    requests: int = 0
    failures: int = 0
    response_times: dict[float, int] = field(default_factory=dict)
    """Milliseconds -> count. From Locust: its rounded response times; from Prometheus: histogram bucket
    upper bounds (``math.inf`` for the last one), each with the count of its bucket alone."""


@dataclass
class Snapshot:
    """Request statistics and truth counters when ``phase`` began (None: at the run's end)."""

    t: float
    phase: str | None
    requests: dict[str, NameStats] = field(default_factory=dict)
    truth: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    """Everything the report needs, from files or from Prometheus."""

    phases: list[PhaseSpan] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)
    server: list[ServerSample] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    server_name: str = "the server"
    """How sentences name the observed server ("Prosody (pid 1234)")."""
    server_note: str = ""
    """Why there are no server samples, when there are none."""
    source: str = ""
    """Where the data came from, for the report's header."""
    latency_buckets: bool = False
    """Latencies are histogram bucket bounds (Prometheus), not Locust's rounded response times."""

    @property
    def start(self) -> float | None:
        times = [p.start for p in self.phases] + [s.t for s in self.timeline[:1]] + [s.t for s in self.server[:1]]
        return min(times) if times else None

    @property
    def end(self) -> float | None:
        times = [p.end for p in self.phases if p.end is not None]
        times += [s.t for s in self.timeline[-1:]] + [s.t for s in self.server[-1:]]
        return max(times) if times else None


class MissingData(Exception):
    """The files of a run are not there or not readable: one line for the user."""


# ---- reading ----------------------------------------------------------------------------------------


def phases_from_log(entries: list[Mapping[str, Any]]) -> list[PhaseSpan]:
    """Phase spans from ``phases.phase_log()`` or ``PREFIX_phases.json``."""
    return [
        PhaseSpan(
            name=str(e["phase"]),
            start=float(e["start_unix"]),
            end=None if e.get("end_unix") is None else float(e["end_unix"]),
            users=int(e.get("users") or 0),
            connected_min=_int_or_none(e.get("connected_min")),
            connected_max=_int_or_none(e.get("connected_max")),
            params=dict(e.get("params") or {}),
            skipped=bool(e.get("skipped")),
            settle=float(e.get("settle") or 0.0),
            waited=_float_or_none(e.get("waited")),
            settled=e.get("settled") or None,
        )
        for e in entries
    ]


def load_phases(prefix: str | Path) -> list[PhaseSpan]:
    """The phases of a run, or [] when it had none (a run without a phased load shape)."""
    path = Path(f"{prefix}_phases.json")
    if not path.exists():
        return []
    try:
        return phases_from_log(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingData(f"cannot read {path}: {exc}") from None


def load_files(prefix: str | Path) -> Run:
    """The run written with ``--csv PREFIX``: phases, timeline, server samples and phase statistics."""
    timeline_path = Path(f"{prefix}_timeline.csv")
    if not timeline_path.exists():
        raise MissingData(f"{timeline_path} does not exist: was the run made with --csv {prefix}?")
    run = Run(phases=load_phases(prefix), source=f"the files {prefix}_*")
    try:
        run.timeline = _read_timeline(timeline_path)
        server_path = Path(f"{prefix}_server.csv")
        if server_path.exists():
            run.server = _read_server(server_path)
        stats_path = Path(f"{prefix}_phase_stats.json")
        if stats_path.exists():
            data = json.loads(stats_path.read_text(encoding="utf-8"))
            run.snapshots = [snapshot_from_dict(s) for s in data.get("snapshots", [])]
            server = data.get("server") or {}
            run.server_name = server.get("name") or run.server_name
            run.server_note = server.get("note") or ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingData(f"cannot read the files of {prefix}: {exc}") from None
    if not run.server and not run.server_note:
        run.server_note = "the run recorded no server samples"
    return run


def _read_timeline(path: Path) -> list[Sample]:
    samples = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            samples.append(
                Sample(
                    t=float(row["t_unix"]),
                    phase=row["phase"] or None,
                    users=int(row["users"] or 0),
                    sessions=_int_or_none(row["sessions"]),
                    requests=_prefixed(row, REQUESTS_COLUMN),
                    failures=_prefixed(row, FAILURES_COLUMN),
                    truth={k: int(row[k]) for k in TRUTH_KEYS if row.get(k)},
                    lag=_float_or_none(row.get(LAG_COLUMN)),
                )
            )
    return samples


def _read_server(path: Path) -> list[ServerSample]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    figures = ("cpu_percent", "rss_bytes", "cpu_seconds")
    return [ServerSample(float(r["t_unix"]), *(_float_or_none(r.get(k)) for k in figures)) for r in rows]


def _prefixed(row: Mapping[str, str], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: int(v) for k, v in row.items() if k.startswith(prefix) and v not in ("", None)}


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    return Snapshot(
        t=float(data["t_unix"]),
        phase=data.get("phase"),
        requests={
            name: NameStats(
                int(s.get("requests", 0)),
                int(s.get("failures", 0)),
                {float(k): int(v) for k, v in (s.get("response_times") or {}).items()},
            )
            for name, s in (data.get("requests") or {}).items()
        },
        truth={k: int(v) for k, v in (data.get("truth") or {}).items()},
    )


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "t_unix": snapshot.t,
        "phase": snapshot.phase,
        "truth": snapshot.truth,
        "requests": {
            name: {
                "requests": s.requests,
                "failures": s.failures,
                "response_times": {_key(k): v for k, v in sorted(s.response_times.items())},
            }
            for name, s in sorted(snapshot.requests.items())
        },
    }


# ---- writing (the timeline's files) -----------------------------------------------------------------


def write_timeline(path: str | Path, samples: list[Sample]) -> None:
    names = sorted({n for s in samples for n in s.requests} | {n for s in samples for n in s.failures})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        columns = [*(REQUESTS_COLUMN + n for n in names), *(FAILURES_COLUMN + n for n in names)]
        writer.writerow([*TIMELINE_COLUMNS, *columns])
        for s in samples:
            fixed = [f"{s.t:.3f}", s.phase or "", s.users, "" if s.sessions is None else s.sessions]
            fixed.append("" if s.lag is None else f"{s.lag:.3f}")
            fixed += [s.truth.get(k, "") for k in TRUTH_KEYS]
            writer.writerow([*fixed, *(s.requests.get(n, 0) for n in names), *(s.failures.get(n, 0) for n in names)])


def write_server(path: str | Path, rows: list[tuple[float, float, float | None, int]]) -> None:
    """Rows of (unix time, CPU seconds so far, CPU % since the previous row, RSS bytes)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SERVER_COLUMNS)
        for t, cpu, percent, rss in rows:
            writer.writerow([f"{t:.3f}", f"{cpu:.2f}", "" if percent is None else f"{percent:.1f}", rss])


def write_phase_stats(path: str | Path, snapshots: list[Snapshot], server: Mapping[str, Any]) -> None:
    data = {
        "version": PHASE_STATS_VERSION,
        "server": dict(server),
        "snapshots": [snapshot_to_dict(s) for s in snapshots],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def _key(ms: float) -> str:
    if math.isinf(ms):
        return "inf"
    return str(int(ms)) if float(ms).is_integer() else repr(ms)


def _int_or_none(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value in (None, "") else float(value)
