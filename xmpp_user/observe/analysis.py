"""The report's arithmetic: per-phase figures and the conclusions of the field reports, drawn from a run.

Pure functions over ``xmpp_user.observe.model.Run``: no I/O, no Locust, no matplotlib. The
conclusions are those the field drew by eye from its charts (``shared/seeds``):

- the vCard (avatar) emulation's share of the server's CPU while viewers join: batch 1 (everything)
  against batch 2 (no vCards) of the livechat test;
- the room archive's (MAM) share: batch 2 against batch 3 (no vCards, no MAM), as a share of
  batch 1's join CPU (the whole client, so that the two shares add up and compare) and, as the field
  gave it, of batch 2's;
- the server's memory per connected session: a straight line fitted to RSS against the sessions
  open, with its R²;
- the load (users, sessions) at which requests began to fail.

Each conclusion is a sentence with its numbers, or, when it cannot be drawn from the run, a sentence
saying why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from xmpp_user.observe.model import NameStats, PhaseSpan, Run, Sample, ServerSample, Snapshot

MIN_PHASE_SAMPLES = 3
"""Server samples a phase needs before its CPU is compared with another's."""
MIN_FIT_POINTS = 5
"""(sessions, RSS) pairs a memory fit needs ..."""
MIN_FIT_LEVELS = 3
"""... spread over at least this many distinct session counts."""
PAIR_TOLERANCE = 1.5
"""Seconds between a timeline sample and the server sample it is paired with, at most."""
LOOSE_FIT = 0.5
"""An R² below this makes the memory figure a rough one, and the sentence says so."""
MESSAGE = "message"
"""The request name of a groupchat message sent (and confirmed by its reflection)."""
VCARD_REQUESTS = ("vcard", "vcard_occupant")
MAM_REQUESTS = ("mam",)
MIB = 2**20


# ---- small arithmetic ---------------------------------------------------------------------------------


def percentile(distribution: Mapping[float, int], fraction: float) -> float | None:
    """The smallest value at or below which ``fraction`` of the counts lie (nearest rank); None if empty."""
    counts = sorted((value, count) for value, count in distribution.items() if count > 0)
    total = sum(count for _, count in counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total - 1e-9))
    seen = 0
    for value, count in counts:
        seen += count
        if seen >= rank:
            return value
    return counts[-1][0]


def difference(after: Mapping[float, int], before: Mapping[float, int]) -> dict[float, int]:
    """Counts added between two cumulative distributions (negative leftovers, from a reset, dropped)."""
    return {k: n for k, v in after.items() if (n := v - before.get(k, 0)) > 0}


def cpu_seconds(server: Sequence[ServerSample], start: float, end: float) -> float:
    """CPU time the server used between ``start`` and ``end``: each sample's percentage over the time
    since the previous sample, for the samples taken in (start, end]."""
    total = 0.0
    previous: float | None = None
    for s in server:
        if previous is not None and start < s.t <= end and s.cpu_percent is not None:
            total += s.cpu_percent / 100 * (s.t - max(previous, start))
        previous = s.t
    return total


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float | None]:
    """Least squares ``y = intercept + slope * x``: (slope, intercept, R²); R² None when y never varies.
    Needs two distinct x values at least (ValueError otherwise)."""
    n = len(xs)
    if n != len(ys) or len({*xs}) < 2:
        raise ValueError("a line needs two distinct x values at least")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    if ss_tot == 0:
        return slope, intercept, None
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, intercept, 1 - ss_res / ss_tot


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ---- per phase --------------------------------------------------------------------------------------


@dataclass
class Latency:
    requests: int
    failures: int
    p50: float | None
    p95: float | None


@dataclass
class PhaseRow:
    """One phase of the report's table."""

    name: str
    start: float
    end: float
    users: int
    connected_min: int | None
    connected_max: int | None
    skipped: bool = False
    server_samples: int = 0
    cpu_mean: float | None = None
    cpu_max: float | None = None
    cpu_seconds: float | None = None
    rss_mean: float | None = None
    rss_max: float | None = None
    messages: int | None = None
    failures: int | None = None
    lost: int | None = None
    latency: dict[str, Latency] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def message_rate(self) -> float | None:
        if self.messages is None or self.seconds <= 0:
            return None
        return self.messages / self.seconds


