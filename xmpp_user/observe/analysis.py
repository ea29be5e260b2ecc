"""The report's arithmetic: per-phase figures and the conclusions of the field reports, drawn from a run.

Pure functions over ``xmpp_user.observe.model.Run``: no I/O, no Locust, no matplotlib. The conclusions
are those the field drew by eye from its charts (``shared/seeds``), chosen by the scenario the phase
names tell (``scenario``):

- the livechat test (``batchN-join``, ``-talk``, ``-leave``: ``locustfiles/livechat.py``):
  - the vCard (avatar) emulation's share of the server's CPU while viewers join: batch 1 (everything)
    against batch 2 (no vCards);
  - the room archive's (MAM) share: batch 2 against batch 3 (no vCards, no MAM), as a share of batch 1's
    join CPU (the whole client, so that the two shares add up and compare) and, as the field gave it, of
    batch 2's;
  - message flooding: each talk's messages and deliveries per second, the server's CPU and its CPU per
    delivery; whether the talks of batches 2 and 3 match, as the field found, and if not, what in the run
    tells them apart (a backlog, leftovers of the join, a garbage collection) or that nothing does;
- the Jitsi test (``batchN``, then ``hold`` and ``leave``: ``locustfiles/jitsi.py``): the CPU each batch of
  participants cost the server and how long it kept it busy;
- every run: the server's memory per connected session (per participant in the Jitsi test): a straight
  line fitted to RSS against the sessions open, with its R², and whether the server was fresh (memory an
  earlier workload freed is reused before RSS grows, which makes the figure low); the load at which
  requests began to fail; whether the generator kept to its own schedule (its event loop's delay, phase by
  phase: what of the latencies measured may be its own).

Each conclusion is a sentence with its numbers, or, when it cannot be drawn from the run, a sentence
saying why. Its key and its ``values`` are stable, for scripts and benchmarks to read.
"""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_right
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
LINEAR_FIT = 0.9
"""An R² from this on says the memory grows linearly with the participants (the Jitsi test's question)."""
FRESH_CPU_SECONDS = 10.0
"""CPU-seconds a server may have used before the run and still count as fresh: a lab Prosody just started has
used about 0.2, a lab ejabberd about 3."""
QUIET_WINDOW = 2.0
"""Seconds over which the server's CPU is averaged to tell busy from idle, as the phases that settle do
(``xmpp_user.observe.timeline``)."""
QUIET_MARGIN = 10.0
"""Percentage points above its idle level within which the server counts as idle; its idle level is the lowest
mean it showed over any ``QUIET_WINDOW`` of the run."""
SAME_COST = 0.10
"""Two talks whose CPU per delivery differ by at most this (the higher over the lower) match."""
WAIT_NOTED = 1.0
"""Seconds a phase must have waited for the server to count as a backlog: the shape ticks once a second, so a
phase ends up to a second after the run went quiet."""
RSS_FALL = 0.05
"""A fall of the server's RSS by more than this share of its peak within a phase: a garbage collection."""
GENERATOR_BEHIND = 0.5
"""Seconds of delay of the generator's event loop from which it counts as behind its schedule: the limit at which
the run said so (``xmpp_user.run.lag.LIMIT``, which this module, free of Locust, does not import)."""
MESSAGE = "message"
"""The request name of a groupchat message sent (and confirmed by its reflection)."""
VCARD_REQUESTS = ("vcard", "vcard_occupant")
MAM_REQUESTS = ("mam",)
MIB = 2**20
LIVECHAT, JITSI, GENERIC = "livechat", "jitsi", "generic"
"""The scenarios ``scenario`` tells apart."""
_LIVECHAT_PHASE = re.compile(r"batch(\d+)-(join|talk|leave)")
_JITSI_BATCH = re.compile(r"batch(\d+)")
_JITSI_AFTER = ("hold", "leave")


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


