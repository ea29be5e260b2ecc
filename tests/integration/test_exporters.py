"""Both exporters for real: ``locust-xmpp exporter`` beside each lab server (values that move, a process
that goes and comes back, bad input), the lab's own exporter, ``promtool check metrics`` on real scrapes,
and one distributed Locust run scraped by a real Prometheus through dashboards/prometheus.yml.

Only processes these tests start are stopped or killed, by PID: the "process gone" cases watch a
``sleep`` of their own, never a lab server.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from runs import LIVECHAT_SMALL, Run, locust_command, room_name

from xmpp_user.lab.lab import Lab, free_port, port_open
from xmpp_user.observe import names
from xmpp_user.session.client import XmppClient

REPO = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO / "dashboards" / "prometheus.yml"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing (Debian package prometheus)")
# A livechat run of one batch of 5 viewers, about 13 s: seed, seed-leave, batch1-join, batch1-talk, batch1-leave.
VIEWERS = 5
TINY_LIVECHAT = [*LIVECHAT_SMALL, "--batches", "1", "--viewers", str(VIEWERS), "--seed-messages", "5",
                 "--seed-wait", "1", "--talk-delay", "1", "--talk-duration", "2"]  # fmt: skip
PHASES = ["seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave"]
PLANNED_SECONDS = (5 * 0.02 + 4) + (1 + 1) + (VIEWERS / 10 + 1) + (2 + 3) + (VIEWERS / 10 + 2)
"""The plan's length (livechat.py's phases with these options)."""


# -- helpers ---------------------------------------------------------------------------------------


def wait_for(what: str, done, timeout: float = 15, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``done()`` every 0.1 s until it is truthy; fail after ``timeout`` or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        result = done()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}: {log.read_text()[-2000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def get(url: str, timeout: float = 5) -> str:
    with NO_PROXY.open(url, timeout=timeout) as reply:
        return reply.read().decode()


def scrape(port: int) -> str:
    return get(f"http://127.0.0.1:{port}/metrics")


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def promtool_check(text: str) -> None:
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Stop a process this test started, by its PID; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xmpp_user.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@contextmanager
def exporter(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """``locust-xmpp exporter ARGS`` on a free port, serving; stopped by SIGTERM, which must end it with 0."""
    port = free_port()
    log = tmp_path / f"exporter-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xmpp_user.cli", "exporter", "--port", str(port), *args],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for("exporter serving", lambda: port_open(port), proc=proc, log=log)
        yield proc, port, log
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()


@contextmanager
def sleeper(tmp_path: Path, name: str) -> Iterator[subprocess.Popen]:
    """A ``sleep`` of ours whose program name is ``name`` (a link to sleep), bounded to 60 s."""
    link = tmp_path / name
    if not link.exists():
        link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([str(link), "60"])
    try:
        yield proc
    finally:
        stop(proc, signal.SIGKILL)


def logins(lab: Lab, count: int) -> None:
    for _ in range(count):
        client = XmppClient(lab.websocket_url, lab.domain, timeout=5)
        try:
            client.connect()
            client.ping()
        finally:
            client.close()


def alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie, whose parent has yet to reap it
    except OSError:
        return False


def start_time(pid: int) -> float:
    """A process's start time (Unix seconds) from /proc, as ProcessCollector computes it."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:6] == "btime ")
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def server_args(lab: Lab) -> list[str]:
    return ["--pid", str(lab.pid), *(["--server-metrics", lab.metrics_url] if lab.metrics_url else [])]


# -- the server exporter ---------------------------------------------------------------------------


def test_server_exporter_follows_the_lab_server(lab: Lab, tmp_path: Path) -> None:
    with exporter(tmp_path, *server_args(lab)) as (_proc, port, _log):
        before = values(text := scrape(port))
        assert before[(names.SERVER_UP, ())] == 1
        assert before[(names.SERVER_RSS, ())] > 1_000_000
        assert before[(names.SERVER_OPEN_FDS, ())] > 0
        assert before[(names.SERVER_THREADS, ())] >= (2 if lab.server == "ejabberd" else 1)  # beam.smp schedulers
        assert abs(before[(names.SERVER_CPU, ())] - lab.cpu_seconds()) < 0.5
        if lab.metrics_url:  # Prosody's own families, passed on under their own names
            assert before[(names.SERVER_METRICS_UP, ())] == 1
            assert any(name.startswith("prosody_") for name, _ in before)
        else:
            assert not any(name.startswith("prosody_") or name == names.SERVER_METRICS_UP for name, _ in before)
        if PROMTOOL:
            promtool_check(text)
        cpu = before[(names.SERVER_CPU, ())]
        for _ in range(8):  # CPU time moves in 10 ms ticks: a few logins at a time until it shows
            logins(lab, 5)
            after = values(scrape(port))
            if after[(names.SERVER_CPU, ())] > cpu:
                break
        assert after[(names.SERVER_CPU, ())] > cpu
        assert after[(names.SERVER_UP, ())] == 1


