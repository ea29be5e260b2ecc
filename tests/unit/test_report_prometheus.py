"""The Prometheus source's query and parse layer on answers shaped as Prometheus's HTTP API gives them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from xmpp_user.observe import names
from xmpp_user.observe.analysis import conclusions, phase_rows
from xmpp_user.observe.model import MissingData, PhaseSpan
from xmpp_user.observe.prometheus import (
    MAX_POINTS,
    PrometheusError,
    answer_data,
    buckets_to_counts,
    build_run,
    load,
    parse_matrix,
    parse_vector,
)

T0 = 1_800_000_000.0
PHASES = [PhaseSpan("join", T0, T0 + 3, users=2), PhaseSpan("talk", T0 + 3, T0 + 5, users=2)]


def matrix(*series: tuple[dict[str, str], list[float]], start: float = T0) -> dict[str, Any]:
    """A query_range answer's data: one value a second from ``start`` per series."""
    return {
        "resultType": "matrix",
        "result": [
            {"metric": labels, "values": [[start + i, str(v)] for i, v in enumerate(values)]}
            for labels, values in series
        ],
    }


def vector(*series: tuple[dict[str, str], float], t: float = T0) -> dict[str, Any]:
    return {"resultType": "vector", "result": [{"metric": labels, "value": [t, str(v)]} for labels, v in series]}


class Recorded:
    """A ``Fetch`` answering from recorded data: range answers by query, instant ones by (query, time)."""

    def __init__(self, ranges: Mapping[str, Any], instants: Mapping[tuple[str, float], Any]) -> None:
        self.ranges, self.instants = ranges, instants
        self.asked: list[tuple[str, dict[str, str]]] = []

    def __call__(self, path: str, params: Mapping[str, str]) -> Any:
        self.asked.append((path, dict(params)))
        query = params["query"]
        if path == "/api/v1/query_range":
            return self.ranges.get(query, {"resultType": "matrix", "result": []})
        return self.instants.get((query, float(params["time"])), {"resultType": "vector", "result": []})


TRUTH = (
    'sum by (__name__) ({__name__=~"locust_xmpp_messages_sent_total|locust_xmpp_messages_confirmed_total|'
    "locust_xmpp_messages_unconfirmed_total|locust_xmpp_messages_skipped_total|"
    "locust_xmpp_deliveries_expected_total|locust_xmpp_deliveries_total|locust_xmpp_deliveries_in_flight|"
    "locust_xmpp_deliveries_lost|"
    'locust_xmpp_deliveries_unexpected|locust_xmpp_deliveries_unverified"})'
)
REQUESTS = f"sum by (name) ({names.REQUESTS})"
FAILURES = f"sum by (name) ({names.REQUEST_FAILURES})"
BUCKETS = f"sum by (name, le) ({names.REQUEST_DURATION}_bucket)"
CPU = f"sum by (instance) (irate({names.SERVER_CPU}[60s])) * 100"
RSS = f"sum by (instance) ({names.SERVER_RSS})"
CPU_USED = f"sum by (instance) ({names.SERVER_CPU})"
LAG = f"max(max_over_time({names.EVENT_LOOP_LAG}[2s]))"