class CpuWindows:
    """The server's mean CPU % over windows of ``seconds``: ``mean(a)`` averages the samples taken in
    (a, a + seconds], each of which covers the time since the one before."""

    def __init__(self, server: Sequence[ServerSample], seconds: float = QUIET_WINDOW) -> None:
        samples = [(s.t, s.cpu_percent) for s in server if s.cpu_percent is not None]
        self.seconds = seconds
        self.times = [t for t, _ in samples]
        self._sums = list(itertools.accumulate((c for _, c in samples), initial=0.0))
        means = [m for t in self.times if (m := self.mean(t)) is not None]
        self.idle: float | None = min(means) if means else None
        """The lowest mean over any window of the run: the server's idle level."""

    def mean(self, start: float) -> float | None:
        """The mean over (start, start + seconds]; None unless the samples reach the window's end."""
        end = start + self.seconds
        if not self.times or self.times[-1] < end - 1e-6:
            return None
        i, j = bisect_right(self.times, start), bisect_right(self.times, end + 1e-6)
        return (self._sums[j] - self._sums[i]) / (j - i) if j > i else None

    def busy_for(self, start: float, end: float) -> float | None:
        """Seconds from ``start`` until the first window within (start, end] whose mean is back within
        ``QUIET_MARGIN`` of the idle level; None if there is none (busy all along)."""
        if self.idle is None:
            return None
        starts = [start] + self.times[bisect_right(self.times, start) :]
        for a in starts:
            if a + self.seconds > end + 1e-6:
                break
            m = self.mean(a)
            if m is not None and m <= self.idle + QUIET_MARGIN:
                return a - start
        return None


def rss_fall(server: Sequence[ServerSample], start: float, end: float) -> tuple[float, float, float]:
    """The deepest fall of the server's RSS within [start, end]: (share of the peak before it, that peak,
    the low); (0, 0, 0) without samples."""
    deepest, peak, found = 0.0, 0.0, (0.0, 0.0, 0.0)
    for s in server:
        if s.rss_bytes is None or not start <= s.t <= end:
            continue
        peak = max(peak, s.rss_bytes)
        if peak > 0 and (fall := (peak - s.rss_bytes) / peak) > deepest:
            deepest, found = fall, (fall, peak, s.rss_bytes)
    return found


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
    deliveries: int | None = None
    """First live deliveries to our receivers during the phase."""
    lost: int | None = None
    """Deliveries judged lost during the phase (a receiver's are judged once it has left)."""
    in_flight: int | None = None
    """Deliveries due and not delivered yet at the phase's end, to receivers not judged yet."""
    waited: float | None = None
    """Seconds the phase went on after its planned duration, waiting for the server to go quiet."""
    settled: str | None = None
    """'quiet', or what was still going on when the phase gave up waiting."""
    generator_lag: float | None = None
    """The largest delay of the generator's event loop in the samples of the phase, in seconds."""
    latency: dict[str, Latency] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def message_rate(self) -> float | None:
        if self.messages is None or self.seconds <= 0:
            return None
        return self.messages / self.seconds

    @property
    def delivery_rate(self) -> float | None:
        if self.deliveries is None or self.seconds <= 0:
            return None
        return self.deliveries / self.seconds

    @property
    def gave_up(self) -> bool:
        """The phase stopped waiting for the server before it went quiet."""
        return self.settled not in (None, "quiet")


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
                       skipped=phase.skipped, waited=phase.waited, settled=phase.settled)  # fmt: skip
        cpu = [s.cpu_percent for s in run.server if phase.start < s.t <= stop and s.cpu_percent is not None]
        rss = [s.rss_bytes for s in run.server if phase.start <= s.t <= stop and s.rss_bytes is not None]
        row.server_samples = len(cpu)
        if cpu:
            row.cpu_mean, row.cpu_max = _mean(cpu), max(cpu)
            row.cpu_seconds = cpu_seconds(run.server, phase.start, stop)
        if rss:
            row.rss_mean, row.rss_max = _mean(rss), max(rss)
        lags = [s.lag for s in run.timeline if phase.start < s.t <= stop and s.lag is not None]
        if lags:
            row.generator_lag = max(lags)
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
    if "delivered" in end.truth:
        row.deliveries = max(0, end.truth["delivered"] - begin.truth.get("delivered", 0))
    if "lost" in end.truth:
        row.lost = max(0, end.truth["lost"] - begin.truth.get("lost", 0))
    if "in_flight" in end.truth:
        row.in_flight = end.truth["in_flight"]