def phase_windows(run: Run) -> list[tuple[PhaseSpan, Snapshot | None, Snapshot | None]]:
    """Each phase with the snapshots taken when it began and when the next one began (or the run ended).

    Snapshots are matched by phase name, in order; a phase skipped by the shape has none.
    """
    snapshots = run.snapshots
    out: list[tuple[PhaseSpan, Snapshot | None, Snapshot | None]] = []
    i = 0
    for phase in run.phases:
        begin = end = None
        if not phase.skipped:
            for j in range(i, len(snapshots)):
                if snapshots[j].phase == phase.name:
                    begin = snapshots[j]
                    end = snapshots[j + 1] if j + 1 < len(snapshots) else None
                    i = j + 1
                    break
        out.append((phase, begin, end))
    return out


def phase_rows(run: Run) -> list[PhaseRow]:
    """The per-phase table: server CPU and memory, messages, failures, losses and latency by request name."""
    rows = []
    run_end = run.end
    for phase, begin, end in phase_windows(run):
        stop = phase.end if phase.end is not None else (run_end if run_end is not None else phase.start)
        row = PhaseRow(phase.name, phase.start, stop, phase.users, phase.connected_min, phase.connected_max,
                       skipped=phase.skipped)  # fmt: skip
        cpu = [s.cpu_percent for s in run.server if phase.start < s.t <= stop and s.cpu_percent is not None]
        rss = [s.rss_bytes for s in run.server if phase.start <= s.t <= stop and s.rss_bytes is not None]
        row.server_samples = len(cpu)
        if cpu:
            row.cpu_mean, row.cpu_max = _mean(cpu), max(cpu)
            row.cpu_seconds = cpu_seconds(run.server, phase.start, stop)
        if rss:
            row.rss_mean, row.rss_max = _mean(rss), max(rss)
        if begin is not None and end is not None:
            _fill_requests(row, begin, end)
        rows.append(row)
    return rows


def _fill_requests(row: PhaseRow, begin: Snapshot, end: Snapshot) -> None:
    empty = NameStats()
    row.failures = 0
    for name in sorted(end.requests):
        after, before = end.requests[name], begin.requests.get(name, empty)
        requests = after.requests - before.requests
        failures = after.failures - before.failures
        if requests <= 0 and failures <= 0:
            continue
        times = difference(after.response_times, before.response_times)
        row.latency[name] = Latency(requests, failures, percentile(times, 0.5), percentile(times, 0.95))
        row.failures += max(0, failures)
    row.messages = row.latency[MESSAGE].requests if MESSAGE in row.latency else 0
    if "lost" in end.truth:
        row.lost = max(0, end.truth["lost"] - begin.truth.get("lost", 0))


# ---- conclusions ------------------------------------------------------------------------------------


@dataclass
class Conclusion:
    key: str
    title: str
    text: str
    drawn: bool
    """False when the run could not support it; ``text`` then says why."""
    values: dict[str, float] = field(default_factory=dict)


def conclusions(run: Run, rows: list[PhaseRow] | None = None) -> list[Conclusion]:
    rows = phase_rows(run) if rows is None else rows
    return [
        feature_share(run, rows, "vcards", "vCard CPU share", "The vCard (avatar) emulation", VCARD_REQUESTS, 1, 2),
        feature_share(run, rows, "mam", "MAM CPU share", "Reading the room archive (MAM) on joining", MAM_REQUESTS,
                      2, 3, of_batch=1),  # fmt: skip
        memory_per_session(run),
        failures_began(run),
    ]


