"""How many connected users one generator process holds: the default of --xmpp-users-per-process.

    python benchmarks/process_ceiling.py [--step 2000] [--max-users 18000] [--hold 40] [--json FILE]

Starts a private lab Prosody (memory storage), then ONE real headless Locust process (our user class,
Locust's stats and its per-request events included) whose users connect, log in anonymously and ping
the server every 10 s on average, stepped up by --step users every --hold seconds. For each step it reports, over
the step's second half (the step's logins are over by then): the generator's CPU (% of one core), its
RSS per connected user, how late its event loop wakes up (p95, p99: what the generator itself adds to
any round trip), the lab server's CPU in the same window, and the ping round trip p95 from Locust's own
stats history (its 10 s windows that begin after the step's logins). The ceiling is the last step
before the generator passes 80 % of a core or its own loop lag p95 passes 100 ms, the share of a ping
p95 of 100 ms that the generator would be to blame for. When the ping p95 passes 100 ms with the
generator's loop quiet, the server is the limit: the report says so, and the ceiling is a lower bound.
Bounded: --max-users, and the whole run stops at its last step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xmpp_user.lab.lab import Lab, free_port, process_cpu_seconds, process_rss_bytes  # noqa: E402

CPU_LIMIT = 80.0
P95_LIMIT_MS = 100.0
LOCUST_WINDOW_S = 10.0
"""Locust's current percentiles cover the last 10 s: a row is the step's own once that long has passed."""

LOCUSTFILE = textwrap.dedent(
    '''
    """Users that stay connected and ping every 10 s, stepped up by the benchmark's load shape."""
    import os
    import time

    import gevent
    from locust import LoadTestShape, between, events, task

    from xmpp_user import XmppUser

    STEP, HOLD, MAX = (int(os.environ[k]) for k in ("BENCH_STEP", "BENCH_HOLD", "BENCH_MAX"))


    def _loop_lag(path):
        """How late a 50 ms sleep wakes up: the time any greenlet of this process waits for the CPU."""
        with open(path, "a") as out:
            while True:
                started = time.perf_counter()
                gevent.sleep(0.05)
                out.write(f"{time.time():.3f} {(time.perf_counter() - started - 0.05) * 1000:.2f}\\n")
                out.flush()


    @events.test_start.add_listener
    def _start_lag(**_kw):
        gevent.spawn(_loop_lag, os.environ["BENCH_LAG_FILE"])


    class Pinger(XmppUser):
        # Every 10 s on average, not in step: a whole step pinging in the same second would measure
        # the server's queue behind a burst, not the generator.
        wait_time = between(5, 15)

        @task
        def ping(self):
            self.ensure_connected()
            self.xmpp.ping()


    class Steps(LoadTestShape):
        def tick(self):
            step = int(self.get_run_time() // HOLD) + 1
            users = step * STEP
            if users > MAX:
                return None
            return users, min(STEP, 200)  # batches of 200 connections a second
    '''
)


class Sampler:
    """CPU seconds and RSS of a process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss(self) -> int:
        return process_rss_bytes(self.pid)


def ping_p95(history: Path, since: float, until: float) -> float | None:
    """The worst 'ping' p95 Locust reported (its 10 s window) between two times, in ms."""
    if not history.exists():
        return None
    worst = None
    with open(history, newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] != "ping" or not since <= float(row["Timestamp"]) <= until:
                continue
            value = row.get("95%", "N/A")
            if value not in ("N/A", ""):
                worst = max(worst or 0.0, float(value))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", type=int, default=2000, help="users added per step")
    parser.add_argument("--max-users", type=int, default=18000)
    parser.add_argument("--hold", type=int, default=40, help="seconds per step")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the lab and Locust inherit it
    steps = []
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
        work = Path(tmp)
        (work / "pingers.py").write_text(LOCUSTFILE)
        lab = Lab(work / "lab", c2s_port=free_port(), http_port=free_port(), storage="memory")
        lab.up()
        try:
            server = Sampler(lab.pid)
            lag_file = work / "loop_lag.txt"
            env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_STEP": str(args.step), "BENCH_HOLD": str(args.hold),
                   "BENCH_MAX": str(args.max_users), "BENCH_LAG_FILE": str(lag_file)}  # fmt: skip
            prefix = work / "run"
            cmd = [sys.executable, "-m", "locust", "-f", str(work / "pingers.py"), "--headless", "--host",
                   lab.websocket_url, "--csv", str(prefix), "--csv-full-history", "--only-summary",
                   "--xmpp-users-per-process", str(args.max_users + 1), "--xmpp-timeout", "30"]  # fmt: skip
            with open(work / "locust.log", "wb") as log:
                proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            generator = Sampler(proc.pid)
            start = time.monotonic()
            for step in range(1, args.max_users // args.step + 1):
                step_end = start + step * args.hold
                time.sleep(max(0.0, step_end - args.hold / 2 - time.monotonic()))
                if proc.poll() is not None:
                    break
                t0, g0, s0 = time.monotonic(), generator.cpu(), server.cpu()
                wall0 = time.time()
                time.sleep(max(0.0, step_end - 0.5 - time.monotonic()))
                t1, g1, s1 = time.monotonic(), generator.cpu(), server.cpu()
                users = step * args.step
                rss = generator.rss()
                steps.append({
                    "users": users,
                    "generator_cpu_percent": round(100 * (g1 - g0) / (t1 - t0), 1),
                    "server_cpu_percent": round(100 * (s1 - s0) / (t1 - t0), 1),
                    "generator_rss_bytes": rss,
                    "server_rss_bytes": server.rss(),
                    "wall": (wall0, time.time()),
                })  # fmt: skip
                print(f"  {users:>6} users: generator {steps[-1]['generator_cpu_percent']:5.1f} % CPU, "
                      f"{rss / 2**20:7.1f} MiB; server {steps[-1]['server_cpu_percent']:5.1f} % CPU", flush=True)
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            history = Path(f"{prefix}_stats_history.csv")
            for s in steps:
                since, until = s.pop("wall")
                s["ping_p95_ms"] = ping_p95(history, since + LOCUST_WINDOW_S, until)
                s["loop_lag_p95_ms"], s["loop_lag_p99_ms"] = loop_lag(lag_file, since, until, 0.95, 0.99)
            failures = _failures(Path(f"{prefix}_stats.csv"))
        finally:
            lab.down()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return _report(steps, failures, args)


def loop_lag(path: Path, since: float, until: float, *fractions: float) -> list[float | None]:
    """Percentiles of the generator's event loop lag between two times, in ms (None without samples)."""
    if not path.exists():
        return [None] * len(fractions)
    lags = sorted(float(lag) for t, lag in (line.split() for line in path.read_text().splitlines())
                  if since <= float(t) <= until)  # fmt: skip
    return [lags[min(len(lags) - 1, int(len(lags) * f))] if lags else None for f in fractions]


def _failures(stats: Path) -> int:
    if not stats.exists():
        return -1
    with open(stats, newline="") as f:
        return next((int(r["Failure Count"]) for r in csv.DictReader(f) if r["Name"] == "Aggregated"), -1)


def _report(steps: list[dict], failures: int, args: argparse.Namespace) -> int:
    if len(steps) < 2:
        print("not enough steps measured")
        return 1
    # Memory per user: the slope of RSS against users over the steps.
    xs, ys = [s["users"] for s in steps], [s["generator_rss_bytes"] for s in steps]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    ceiling, stopped = steps[-1]["users"], "the steps ran out (--max-users): the ceiling is at least this"
    server_first = None
    print(f"\n{'users':>7} {'gen CPU %':>9} {'gen loop lag p95/p99 ms':>23} {'server CPU %':>12} {'ping p95 ms':>11} "
          f"{'gen RSS MiB':>11}")  # fmt: skip
    for s in steps:
        lags = "/".join(f"{v:.0f}" if v is not None else "-" for v in (s["loop_lag_p95_ms"], s["loop_lag_p99_ms"]))
        p95 = s["ping_p95_ms"] if s["ping_p95_ms"] is not None else float("nan")
        print(f"{s['users']:>7} {s['generator_cpu_percent']:>9.1f} {lags:>23} {s['server_cpu_percent']:>12.1f} "
              f"{p95:>11.0f} {s['generator_rss_bytes'] / 2**20:>11.1f}")  # fmt: skip
    for previous, s in zip([None, *steps], steps, strict=False):
        if s["generator_cpu_percent"] > CPU_LIMIT or (s["loop_lag_p95_ms"] or 0) > P95_LIMIT_MS:
            ceiling = previous["users"] if previous else 0
            stopped = (f"at {s['users']} users the generator passed {CPU_LIMIT:.0f} % of a core "
                       f"or its own loop lag p95 passed {P95_LIMIT_MS:.0f} ms")  # fmt: skip
            break
        if (s["ping_p95_ms"] or 0) > P95_LIMIT_MS and server_first is None:
            server_first = s
    if server_first is not None:
        s = server_first
        stopped += (f"; the server was the limit first: from {s['users']} users the ping p95 was "
                    f"{s['ping_p95_ms']:.0f} ms with the server at {s['server_cpu_percent']:.0f} % CPU, the generator "
                    f"at {s['generator_cpu_percent']:.0f} % of a core and its loop lag p95 "
                    f"{s['loop_lag_p95_ms'] or 0:.0f} ms")  # fmt: skip
    last = steps[-1]
    per_core = last["users"] / max(last["generator_cpu_percent"], 0.1) * 100
    print(f"\nmemory per connected user: {slope / 1024:.1f} KiB (generator)")
    print(f"generator CPU at {last['users']} users: {last['generator_cpu_percent']} % of a core "
          f"(server: {last['server_cpu_percent']} %); linear extrapolation: {per_core:.0f} users per core")
    print(f"failures during the run: {failures}")
    print(f"ceiling: {ceiling} users ({stopped})")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": steps, "kib_per_user": slope / 1024, "ceiling": ceiling,
                                               "stopped": stopped, "failures": failures}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
