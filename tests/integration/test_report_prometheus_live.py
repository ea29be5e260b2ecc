"""The report's Prometheus source against a real Prometheus (Debian's), scraping a tiny exporter of ours.

The exporter serves the families of ``xmpp_user.observe.names`` with values that follow the clock
(users ramping up, one CPU-second every two seconds, messages at 5/s), so what the report reads back
through Prometheus can be checked against what was served. Only loopback; every process is ours and
stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xmpp_user.lab.procs import free_port
from xmpp_user.observe import names
from xmpp_user.observe.analysis import phase_rows
from xmpp_user.observe.model import PhaseSpan
from xmpp_user.observe.prometheus import build_run, http_fetch
from xmpp_user.observe.report import write_report

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is not installed (apt-get install prometheus)")
MIB = 2**20
RAMP = 2.0
"""Users added per second, up to ``PEAK``."""
PEAK = 10


class ClockExporter:
    """Every family the report reads, as functions of the seconds since ``t0``."""

    def __init__(self) -> None:
        self.t0 = float("inf")
        """Everything stays at zero until the clock is started."""

    def collect(self) -> Iterator[Any]:
        e = max(0.0, time.time() - self.t0)
        users = min(PEAK, int(e * RAMP))
        yield GaugeMetricFamily(names.USERS, "users", value=users)
        yield GaugeMetricFamily(names.SESSIONS, "sessions", value=users)
        requests = CounterMetricFamily(names.REQUESTS.removesuffix("_total"), "requests", labels=["name"])
        requests.add_metric(["connect"], users)
        requests.add_metric(["message"], int(e * 5))
        yield requests
        failures = CounterMetricFamily(names.REQUEST_FAILURES.removesuffix("_total"), "failures", labels=["name"])
        failures.add_metric(["connect"], 1 if e > 6 else 0)
        yield failures
        duration = HistogramMetricFamily(names.REQUEST_DURATION, "latency", labels=["name"])
        sent = int(e * 5)
        # Messages: four in five under 10 ms, the rest under 50 ms.
        fast = sent - sent // 5
        duration.add_metric(["message"], [("0.01", fast), ("0.05", sent), ("+Inf", sent)], sum_value=sent * 0.01)
        yield duration
        for family, value in ((names.MESSAGES_SENT, sent), (names.DELIVERIES, sent * 3)):
            yield CounterMetricFamily(family.removesuffix("_total"), "truth", value=value)
        yield GaugeMetricFamily(names.DELIVERIES_IN_FLIGHT, "in flight", value=min(sent, 4))
        yield GaugeMetricFamily(names.DELIVERIES_LOST, "lost", value=0)
        yield CounterMetricFamily(names.SERVER_CPU.removesuffix("_total"), "cpu", value=e / 2)
        yield GaugeMetricFamily(names.SERVER_RSS, "rss", value=10 * MIB + users * 64 * 1024)
        # The generator fell 0.8 s behind for two seconds in the middle of the steady phase.
        yield GaugeMetricFamily(names.EVENT_LOOP_LAG, "lag", value=0.8 if 7.5 <= e < 9.5 else 0.01)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float]]:
    """(Prometheus URL, exporter start time): Prometheus scraping the clock exporter every second, the
    clock started once Prometheus has scraped it."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    registry = prometheus_client.CollectorRegistry()
    exporter = ClockExporter()
    registry.register(exporter)
    exporter_port, port = free_port(), free_port()
    server, thread = prometheus_client.start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: clock\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 30
        query = f"{url}/api/v1/query?query=up%7Bjob%3D%22clock%22%7D"
        while True:
            try:
                with opener.open(query, timeout=1) as r:
                    if b'"value":[' in r.read():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not scrape: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        exporter.t0 = time.time()
        yield url, exporter.t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.shutdown()
        thread.join(5)


def test_the_report_reads_a_run_back_from_prometheus(prometheus: tuple[str, float], tmp_path: Path) -> None:
    url, t0 = prometheus
    phases = [
        PhaseSpan("ramp", t0 + 1, t0 + 6, users=PEAK),
        PhaseSpan("steady", t0 + 6, t0 + 11, users=PEAK),
    ]
    # Until Prometheus has scraped past the run's end (one scrape a second, and a little slack).
    time.sleep(max(0.0, t0 + 13 - time.time()))
    run = build_run(http_fetch(url), phases, 1.0, f"Prometheus at {url}")

    assert 9 <= len(run.timeline) <= 11
    users = [s.users for s in run.timeline]
    assert users == sorted(users) and users[-1] == PEAK and users[0] < PEAK
    assert all(s.sessions == s.users for s in run.timeline)
    assert [s.phase for s in run.timeline][:1] == ["ramp"] and run.timeline[-1].phase in ("steady", None)
    # Counters count from the run's start; failures by name; truth by family.
    assert run.timeline[0].requests["message"] == 0
    assert run.timeline[-1].requests["message"] == pytest.approx(50, abs=6)
    assert run.timeline[-1].failures["connect"] == 1
    assert run.timeline[-1].truth["delivered"] == 3 * run.timeline[-1].truth["sent"] > 0
    assert run.timeline[-1].truth["lost"] == 0 and run.timeline[-1].truth["in_flight"] == 4  # a gauge, as served
    # The server: irate of its CPU seconds (half a CPU), its RSS growing with the users.
    cpu = [s.cpu_percent for s in run.server if s.cpu_percent is not None]
    assert cpu and all(40 <= c <= 60 for c in cpu), cpu
    used = [s.cpu_seconds for s in run.server if s.cpu_seconds is not None]  # the process counter itself
    assert used == sorted(used) and 0 <= used[0] < used[-1] <= 10, used
    rss = [s.rss_bytes for s in run.server if s.rss_bytes is not None]
    assert min(rss) >= 10 * MIB and max(rss) == 10 * MIB + PEAK * 64 * 1024
    assert "127.0.0.1" in run.server_name

    ramp, steady = phase_rows(run)
    assert [s.phase for s in run.snapshots] == ["ramp", "steady", None]
    assert steady.messages == pytest.approx(25, abs=6)
    assert steady.message_rate == pytest.approx(5, abs=1.2)
    assert steady.latency["message"].p50 == 10.0  # the bucket bound, in ms
    assert steady.latency["message"].p95 == 50.0
    assert ramp.failures + steady.failures == 1
    assert (ramp.in_flight, steady.in_flight, steady.lost) == (4, 4, 0)
    assert steady.cpu_mean == pytest.approx(50, abs=8)
    assert (ramp.generator_lag, steady.generator_lag) == (0.01, 0.8)

    report = write_report(run, tmp_path / "prom")
    assert len(report.charts) == 2
    for chart in report.charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.html.read_text()
    assert f"From Prometheus at {url}" in page and "histogram bucket bounds" in page


def test_an_unreachable_prometheus_is_one_line() -> None:
    from xmpp_user.observe.prometheus import PrometheusError

    fetch = http_fetch(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PrometheusError, match=r"^cannot reach Prometheus at http://127\.0\.0\.1:\d+: "):
        fetch("/api/v1/query", {"query": "up", "time": "0"})


def test_a_query_prometheus_refuses_is_one_line(prometheus: tuple[str, float]) -> None:
    from xmpp_user.observe.prometheus import PrometheusError

    with pytest.raises(PrometheusError, match=r"^Prometheus refused 'sum\(': .*parse error"):
        http_fetch(prometheus[0])("/api/v1/query", {"query": "sum(", "time": f"{time.time():.3f}"})