# ---- conclusions ------------------------------------------------------------------------------------


@dataclass
class Conclusion:
    key: str
    title: str
    text: str
    drawn: bool
    """False when the run could not support it; ``text`` then says why."""
    values: dict[str, float] = field(default_factory=dict)


def scenario(run: Run) -> str:
    """Which test the run was, from its phase names: ``LIVECHAT`` (``batchN-join``, ``-talk``, ``-leave``),
    ``JITSI`` (``batchN`` phases, then ``hold`` and ``leave``), or ``GENERIC``."""
    names = [p.name for p in run.phases]
    if any(_LIVECHAT_PHASE.fullmatch(name) for name in names):
        return LIVECHAT
    batches = [name for name in names if _JITSI_BATCH.fullmatch(name)]
    # A Jitsi run stopped during its batches has no hold or leave yet: its batches still tell it.
    if batches and all(name in _JITSI_AFTER or _JITSI_BATCH.fullmatch(name) for name in names):
        return JITSI
    return GENERIC


def conclusions(run: Run, rows: list[PhaseRow] | None = None) -> list[Conclusion]:
    """The conclusions of the run's scenario (``scenario``), in reading order."""
    rows = phase_rows(run) if rows is None else rows
    kind = scenario(run)
    if kind == LIVECHAT:
        vcards = feature_share(run, rows, "vcards", "vCard CPU share", "The vCard (avatar) emulation",
                               VCARD_REQUESTS, 1, 2)  # fmt: skip
        mam = feature_share(run, rows, "mam", "MAM CPU share", "Reading the room archive (MAM) on joining",
                            MAM_REQUESTS, 2, 3, of_batch=1)  # fmt: skip
        return [vcards, mam, flooding(run, rows), memory_per_session(run), failures_began(run),
                generator_delay(run, rows)]  # fmt: skip
    if kind == JITSI:
        return [
            memory_per_session(run, per="participant"),
            batch_cpu(run, rows),
            failures_began(run, users="participants"),
            generator_delay(run, rows),
        ]
    return [memory_per_session(run), failures_began(run), generator_delay(run, rows)]


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


def _us_per_delivery(row: PhaseRow) -> float:
    return (row.cpu_seconds or 0.0) / (row.deliveries or 1) * 1e6


def flooding(run: Run, rows: list[PhaseRow]) -> Conclusion:
    """The server's CPU while the viewers talk (the field's "message flooding"): for each ``batchN-talk``, the
    messages and deliveries per second, the server's mean and peak CPU, its CPU-seconds and its CPU per
    delivery; then whether the talks of batches 2 and 3 match (within ``SAME_COST``), as the field found, and
    if they do not, what in the run tells them apart (``_talk_differences``)."""
    key, title = "flooding", "Message flooding"

    def not_drawn(reason: str) -> Conclusion:
        return Conclusion(key, title, f"The server's CPU per delivered message cannot be drawn, as {reason}.", False)

    talks = [r for r in rows if not r.skipped and (m := _LIVECHAT_PHASE.fullmatch(r.name)) and m[2] == "talk"]
    if not talks:
        return not_drawn("the run has no batchN-talk phase")
    if not run.server:
        return not_drawn(run.server_note or "the server was not observed")
    measured: list[PhaseRow] = []
    why_not: dict[str, str] = {}
    for r in talks:
        if r.server_samples < MIN_PHASE_SAMPLES:
            why_not[r.name] = f"{r.name} has {r.server_samples} server samples, fewer than {MIN_PHASE_SAMPLES}"
        elif r.deliveries is None:
            why_not[r.name] = f"the run has no message truth for {r.name}"
        elif r.deliveries == 0:
            why_not[r.name] = f"nothing was delivered during {r.name}"
        else:
            measured.append(r)
    if not measured:
        return not_drawn("; ".join(why_not.values()))
    values: dict[str, float] = {}
    parts = []
    for r in measured:
        cost = _us_per_delivery(r)
        figures = {"messages_per_second": r.message_rate or 0.0, "deliveries_per_second": r.delivery_rate or 0.0,
                   "cpu_mean": r.cpu_mean or 0.0, "cpu_max": r.cpu_max or 0.0, "cpu_seconds": r.cpu_seconds or 0.0,
                   "cpu_us_per_delivery": cost}  # fmt: skip
        values.update({f"{r.name}.{k}": v for k, v in figures.items()})
        parts.append(
            f"{cost:,.0f} µs{' of CPU per delivered message' if not parts else ''} in {r.name} "
            f"({r.message_rate or 0:.1f} messages/s sent, {r.delivery_rate or 0:,.0f} deliveries/s over "
            f"{r.seconds:.1f} s; CPU mean {r.cpu_mean:.0f} %, peak {r.cpu_max:.0f} %, {r.cpu_seconds or 0:.2f} "
            "CPU-seconds)"
        )
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    text = f"While the viewers talked, {run.server_name} spent {listed}."
    for name, reason in why_not.items():
        text += f" {name} cannot be measured, as {reason}."
    text += " " + _compare_talks(run, rows, measured, why_not, values)
    return Conclusion(key, title, text, True, values)