def feature_share(
    run: Run, rows: list[PhaseRow], key: str, title: str, feature: str, requests: Iterable[str], with_batch: int,
    without_batch: int, of_batch: int | None = None,
) -> Conclusion:  # fmt: skip
    """The feature's share of the server's CPU while a batch of viewers joined: the CPU time the server
    used in ``batch<with>-join`` (with the feature) less ``batch<without>-join`` (without it), over the CPU
    time of ``batch<of>-join`` (default: ``with``), the join of a client with every feature."""
    with_name, without_name = f"batch{with_batch}-join", f"batch{without_batch}-join"
    by_name = {r.name: r for r in rows if not r.skipped}

    def not_drawn(reason: str) -> Conclusion:
        return Conclusion(key, title, f"{feature}: its CPU share cannot be drawn, as {reason}.", False)

    if with_name not in by_name:
        return not_drawn(f"the run has no phase {with_name} (only the livechat test has its batches)")
    if without_name not in by_name:
        batches = sum(1 for r in rows if r.name.startswith("batch") and r.name.endswith("-join"))
        return not_drawn(
            f"the run had {batches} batch{'es' if batches != 1 else ''} only, so no {without_name} to compare "
            f"{with_name} with (run the livechat test with --batches {without_batch} or more)"
        )
    if not run.server:
        return not_drawn(run.server_note or "the server was not observed")
    a, b = by_name[with_name], by_name[without_name]
    for row in (a, b):
        if row.server_samples < MIN_PHASE_SAMPLES:
            return not_drawn(f"{row.name} has {row.server_samples} server samples, fewer than {MIN_PHASE_SAMPLES}")
    names = tuple(requests)
    made_a = sum(a.latency[n].requests for n in names if n in a.latency) if a.failures is not None else None
    made_b = sum(b.latency[n].requests for n in names if n in b.latency) if b.failures is not None else None
    if made_a == 0:
        return not_drawn(f"{with_name} made no {'/'.join(names)} requests (was the feature switched off for "
                         "every batch?)")  # fmt: skip
    if made_b:
        return not_drawn(f"{without_name} made {made_b} {'/'.join(names)} requests too, so the two batches "
                         "differ in more than this feature")  # fmt: skip
    cpu_a, cpu_b = a.cpu_seconds or 0.0, b.cpu_seconds or 0.0
    if cpu_a <= 0:
        return not_drawn(f"{run.server_name} used no measurable CPU during {with_name}")
    own_share = (cpu_a - cpu_b) / cpu_a
    values = {"share": own_share, "cpu_seconds_with": cpu_a, "cpu_seconds_without": cpu_b,
              "cpu_mean_with": a.cpu_mean or 0.0, "cpu_mean_without": b.cpu_mean or 0.0,
              "cpu_max_with": a.cpu_max or 0.0, "cpu_max_without": b.cpu_max or 0.0}  # fmt: skip
    detail = (
        f"{run.server_name} used {cpu_a:.2f} CPU-seconds during {with_name} (mean {a.cpu_mean:.0f} %, peak "
        f"{a.cpu_max:.0f} %{_per_user(cpu_a, a.users)}) and {cpu_b:.2f} during {without_name} without it "
        f"(mean {b.cpu_mean:.0f} %, peak {b.cpu_max:.0f} %{_per_user(cpu_b, b.users)})"
    )
    base = by_name.get(f"batch{of_batch}-join") if of_batch not in (None, with_batch) else None
    cpu_base = (base.cpu_seconds or 0.0) if base is not None and base.server_samples >= MIN_PHASE_SAMPLES else 0.0
    if own_share <= 0:
        text = f"{feature} showed no CPU cost in this run: {detail}."
    elif base is not None and cpu_base > 0:
        share = values["share"] = (cpu_a - cpu_b) / cpu_base
        values.update(share_of_with=own_share, cpu_seconds_every_feature=cpu_base)
        text = (f"{feature} took {share:.0%} of the server's CPU while viewers joined with every feature "
                f"({cpu_base:.2f} CPU-seconds during {base.name}), and {own_share:.0%} of {with_name}'s: "
                f"{detail}.")  # fmt: skip
    else:
        text = f"{feature} took {own_share:.0%} of the server's CPU while viewers joined: {detail}."
    return Conclusion(key, title, text, True, values)


def _per_user(cpu: float, users: int) -> str:
    return f", {cpu / users * 1000:.0f} ms per viewer" if users > 0 else ""


def fit_window(timeline: Sequence[Sample]) -> list[Sample]:
    """The samples of the ramp: from the start until the sessions first fall from their first peak.
    Memory a server keeps after its users leave would otherwise bend the line."""
    samples = [s for s in timeline if s.sessions is not None]
    if not samples:
        return []
    peak = max(s.sessions or 0 for s in samples)
    for i, s in enumerate(samples):
        if s.sessions == peak:
            j = i
            while j + 1 < len(samples) and samples[j + 1].sessions == peak:
                j += 1
            return samples[: j + 1]
    return samples


