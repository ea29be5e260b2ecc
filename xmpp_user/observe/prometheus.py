"""The report's Prometheus source: the series of a run read from Prometheus's HTTP API.

A run whose server runs elsewhere (a Kubernetes run) has no server samples of its own; its report
reads the same series from Prometheus, where the generator's and the server's exporters publish them
under the names of ``xmpp_user.observe.names``. The span comes from ``PREFIX_phases.json``; the
model filled here is the one the run's own files fill (``xmpp_user.observe.model``), so the report is
drawn the same way:

- the timeline: ``query_range`` of the users, sessions, requests and failures by name, and the message
  truth counters, at ``step`` seconds; and the largest of the generator's event loop lag over each step
  (none from an exporter older than that gauge: the report then says it cannot tell);
- the server: ``irate`` of its CPU seconds (so the CPU % between its last two scrapes), its RSS, and the
  CPU seconds themselves (what the process had used before the run shows in the first point);
- the per-phase snapshots: instant queries at each phase's start and at the run's end of the counts
  by name and of the latency histogram's buckets, whose upper bounds stand in for the latencies.

Counters are taken relative to their value at the run's start, so a generator that ran before does not
count. ``fetch`` is the one function that talks HTTP; tests give recorded answers instead.
"""

from __future__ import annotations

import ipaddress
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from xmpp_user.observe import names
from xmpp_user.observe.model import (
    MissingData,
    NameStats,
    PhaseSpan,
    Run,
    Sample,
    ServerSample,
    Snapshot,
    load_phases,
)

Fetch = Callable[[str, Mapping[str, str]], Any]
"""(API path, query parameters) -> the ``data`` of a successful answer; raises PrometheusError."""

TRUTH_FAMILIES = {
    "sent": names.MESSAGES_SENT,
    "confirmed": names.MESSAGES_CONFIRMED,
    "unconfirmed": names.MESSAGES_UNCONFIRMED,
    "skipped": names.MESSAGES_SKIPPED,
    "expected": names.DELIVERIES_EXPECTED,
    "delivered": names.DELIVERIES,
    "in_flight": names.DELIVERIES_IN_FLIGHT,
    "lost": names.DELIVERIES_LOST,
    "unexpected": names.DELIVERIES_UNEXPECTED,
    "unverified": names.DELIVERIES_UNVERIFIED,
}
"""Truth counters of the model and the families that carry them (the last four are gauges)."""
MAX_POINTS = 10_000
"""Points per series at most (Prometheus refuses more than 11,000): a long run gets a coarser step."""
IRATE_WINDOW = 60
"""Seconds of the CPU ``irate`` window: it must hold two scrapes of the server's exporter."""
LAG_WINDOW = 2
"""Seconds over which each point of the generator's lag takes the largest value scraped: two scrapes at the 1 s
interval of dashboards/prometheus.yml, so that a scrape's jitter loses no point (each value already covers the
generator's last 3 s)."""
TIMEOUT = 30.0


class PrometheusError(RuntimeError):
    """Prometheus could not be read or refused a query: one line for the user."""