def _compare_talks(run: Run, rows: list[PhaseRow], measured: list[PhaseRow], why_not: Mapping[str, str],
                   values: dict[str, float]) -> str:  # fmt: skip
    """Whether the talks of batches 2 and 3 match, in a sentence; their difference into ``values``."""
    by_name = {r.name: r for r in measured}
    pair = [by_name.get(f"batch{b}-talk") for b in (2, 3)]
    if pair[0] is None or pair[1] is None:
        missing = "batch2-talk" if pair[0] is None else "batch3-talk"
        batches = sum(1 for r in rows if (m := _LIVECHAT_PHASE.fullmatch(r.name)) and m[2] == "join")
        reason = why_not.get(missing) or (f"the run had {batches} batch{'es' if batches != 1 else ''} only "
                                          "(run the livechat test with --batches 3)")  # fmt: skip
        return f"Whether the talks of batch 2 and batch 3 match cannot be drawn, as {reason}."
    a, b = pair
    cost_a, cost_b = _us_per_delivery(a), _us_per_delivery(b)
    (cheaper, low), (dearer, high) = sorted([(a, cost_a), (b, cost_b)], key=lambda pc: pc[1])
    if low <= 0:
        # A talk the server did not measurably work for: no ratio to give.
        return (f"Whether the talks of batch 2 and batch 3 match cannot be drawn, as {run.server_name} used no "
                f"measurable CPU during {cheaper.name}.")  # fmt: skip
    difference = high / low - 1
    values["difference"] = difference
    values["match"] = float(difference <= SAME_COST)
    if difference <= SAME_COST:
        return (f"The talks of batch 2 and batch 3 match, as the field test found: {cost_a:,.0f} and {cost_b:,.0f} µs "
                f"per delivery, {difference:.0%} apart (within {SAME_COST:.0%}).")  # fmt: skip
    text = (f"The talks of batch 2 and batch 3 differ: {dearer.name} cost {difference:.0%} more CPU per delivery "
            f"than {cheaper.name} ({high:,.0f} against {low:,.0f} µs); ")  # fmt: skip
    return text + _talk_differences(run, a, b) + "."