def recorded(server: bool = True) -> Recorded:
    ranges = {
        f"sum({names.USERS})": matrix(({}, [0, 1, 2, 2, 2, 2])),
        f"sum({names.SESSIONS})": matrix(({}, [0, 1, 2, 2, 2, 2])),
        # A generator that had run before: counters start above zero.
        REQUESTS: matrix(({"name": "connect"}, [7, 8, 9, 9, 9, 9]), ({"name": "message"}, [50, 50, 50, 50, 55, 60])),
        FAILURES: matrix(({"name": "connect"}, [1, 1, 1, 2, 2, 2])),
        # The generator fell 0.8 s behind in the talk (a point missing: no scrape in that step).
        LAG: matrix(({}, [0.01, 0.02, 0.01, 0.02, 0.8])),
        TRUTH: matrix(
            ({"__name__": names.MESSAGES_SENT}, [50, 50, 50, 50, 55, 60]),
            ({"__name__": names.DELIVERIES_IN_FLIGHT}, [0, 0, 0, 0, 9, 2]),
            ({"__name__": names.DELIVERIES_LOST}, [3, 3, 3, 3, 3, 3]),
        ),
    }
    if server:
        ranges[CPU] = matrix(({"instance": "prosody-0:9100"}, [5, 40, 60, 20, 20, 20]))
        ranges[RSS] = matrix(({"instance": "prosody-0:9100"}, [10e6, 11e6, 12e6, 12e6, 12e6, 12e6]))
        # The process counter itself: 300 CPU-seconds used before the run (not a fresh server).
        ranges[CPU_USED] = matrix(({"instance": "prosody-0:9100"}, [300.0, 300.4, 301.0, 301.2, 301.4, 301.6]))
    instants: dict[tuple[str, float], Any] = {}
    for t, messages, fast in ((T0, 50, 40), (T0 + 3, 50, 40), (T0 + 5, 60, 48)):
        instants[(REQUESTS, t)] = vector(({"name": "message"}, messages), t=t)
        instants[(FAILURES, t)] = vector(({"name": "connect"}, 1 if t == T0 else 2), t=t)
        instants[(BUCKETS, t)] = vector(
            ({"name": "message", "le": "0.005"}, fast), ({"name": "message", "le": "0.1"}, messages - 1),
            ({"name": "message", "le": "+Inf"}, messages), t=t,
        )  # fmt: skip
        lost, in_flight = 3 if t < T0 + 5 else 4, 9 if t == T0 + 3 else 2
        instants[(TRUTH, t)] = vector(({"__name__": names.DELIVERIES_LOST}, lost),
                                      ({"__name__": names.DELIVERIES_IN_FLIGHT}, in_flight), t=t)  # fmt: skip
    return Recorded(ranges, instants)