def test_a_process_that_ends_is_down_and_one_named_alike_is_found_again(tmp_path: Path) -> None:
    name = f"xs-{uuid.uuid4().hex[:8]}"
    with sleeper(tmp_path, name) as first:
        with exporter(tmp_path, "--process-name", name) as (_p, by_name, log), \
                exporter(tmp_path, "--pid", str(first.pid)) as (_q, by_pid, _m):  # fmt: skip
            for port in (by_name, by_pid):
                found = values(scrape(port))
                assert found[(names.SERVER_UP, ())] == 1 and found[(names.SERVER_RSS, ())] > 0
            stop(first, signal.SIGKILL)
            for port in (by_name, by_pid):
                found = values(scrape(port))
                assert found[(names.SERVER_UP, ())] == 0
                assert (names.SERVER_CPU, ()) not in found and (names.SERVER_RSS, ()) not in found
            with sleeper(tmp_path, name) as second:
                # The name finds the new process; the PID named the one that ended, and stays down.
                found = values(scrape(by_name))
                assert found[(names.SERVER_UP, ())] == 1
                started = found[(f"{names.SERVER}_process_start_time_seconds", ())]
                assert started == pytest.approx(start_time(second.pid), abs=0.02)
                assert values(scrape(by_pid))[(names.SERVER_UP, ())] == 0
                with sleeper(tmp_path, name) as third, sleeper(tmp_path, name) as fourth:
                    assert values(scrape(by_name))[(names.SERVER_UP, ())] == 1  # still the one it found
                    stop(second, signal.SIGKILL)
                    # Two alike left: which one is the server? Neither is watched, and that is said once.
                    for _ in range(2):
                        assert values(scrape(by_name))[(names.SERVER_UP, ())] == 0
                    stop(fourth, signal.SIGKILL)
                    found = values(scrape(by_name))
                    assert found[(names.SERVER_UP, ())] == 1
                    assert found[(f"{names.SERVER}_process_start_time_seconds", ())] == pytest.approx(
                        start_time(third.pid), abs=0.02)  # fmt: skip
        said = [line for line in log.read_text().splitlines() if f"processes answer to '{name}'" in line]
        assert len(said) == 1, log.read_text()


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    body = b"# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\ndemo_requests_total 3\n"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_failed_fetch_keeps_the_process_figures(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with sleeper(tmp_path, f"xs-{uuid.uuid4().hex[:8]}") as process, \
                exporter(tmp_path, "--pid", str(process.pid), "--server-metrics", url) as (_p, port, log):  # fmt: skip
            found = values(scrape(port))
            assert found[("demo_requests_total", ())] == 3 and found[(names.SERVER_METRICS_UP, ())] == 1
            server.shutdown()
            server.server_close()
            found = values(scrape(port))
            assert found[(names.SERVER_METRICS_UP, ())] == 0 and ("demo_requests_total", ()) not in found
            assert found[(names.SERVER_UP, ())] == 1 and found[(names.SERVER_CPU, ())] >= 0
            scrape(port)  # a second failure is not logged again
            said = [line for line in log.read_text().splitlines() if "Cannot fetch the server's metrics" in line]
            assert len(said) == 1 and "Connection refused" in said[0], log.read_text()
    finally:
        server.server_close()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, lab: Lab) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    cases = {
        ("--pid", str(gone.pid)): f"no process to watch: pid {gone.pid} is not running",
        ("--pidfile", str(tmp_path / "none.pid")): "cannot read the pid file",
        ("--process-name", f"xs-{uuid.uuid4().hex[:8]}"): "no process to watch: process",
        ("--pid", str(lab.pid), "--port", str(lab.http_port)): f"cannot serve on 127.0.0.1:{lab.http_port}",
        ("--pid", str(lab.pid), "--server-metrics", "ftp://127.0.0.1/metrics"): "must be an http:// or https:// URL",
        ("--pid", str(lab.pid), "--server-metrics", f"http://127.0.0.1:{lab.http_port}/no-metrics-here"):
            "cannot read the server's metrics",
    }  # fmt: skip
    for args, message in cases.items():
        done = cli("exporter", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("locust-xmpp: error: ") and message in lines[0], (args, lines)


def test_sigint_ends_the_exporter_with_0(tmp_path: Path) -> None:
    with sleeper(tmp_path, f"xs-{uuid.uuid4().hex[:8]}") as process, \
            exporter(tmp_path, "--pid", str(process.pid)) as (proc, port, _log):  # fmt: skip
        scrape(port)
        assert stop(proc, signal.SIGINT) == 0


def test_the_lab_starts_and_stops_its_exporter(lab: Lab) -> None:
    port = free_port()
    lab.start_exporter(port)
    try:
        url = lab.exporter_url
        assert url == f"http://127.0.0.1:{port}/metrics" and lab.status()["exporter_url"] == url
        found = values(get(url))
        assert found[(names.SERVER_UP, ())] == 1
        assert (found.get((names.SERVER_METRICS_UP, ())) == 1) == (lab.metrics_url is not None)
        assert abs(found[(names.SERVER_CPU, ())] - lab.cpu_seconds()) < 0.5  # the lab's own server, not another
    finally:
        assert lab.stop_exporter()
    assert lab.exporter_url is None and not port_open(port)


def test_lab_up_with_an_exporter_and_lab_down(tmp_path: Path) -> None:
    run_dir, ports = tmp_path / "lab", [free_port() for _ in range(3)]
    up = cli("lab", "up", "--run-dir", str(run_dir), "--c2s-port", str(ports[0]), "--http-port", str(ports[1]),
             "--exporter-port", str(ports[2]))  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        assert f"exporter    http://127.0.0.1:{ports[2]}/metrics" in up.stdout
        status = cli("lab", "status", "--run-dir", str(run_dir))
        assert f"exporter    http://127.0.0.1:{ports[2]}/metrics" in status.stdout
        record = json.loads((run_dir / "lab.json").read_text())
        assert values(scrape(ports[2]))[(names.SERVER_UP, ())] == 1
    finally:
        down = cli("lab", "down", "--run-dir", str(run_dir))
    assert down.returncode == 0 and "lab stopped" in down.stdout, down.stderr
    assert not port_open(ports[2]) and not alive(record["exporter_pid"])


# -- one run, scraped by a real Prometheus -----------------------------------------------------------


def rendered_config(tmp_path: Path, generator_port: int, server_port: int) -> Path:
    """dashboards/prometheus.yml as it is, with the test's ports for the two default ones."""
    text = SCRAPE_CONFIG.read_text()
    assert f"127.0.0.1:{names.GENERATOR_PORT}" in text and f"127.0.0.1:{names.SERVER_PORT}" in text
    text = text.replace(f"127.0.0.1:{names.GENERATOR_PORT}", f"127.0.0.1:{generator_port}")
    text = text.replace(f"127.0.0.1:{names.SERVER_PORT}", f"127.0.0.1:{server_port}")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    return path


@contextmanager
def prometheus(tmp_path: Path, config: Path) -> Iterator[str]:
    """A private Prometheus on a free loopback port, its data in tmp_path; yields its URL."""
    port, log = free_port(), tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: port_open(port) and _ready(url), timeout=30, proc=proc, log=log)
        yield url
    finally:
        stop(proc)