def http_fetch(base_url: str, timeout: float = TIMEOUT) -> Fetch:
    """A ``Fetch`` reading ``base_url``'s HTTP API (proxies bypassed for loopback addresses)."""
    base = base_url.rstrip("/")
    host = urlsplit(base).hostname or ""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if _loopback(host) else None
    open_url = opener.open if opener is not None else urllib.request.urlopen

    def fetch(path: str, params: Mapping[str, str]) -> Any:
        url = f"{base}{path}?{urlencode(params)}"
        try:
            with open_url(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:  # Prometheus explains a refused query in a JSON body
            body = exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusError(f"cannot reach Prometheus at {base}: {getattr(exc, 'reason', exc)}") from None
        return answer_data(body, params.get("query", path))

    return fetch


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def answer_data(body: bytes | str, query: str) -> Any:
    """The ``data`` of an API answer; PrometheusError for an error answer or something else entirely."""
    try:
        answer = json.loads(body)
    except ValueError:
        raise PrometheusError(f"Prometheus answered {query!r} with something other than JSON") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else None
        raise PrometheusError(f"Prometheus refused {query!r}: {error or 'no reason given'}")
    return answer.get("data")


def parse_matrix(data: Any) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    """A ``query_range`` answer: (labels, [(time, value)]) per series."""
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise PrometheusError(f"expected a matrix from query_range, got {_kind(data)}")
    return [
        (dict(r.get("metric") or {}), [(float(t), float(v)) for t, v in r.get("values") or []])
        for r in data.get("result") or []
    ]


def parse_vector(data: Any) -> list[tuple[dict[str, str], float]]:
    """An instant ``query`` answer: (labels, value) per series."""
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise PrometheusError(f"expected a vector from query, got {_kind(data)}")
    return [(dict(r.get("metric") or {}), float(r["value"][1])) for r in data.get("result") or []]


def _kind(data: Any) -> str:
    return repr(data.get("resultType")) if isinstance(data, dict) else type(data).__name__


class Queries:
    """Queries over one span at one step."""

    def __init__(self, fetch: Fetch, start: float, end: float, step: float) -> None:
        self.fetch, self.start, self.end = fetch, start, end
        self.step = max(step, (end - start) / MAX_POINTS)

    def range(self, query: str) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        params = {"query": query, "start": f"{self.start:.3f}", "end": f"{self.end:.3f}", "step": f"{self.step:g}"}
        return parse_matrix(self.fetch("/api/v1/query_range", params))

    def instant(self, query: str, t: float) -> list[tuple[dict[str, str], float]]:
        return parse_vector(self.fetch("/api/v1/query", {"query": query, "time": f"{t:.3f}"}))


def _truth_selector() -> str:
    pattern = json.dumps("|".join(TRUTH_FAMILIES.values()))
    return f"{{__name__=~{pattern}}}"


_FAMILY_KEYS = {family: key for key, family in TRUTH_FAMILIES.items()}


def load(url: str, prefix: str | Path, step: float = 1.0, fetch: Fetch | None = None) -> Run:
    """The run of ``PREFIX_phases.json`` as Prometheus at ``url`` saw it."""
    phases = load_phases(prefix)
    if not phases:
        raise MissingData(f"{prefix}_phases.json is missing or empty: the Prometheus source takes the run's span "
                          "from the phases a phased run writes with --csv")  # fmt: skip
    return build_run(fetch or http_fetch(url), phases, step, f"Prometheus at {url}")


def build_run(fetch: Fetch, phases: list[PhaseSpan], step: float, source: str) -> Run:
    start = min(p.start for p in phases)
    end = max(p.end if p.end is not None else p.start for p in phases)
    q = Queries(fetch, start, end, step)
    run = Run(phases=phases, source=source, latency_buckets=True)
    run.timeline = _timeline(q, phases)
    if not run.timeline:
        raise PrometheusError(
            f"Prometheus has no {names.USERS} between {start:.0f} and {end:.0f} (unix time): was the "
            "generator's exporter scraped during the run?"
        )
    run.server, instances = _server(q)
    if run.server:
        run.server_name = "the server" + (f" ({', '.join(sorted(instances))})" if instances else "")
    else:
        run.server_note = (f"Prometheus has no {names.SERVER_CPU} or {names.SERVER_RSS} during the run (was the "
                           "server's exporter scraped?)")  # fmt: skip
    # Each phase's figures are differences between two snapshots: counts from before the run cancel out.
    boundaries = [(p.start, p.name) for p in phases if not p.skipped] + [(end, None)]
    run.snapshots = [_snapshot(q, t, name) for t, name in boundaries]
    return run


def _by_time(series: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for _labels, points in series:
        for t, v in points:
            out[t] = out.get(t, 0.0) + v
    return out


def _by_label(
    series: list[tuple[dict[str, str], list[tuple[float, float]]]], label: str
) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for labels, points in series:
        values = out.setdefault(labels.get(label, ""), {})
        for t, v in points:
            values[t] = values.get(t, 0.0) + v
    return out


def _relative(values: dict[str, dict[float, float]]) -> dict[str, dict[float, float]]:
    """Counters as counted since the first point of the span."""
    out = {}
    for key, points in values.items():
        first = points[min(points)] if points else 0.0
        out[key] = {t: v - first for t, v in points.items()}
    return out


def _phase_at(phases: list[PhaseSpan], t: float) -> str | None:
    # Prometheus answers times in milliseconds: a point asked for at a phase's start may come back
    # a fraction of a millisecond before it.
    t += 0.001
    for p in phases:
        if not p.skipped and p.start <= t and (p.end is None or t < p.end):
            return p.name
    return None


def _timeline(q: Queries, phases: list[PhaseSpan]) -> list[Sample]:
    users = _by_time(q.range(f"sum({names.USERS})"))
    sessions = _by_time(q.range(f"sum({names.SESSIONS})"))
    requests = _relative(_by_label(q.range(f"sum by (name) ({names.REQUESTS})"), "name"))
    failures = _relative(_by_label(q.range(f"sum by (name) ({names.REQUEST_FAILURES})"), "name"))
    truth_series = _by_label(q.range(f"sum by (__name__) ({_truth_selector()})"), "__name__")
    truth = {_FAMILY_KEYS[f]: v for f, v in truth_series.items() if f in _FAMILY_KEYS}
    truth.update(_relative({k: v for k, v in truth.items() if TRUTH_FAMILIES[k].endswith("_total")}))
    window = max(LAG_WINDOW, math.ceil(q.step))
    lag = _by_time(q.range(f"max(max_over_time({names.EVENT_LOOP_LAG}[{window}s]))"))
    samples = []
    for t in sorted(users):
        samples.append(
            Sample(
                t=t,
                phase=_phase_at(phases, t),
                users=round(users[t]),
                sessions=round(sessions[t]) if t in sessions else None,
                requests={n: round(v[t]) for n, v in requests.items() if t in v},
                failures={n: round(v[t]) for n, v in failures.items() if t in v},
                truth={k: round(v[t]) for k, v in truth.items() if t in v},
                lag=lag.get(t),
            )
        )
    return samples


def _server(q: Queries) -> tuple[list[ServerSample], set[str]]:
    window = f"{max(IRATE_WINDOW, math.ceil(4 * q.step))}s"
    cpu_series = q.range(f"sum by (instance) (irate({names.SERVER_CPU}[{window}])) * 100")
    rss_series = q.range(f"sum by (instance) ({names.SERVER_RSS})")
    used_series = q.range(f"sum by (instance) ({names.SERVER_CPU})")
    instances = {labels["instance"] for labels, _ in cpu_series + rss_series if labels.get("instance")}
    cpu, rss, used = _by_time(cpu_series), _by_time(rss_series), _by_time(used_series)
    return [ServerSample(t, cpu.get(t), rss.get(t), used.get(t)) for t in sorted(cpu.keys() | rss.keys())], instances


def _snapshot(q: Queries, t: float, phase: str | None) -> Snapshot:
    """Counts by name, latency buckets and truth counters at ``t``."""
    stats: dict[str, NameStats] = {}
    for labels, v in q.instant(f"sum by (name) ({names.REQUESTS})", t):
        stats.setdefault(labels.get("name", ""), NameStats()).requests = round(v)
    for labels, v in q.instant(f"sum by (name) ({names.REQUEST_FAILURES})", t):
        stats.setdefault(labels.get("name", ""), NameStats()).failures = round(v)
    cumulative: dict[str, list[tuple[float, float]]] = {}
    for labels, v in q.instant(f"sum by (name, le) ({names.REQUEST_DURATION}_bucket)", t):
        cumulative.setdefault(labels.get("name", ""), []).append((_bound_ms(labels.get("le", "+Inf")), v))
    for name, buckets in cumulative.items():
        stats.setdefault(name, NameStats()).response_times = buckets_to_counts(buckets)
    truth = {}
    for labels, v in q.instant(f"sum by (__name__) ({_truth_selector()})", t):
        key = _FAMILY_KEYS.get(labels.get("__name__", ""))
        if key is not None:
            truth[key] = round(v)
    return Snapshot(t, phase, stats, truth)


def _bound_ms(le: str) -> float:
    value = float(le)  # "+Inf" included
    return value * 1000 if math.isfinite(value) else math.inf


def buckets_to_counts(buckets: list[tuple[float, float]]) -> dict[float, int]:
    """Cumulative histogram buckets (upper bound in ms, count at or below it) -> the count of each bucket alone."""
    out: dict[float, int] = {}
    below = 0.0
    for bound, cumulative in sorted(buckets):
        count = round(cumulative - below)
        if count > 0:
            out[bound] = count
        below = max(below, cumulative)
    return out