def test_answer_data_and_its_errors() -> None:
    assert answer_data(json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}), "up") == {
        "resultType": "vector", "result": [],
    }  # fmt: skip
    refused = {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unclosed left parenthesis"}
    with pytest.raises(PrometheusError, match=r"^Prometheus refused 'sum\(': 1:5: parse error"):
        answer_data(json.dumps(refused), "sum(")
    with pytest.raises(PrometheusError, match="something other than JSON"):
        answer_data(b"<html>login</html>", "up")
    with pytest.raises(PrometheusError, match="no reason given"):
        answer_data(b"[]", "up")


def test_parse_matrix_and_vector() -> None:
    assert parse_matrix(matrix(({"name": "x"}, [1, 2.5]))) == [({"name": "x"}, [(T0, 1.0), (T0 + 1, 2.5)])]
    assert parse_vector(vector(({}, 4), t=T0)) == [({}, 4.0)]
    with pytest.raises(PrometheusError, match="expected a matrix from query_range, got 'vector'"):
        parse_matrix(vector(({}, 1)))
    with pytest.raises(PrometheusError, match="expected a vector from query, got 'scalar'"):
        parse_vector({"resultType": "scalar", "result": [T0, "1"]})


def test_buckets_become_the_count_of_each_bucket_alone() -> None:
    assert buckets_to_counts([(math.inf, 10.0), (5.0, 4.0), (100.0, 9.0)]) == {5.0: 4, 100.0: 5, math.inf: 1}
    assert buckets_to_counts([(5.0, 0.0), (math.inf, 0.0)]) == {}


def test_build_run_fills_the_model() -> None:
    fetch = recorded()
    run = build_run(fetch, PHASES, 1.0, "Prometheus at http://prom:9090")
    assert [(s.t - T0, s.phase, s.users, s.sessions) for s in run.timeline] == [
        (0, "join", 0, 0), (1, "join", 1, 1), (2, "join", 2, 2), (3, "talk", 2, 2), (4, "talk", 2, 2), (5, None, 2, 2),
    ]  # fmt: skip
    # Counters count from the span's start; gauges stay as they are.
    assert [s.requests["message"] for s in run.timeline] == [0, 0, 0, 0, 5, 10]
    assert [s.failures["connect"] for s in run.timeline] == [0, 0, 0, 1, 1, 1]
    # The in-flight gauge as it is (not counted from the start, like the other gauges), apart from lost.
    assert run.timeline[-1].truth == {"sent": 10, "in_flight": 2, "lost": 3}
    assert [(s.cpu_percent, s.rss_bytes, s.cpu_seconds) for s in run.server][:2] == [(5.0, 10e6, 300.0),
                                                                                    (40.0, 11e6, 300.4)]  # fmt: skip
    assert run.server_name == "the server (prosody-0:9100)" and run.latency_buckets
    assert [(s.t - T0, s.phase) for s in run.snapshots] == [(0, "join"), (3, "talk"), (5, None)]
    join, talk = phase_rows(run)
    assert (join.messages, join.failures, join.lost, join.in_flight) == (0, 1, 0, 9)
    assert (talk.messages, talk.failures, talk.lost, talk.in_flight, talk.message_rate) == (10, 0, 1, 2, 5.0)
    assert (talk.latency["message"].p50, talk.latency["message"].p95) == (5.0, 100.0)
    assert talk.cpu_mean == pytest.approx(20.0) and join.cpu_max == 60.0
    # Each point is the largest delay of the step before it: the one at the talk's start is the join's.
    assert [s.lag for s in run.timeline] == [0.01, 0.02, 0.01, 0.02, 0.8, None]
    assert (join.generator_lag, talk.generator_lag) == (0.02, 0.8)
    generator = next(c for c in conclusions(run) if c.key == "generator")
    assert generator.text.startswith("The generator ran behind its schedule: its event loop was up to 0.8 s late, "
                                     "in talk (0.8 s).")  # fmt: skip
    memory = next(c for c in conclusions(run) if c.key == "memory")
    assert " The server (prosody-0:9100) was not fresh: it had used 300.0 CPU-seconds before the run" in memory.text
    ranges = [p for path, p in fetch.asked if path == "/api/v1/query_range"]
    assert {(p["start"], p["end"], p["step"]) for p in ranges} == {(f"{T0:.3f}", f"{T0 + 5:.3f}", "1")}


def test_a_long_run_gets_a_coarser_step() -> None:
    fetch = recorded()
    long = [PhaseSpan("hold", T0, T0 + 30 * MAX_POINTS)]
    build_run(fetch, long, 1.0, "Prometheus")
    assert {p["step"] for path, p in fetch.asked if path == "/api/v1/query_range"} == {"30"}


def test_no_generator_series_is_one_line() -> None:
    with pytest.raises(PrometheusError, match=r"^Prometheus has no locust_xmpp_users between 1800000000 and 1800000005 "
                       r"\(unix time\): was the generator's exporter scraped during the run\?$"):  # fmt: skip
        build_run(Recorded({}, {}), PHASES, 1.0, "Prometheus")


def test_no_server_series_says_why() -> None:
    run = build_run(recorded(server=False), PHASES, 1.0, "Prometheus")
    assert run.server == []
    assert run.server_note == (
        f"Prometheus has no {names.SERVER_CPU} or {names.SERVER_RSS} during the run (was the server's exporter "
        "scraped?)"
    )


def test_load_needs_the_phase_file(tmp_path: Path) -> None:
    with pytest.raises(MissingData, match="_phases.json is missing or empty"):
        load("http://prom:9090", tmp_path / "run", fetch=recorded())
    (tmp_path / "run_phases.json").write_text(json.dumps([
        {"phase": p.name, "start_unix": p.start, "end_unix": p.end, "users": p.users} for p in PHASES
    ]))  # fmt: skip
    run = load("http://prom:9090", tmp_path / "run", fetch=recorded())
    assert [p.name for p in run.phases] == ["join", "talk"] and run.source == "Prometheus at http://prom:9090"