def _talk_differences(run: Run, a: PhaseRow, b: PhaseRow) -> str:
    """What in the run tells two talks apart, from evidence only: a backlog (the talk waited for the server, or
    began with deliveries in flight), leftovers (the server's CPU above its idle level just before the talk,
    or more sessions open than users) or a garbage collection (RSS fell by more than ``RSS_FALL`` in one talk
    and not the other). Says so when nothing does."""
    windows = CpuWindows(run.server)
    idle = windows.idle
    begins = {phase.name: begin for phase, begin, _ in phase_windows(run)}
    found: list[str] = []
    before_known = True
    for talk in (a, b):
        if talk.waited is not None and talk.waited >= WAIT_NOTED:
            gave_up = f", and gave up ({talk.settled})" if talk.gave_up else ""
            found.append(f"{talk.name} waited {talk.waited:.1f} s for the server after its planned end{gave_up} "
                         "(a backlog)")  # fmt: skip
        begin = begins.get(talk.name)
        in_flight = begin.truth.get("in_flight", 0) if begin is not None else 0
        if in_flight > 0:
            found.append(f"{talk.name} began with {in_flight:,} deliveries in flight (a backlog)")
    for talk in (a, b):
        before = windows.mean(talk.start - QUIET_WINDOW)
        if before is None or idle is None:
            before_known = False
        elif before > idle + QUIET_MARGIN:
            found.append(f"{run.server_name} was at {before:.0f} % CPU in the {QUIET_WINDOW:g} s before {talk.name} "
                         f"began, above its idle level of {idle:.0f} % (leftovers)")  # fmt: skip
        if talk.connected_max is not None and talk.connected_max > talk.users:
            found.append(f"up to {talk.connected_max} sessions were open during {talk.name} for {talk.users} users "
                         "(leftovers)")  # fmt: skip
    falls = {t.name: rss_fall(run.server, t.start, t.end) for t in (a, b)}
    collected = [name for name, (fall, _, _) in falls.items() if fall > RSS_FALL]
    if len(collected) == 1:
        name = collected[0]
        other = b.name if name == a.name else a.name
        fall, peak, low = falls[name]
        found.append(f"{run.server_name}'s RSS fell by {fall:.0%} during {name} (from {peak / MIB:.1f} to "
                     f"{low / MIB:.1f} MiB) and not during {other} (a garbage collection)")  # fmt: skip
    if found:
        return "in the run, " + "; ".join(found)
    before = (f"the server was back near its idle level ({idle:.0f} %) before both" if before_known and idle is not None
              else "the server's CPU before them is not known")  # fmt: skip
    rss = (f"its RSS fell by more than {RSS_FALL:.0%} during both" if collected
           else f"its RSS fell by no more than {RSS_FALL:.0%} during either")  # fmt: skip
    return (f"nothing in the run explains it: neither waited for the server or began with deliveries in flight, "
            f"{before}, no more sessions were open than users, and {rss}")  # fmt: skip


def batch_cpu(run: Run, rows: list[PhaseRow]) -> Conclusion:
    """The Jitsi test's batches: the CPU-seconds each cost the server and how long each kept it busy, from the
    batch's start until the server's CPU, averaged over ``QUIET_WINDOW``, first came back within
    ``QUIET_MARGIN`` of its idle level (``CpuWindows.busy_for``)."""
    key, title = "batch_cpu", "CPU per batch"

    def not_drawn(reason: str) -> Conclusion:
        return Conclusion(key, title, f"The CPU per batch of participants cannot be drawn, as {reason}.", False)

    batches = [r for r in rows if not r.skipped and _JITSI_BATCH.fullmatch(r.name)]
    if not batches:
        return not_drawn("the run has no batchN phase")
    if not run.server:
        return not_drawn(run.server_note or "the server was not observed")
    windows = CpuWindows(run.server)
    if windows.idle is None:
        return not_drawn(f"the server samples cover no {QUIET_WINDOW:g} s window, so its idle level is not known")
    idle = windows.idle
    measured = [r for r in batches if r.server_samples >= MIN_PHASE_SAMPLES]
    if not measured:
        return not_drawn(f"{batches[0].name} has {batches[0].server_samples} server samples, fewer than "
                         f"{MIN_PHASE_SAMPLES}")  # fmt: skip
    values: dict[str, float] = {"idle_percent": idle}
    parts, busy, cpu = [], [], []
    for r in measured:
        held = windows.busy_for(r.start, r.end)
        busy.append(held)
        cpu.append(r.cpu_seconds or 0.0)
        values.update({f"{r.name}.cpu_seconds": cpu[-1], f"{r.name}.busy_seconds": r.seconds if held is None else held,
                       f"{r.name}.busy_through": float(held is None)})  # fmt: skip
        kept = f"busy through the whole phase ({r.seconds:.1f} s)" if held is None else f"busy {held:.1f} s"
        parts.append(f"{r.name} (to {r.users} participants) {cpu[-1]:.2f} CPU-seconds, {kept}")
    finite = [b for b in busy if b is not None]
    if not finite:
        held_for = "through every batch phase"
    else:
        values.update(busy_seconds_min=min(finite), busy_seconds_max=max(finite))
        lower, upper = f"{min(finite):.1f} s", "the whole phase" if len(finite) < len(busy) else f"{max(finite):.1f} s"
        held_for = f"for {lower}" if upper == lower else f"for {lower} to {upper}"
    values.update(cpu_seconds_min=min(cpu), cpu_seconds_max=max(cpu), batches=float(len(measured)))
    spent = f"{min(cpu):.2f}" if f"{min(cpu):.2f}" == f"{max(cpu):.2f}" else f"{min(cpu):.2f} to {max(cpu):.2f}"
    text = (f"Each batch of participants cost {run.server_name} {spent} CPU-seconds and kept it busy {held_for} from "
            f"the batch's start (busy: its CPU, averaged over {QUIET_WINDOW:g} s, more than {QUIET_MARGIN:g} points "
            f"above its idle level of {idle:.0f} %): {'; '.join(parts)}.")  # fmt: skip
    return Conclusion(key, title, text, True, values)


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