def _ready(url: str) -> bool:
    try:
        return get(f"{url}/-/ready", timeout=1).startswith("Prometheus Server is Ready")
    except OSError:
        return False


def query(url: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's result: value by label set (``__name__`` left out)."""
    reply = json.loads(get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    assert reply["status"] == "success", reply
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
            for r in reply["data"]["result"]}  # fmt: skip


@pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason="Prometheus is missing (Debian package prometheus)")
def test_a_distributed_run_through_prometheus(lab: Lab, tmp_path: Path) -> None:
    generator_port, master_port, prefix = free_port(), free_port(), tmp_path / "run"
    master_cmd = locust_command(
        "livechat.py", "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
        "--expect-workers", "2", "--expect-workers-max-wait", "30", "--headless", "--host", lab.websocket_url,
        "--csv", str(prefix), "--only-summary", "--xmpp-room", room_name("prom"), *TINY_LIVECHAT,
        "--xmpp-metrics-port", str(generator_port),
    )  # fmt: skip
    worker_cmd = locust_command("livechat.py", "--worker", "--master-host", "127.0.0.1", "--master-port",
                                str(master_port), "--xmpp-metrics-port", str(generator_port))  # fmt: skip
    logs = [tmp_path / name for name in ("master.log", "worker1.log", "worker2.log")]
    procs: list[subprocess.Popen] = []
    with exporter(tmp_path, *server_args(lab)) as (_e, server_port, _l), \
            prometheus(tmp_path, rendered_config(tmp_path, generator_port, server_port)) as prom:  # fmt: skip
        try:
            for cmd, log in zip([master_cmd, worker_cmd, worker_cmd], logs, strict=True):
                with open(log, "wb") as out:
                    procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
            # Workers pass --xmpp-metrics-port too (one command line for all) and serve nothing: one server only.
            wait_for("generator metrics", lambda: port_open(generator_port), timeout=30, proc=procs[0], log=logs[0])
            live = wait_for("a scrape in batch1-talk", lambda: _in_phase(generator_port, "batch1-talk"), timeout=40,
                            proc=procs[0], log=logs[0])  # fmt: skip
            promtool_check(live)
            (tmp_path / "generator.prom").write_text(live)
            started = time.monotonic()
            scrape(generator_port)
            assert time.monotonic() - started < 0.5  # a scrape costs the master little
            master_code = procs[0].wait(timeout=60)
            worker_codes = [p.wait(timeout=20) for p in procs[1:]]
        finally:
            for p in procs:
                stop(p, signal.SIGKILL, 5)
        assert master_code == 0, logs[0].read_text()[-3000:]
        assert worker_codes == [0, 0]
        run = Run(master_code, logs[0].read_text(), 0.0, prefix)
        assert run.failures == 0, run.errors
        # Scrapes every second did not hold the run up: its phases took what they take without metrics.
        phases = run.phases
        assert [p["phase"] for p in phases] == PHASES
        taken = float(phases[-1]["end_unix"]) - float(phases[0]["start_unix"])
        # Each phase may wait for the workers' word that the run is quiet (a report they are asked for at once).
        waited = sum(float(p["waited"] or 0) for p in phases)
        assert taken - waited < PLANNED_SECONDS + 3 and waited < 2 * len(phases), (taken, waited)
        time.sleep(1.5)  # Prometheus's last scrapes of the exporters

        # Series end when the run's process does: look back over the run with *_over_time.
        requests = query(prom, f"max_over_time({names.REQUESTS}[5m])")
        for name in ("connect", "muc_join", "message", "message_delivery"):
            assert 0 < requests[(("instance", f"127.0.0.1:{generator_port}"), ("job", "locust-xmpp"),
                                 ("name", name))] <= run.count(name), name  # fmt: skip
        connects = query(prom, f'max_over_time({names.REQUESTS}{{name="connect"}}[5m])')
        assert list(connects.values()) == [run.count("connect")]  # final long before the run ends
        assert list(query(prom, f"max_over_time({names.SESSIONS}[5m])").values()) == [VIEWERS]
        workers = query(prom, f'max_over_time({names.WORKERS}{{state="running"}}[5m])')
        assert list(workers.values()) == [2]
        phase_seen = query(prom, f"max_over_time({names.PHASE}[5m])")
        assert {dict(k)["phase"]: v for k, v in phase_seen.items()} == dict.fromkeys(PHASES, 1.0)
        assert list(query(prom, f"max_over_time({names.PHASE_PLANNED_USERS}[5m])").values()) == [VIEWERS]
        sent = query(prom, f"max_over_time({names.MESSAGES_SENT}[5m])")
        assert 0 < list(sent.values())[0] <= run.truth["sent"]
        assert list(query(prom, f"max_over_time({names.DELIVERIES}[5m])").values())[0] > 0
        duration = query(prom, f'max_over_time({names.REQUEST_DURATION}_count{{name="connect"}}[5m])')
        assert list(duration.values()) == [run.count("connect")]
        # The workers' event loop delays, through the master (a worker's loop is never exactly on time).
        lag = query(prom, f"max_over_time({names.EVENT_LOOP_LAG}[5m])")
        assert 0 < list(lag.values())[0] < 60, lag

        cpu = query(prom, f"increase({names.SERVER_CPU}[5m])")
        assert list(cpu.values())[0] > 0
        assert list(query(prom, f"min_over_time({names.SERVER_RSS}[5m])").values())[0] > 1_000_000
        assert list(query(prom, f"min_over_time({names.SERVER_UP}[5m])").values()) == [1]
        # Both targets were scraped (Prometheus asks for OpenMetrics, prometheus-client answers with it), and
        # the server exporter never failed a scrape; Prosody's own families were stored beside ours.
        up = query(prom, "max_over_time(up[5m])")
        assert {dict(k)["job"]: v for k, v in up.items()} == {"locust-xmpp": 1, "xmpp-server": 1}
        assert list(query(prom, 'min_over_time(up{job="xmpp-server"}[5m])').values()) == [1]
        if lab.metrics_url:
            assert query(prom, f"max_over_time({names.SERVER_METRICS_UP}[5m])")
            assert query(prom, 'count({__name__=~"prosody_.+", job="xmpp-server"})')


def _in_phase(port: int, phase: str) -> str | None:
    """The generator's scrape if ``phase`` is in force, else None."""
    try:
        text = scrape(port)
    except OSError:
        return None
    return text if values(text).get((names.PHASE, (("phase", phase),))) == 1 else None