def pair_rss(samples: Sequence[Sample], server: Sequence[ServerSample]) -> list[tuple[int, float]]:
    """(sessions, RSS) pairs: each timeline sample with the server sample nearest in time."""
    memory = [s for s in server if s.rss_bytes is not None]
    pairs: list[tuple[int, float]] = []
    k = 0
    for s in samples:
        if s.sessions is None:
            continue
        while k + 1 < len(memory) and abs(memory[k + 1].t - s.t) <= abs(memory[k].t - s.t):
            k += 1
        if memory and abs(memory[k].t - s.t) <= PAIR_TOLERANCE:
            pairs.append((s.sessions, float(memory[k].rss_bytes or 0)))
    return pairs


def memory_per_session(run: Run) -> Conclusion:
    key, title = "memory", "Memory per session"

    def not_drawn(reason: str) -> Conclusion:
        return Conclusion(key, title, f"The memory per connected session cannot be drawn, as {reason}.", False)

    if not any(s.rss_bytes is not None for s in run.server):
        return not_drawn(run.server_note or "the server was not observed")
    window = fit_window(run.timeline)
    pairs = pair_rss(window, run.server)
    levels = len({sessions for sessions, _ in pairs})
    if len(pairs) < MIN_FIT_POINTS or levels < MIN_FIT_LEVELS:
        return not_drawn(
            f"the ramp to the peak has {len(pairs)} samples over {levels} distinct session counts, fewer than "
            f"the {MIN_FIT_POINTS} samples over {MIN_FIT_LEVELS} counts a line needs"
        )
    xs, ys = [float(x) for x, _ in pairs], [y for _, y in pairs]
    slope, intercept, r2 = linear_fit(xs, ys)
    peak = max(x for x, _ in pairs)
    values = {"bytes_per_session": slope, "intercept_bytes": intercept, "points": float(len(pairs)),
              "peak_sessions": peak}  # fmt: skip
    if r2 is None:
        text = (f"The memory of {run.server_name} did not change with the sessions open ({len(pairs)} samples from "
                f"{min(xs):.0f} to {peak:.0f} sessions, RSS {intercept / MIB:.1f} MiB throughout).")  # fmt: skip
        return Conclusion(key, title, text, True, values)
    values["r2"] = r2
    text = (
        f"The memory of {run.server_name} grows by {slope / 1024:.1f} KiB per connected session: RSS = "
        f"{intercept / MIB:.1f} MiB + {slope / 1024:.1f} KiB × sessions, R² {r2:.2f}, fitted to {len(pairs)} "
        f"samples from {min(xs):.0f} to {peak:.0f} sessions on the way to the first peak."
    )
    if r2 < LOOSE_FIT:
        text += (f" With R² under {LOOSE_FIT}, memory followed the sessions only loosely in this run: take the "
                 "figure as a rough one (a larger run gives a firmer line).")  # fmt: skip
    return Conclusion(key, title, text, True, values)


def failures_began(run: Run) -> Conclusion:
    key, title = "failures", "Where failures began"
    if not run.timeline:
        text = "Where failures began cannot be drawn, as the run has no timeline samples."
        return Conclusion(key, title, text, False)
    start = run.start if run.start is not None else run.timeline[0].t
    previous: dict[str, int] = {}
    for s in run.timeline:
        new = {n: v - previous.get(n, 0) for n, v in s.failures.items() if v > previous.get(n, 0)}
        if new:
            names = ", ".join(f"{n} {c}" for n, c in sorted(new.items(), key=lambda kv: (-kv[1], kv[0])))
            sessions = "" if s.sessions is None else f" and {s.sessions} sessions open"
            phase = f" in phase {s.phase}" if s.phase else ""
            values = {"t": s.t - start, "users": float(s.users), "failures": float(sum(new.values()))}
            if s.sessions is not None:
                values["sessions"] = float(s.sessions)
            text = (f"Requests began to fail {s.t - start:.0f} s into the run{phase}, with {s.users} users"
                    f"{sessions}: the first failures were {names}.")  # fmt: skip
            return Conclusion(key, title, text, True, values)
        previous = s.failures
    users = max(s.users for s in run.timeline)
    sessions = max((s.sessions for s in run.timeline if s.sessions is not None), default=None)
    load = f"{users} users" + ("" if sessions is None else f" and {sessions} sessions open")
    lost = run.timeline[-1].truth.get("lost", 0)
    text = f"No request failed: the server answered everything at up to {load}, so the failure point lies beyond."
    if lost:
        text += f" Yet {lost} message deliveries were lost."
    values = {"users": float(users)}
    if sessions is not None:
        values["sessions"] = float(sessions)
    return Conclusion(key, title, text, True, values)