def memory_per_session(run: Run, per: str = "session") -> Conclusion:
    """RSS against the sessions open on the way to the first peak, as a straight line; ``per="participant"``
    words it for the Jitsi test, which asks whether the memory grows linearly (R² from ``LINEAR_FIT``). Either
    way the sentence ends by saying so when the server was not fresh (``freshness``)."""
    key, title = "memory", f"Memory per {per}"
    fresh_text, fresh_values = freshness(run, per)

    def not_drawn(reason: str) -> Conclusion:
        text = f"The memory per connected {per} cannot be drawn, as {reason}.{fresh_text}"
        return Conclusion(key, title, text, False, fresh_values)

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
              "peak_sessions": peak, **fresh_values}  # fmt: skip
    if per != "session":
        values[f"bytes_per_{per}"] = slope
    if r2 is None:
        connected = "sessions open" if per == "session" else f"{per}s connected"
        text = (f"The memory of {run.server_name} did not change with the {connected} ({len(pairs)} samples from "
                f"{min(xs):.0f} to {peak:.0f} {per}s, RSS {intercept / MIB:.1f} MiB throughout).")  # fmt: skip
        return Conclusion(key, title, text + fresh_text, True, values)
    values["r2"] = r2
    line = (f"RSS = {intercept / MIB:.1f} MiB + {slope / 1024:.1f} KiB × {per}s, R² {r2:.2f}, fitted to {len(pairs)} "
            f"samples from {min(xs):.0f} to {peak:.0f} {per}s on the way to the first peak")  # fmt: skip
    if per == "session":
        text = f"The memory of {run.server_name} grows by {slope / 1024:.1f} KiB per connected session: {line}."
    else:
        linear = r2 >= LINEAR_FIT
        values["linear"] = float(linear)
        if linear:
            text = (f"The memory of {run.server_name} grows linearly with the {per}s, by {slope / 1024:.1f} KiB per "
                    f"{per}: {line}.")  # fmt: skip
        else:
            text = (f"The memory of {run.server_name} grows by {slope / 1024:.1f} KiB per {per}, but not linearly in "
                    f"this run (R² under {LINEAR_FIT}): {line}.")  # fmt: skip
    if r2 < LOOSE_FIT:
        text += (f" With R² under {LOOSE_FIT}, memory followed the {per}s only loosely in this run: take the "
                 "figure as a rough one (a larger run gives a firmer line).")  # fmt: skip
    return Conclusion(key, title, text + fresh_text, True, values)


def freshness(run: Run, per: str = "session") -> tuple[str, dict[str, float]]:
    """Whether the server had worked before the run (more than ``FRESH_CPU_SECONDS`` of CPU by the first sample):
    a sentence to add when it had (empty when fresh or not known), and the figures."""
    first = next((s for s in run.server if s.cpu_seconds is not None), None)
    if first is None or first.cpu_seconds is None:
        return "", {}
    used = first.cpu_seconds
    rss = next((s.rss_bytes for s in run.server if s.rss_bytes is not None), None)
    values = {"cpu_seconds_before": used, "fresh": float(used <= FRESH_CPU_SECONDS)}
    if rss is not None:
        values["rss_at_start_bytes"] = rss
    if used <= FRESH_CPU_SECONDS:
        return "", values
    at_start = f" and its RSS was {rss / MIB:.1f} MiB at the start" if rss is not None else ""
    name = run.server_name[:1].upper() + run.server_name[1:]  # "the server (...)" begins the sentence
    text = (f" {name} was not fresh: it had used {used:,.1f} CPU-seconds before the run{at_start}; memory "
            f"freed by that earlier work is reused before RSS grows, so the figure per {per} is low. Start the "
            "server afresh before measuring it (the lab: locust-xmpp lab down; locust-xmpp lab up).")  # fmt: skip
    return text, values


def failures_began(run: Run, users: str = "users") -> Conclusion:
    """The first timeline sample with new failures: when, in which phase, at what load (``users`` names the
    users: "participants" in the Jitsi test). Without any, the load reached, and the deliveries judged lost."""
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
            text = (f"Requests began to fail {s.t - start:.0f} s into the run{phase}, with {s.users} {users}"
                    f"{sessions}: the first failures were {names}.")  # fmt: skip
            return Conclusion(key, title, text, True, values)
        previous = s.failures
    most = max(s.users for s in run.timeline)
    sessions = max((s.sessions for s in run.timeline if s.sessions is not None), default=None)
    load = f"{most} {users}" + ("" if sessions is None else f" and {sessions} sessions open")
    # Only what was judged lost: deliveries still in flight at the last sample were not judged (yet).
    last = run.timeline[-1].truth
    lost, in_flight = last.get("lost", 0), last.get("in_flight", 0)
    text = f"No request failed: the server answered everything at up to {load}, so the failure point lies beyond."
    if lost:
        text += f" Yet {lost} message deliveries were lost."
    if in_flight:
        text += (f" {in_flight} more were still in flight at the last sample, neither delivered nor judged "
                 "lost.")  # fmt: skip
    values = {"users": float(most), "lost": float(lost), "in_flight": float(in_flight)}
    if sessions is not None:
        values["sessions"] = float(sessions)
    return Conclusion(key, title, text, True, values)


def generator_delay(run: Run, rows: list[PhaseRow]) -> Conclusion:
    """Whether the generator kept to its own schedule: the largest delay of its event loop, and the phases in which
    it passed ``GENERATOR_BEHIND``, whose latencies then include the generator's own delay."""
    key, title = "generator", "The generator's own delay"
    lags = [s.lag for s in run.timeline if s.lag is not None]
    if not lags:
        text = ("The generator's own delay cannot be drawn, as the run recorded none (files of a run made before "
                "it was measured, or an exporter that did not publish it).")  # fmt: skip
        return Conclusion(key, title, text, False)
    largest = max(lags)
    behind = [r for r in rows if r.generator_lag is not None and r.generator_lag > GENERATOR_BEHIND]
    values = {"largest": largest, "phases_behind": float(len(behind))}
    if largest <= GENERATOR_BEHIND:
        text = (f"The generator kept to its schedule: its event loop was never more than {largest:.2f} s late, so "
                "no latency measured includes more of its own delay than that.")  # fmt: skip
        return Conclusion(key, title, text, True, values)
    where = ", ".join(f"{r.name} ({r.generator_lag:.1f} s)" for r in behind) or "between phases"
    text = (f"The generator ran behind its schedule: its event loop was up to {largest:.1f} s late, in {where}. "
            "The latencies measured there include up to that much of its own delay, not the server's; more "
            "workers, or fewer users per worker, remove it.")  # fmt: skip
    return Conclusion(key, title, text, True, values)
