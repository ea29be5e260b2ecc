"""Every benchmark still runs: each script in benchmarks/ is started as its docstring and the README say
(``python benchmarks/SCRIPT.py``, from the repository, starting its own lab on free ports) at its smallest
sizes, and must run to the end, print its table and write its JSON, and leave no lab running. The figures
themselves are measurements, never asserted here; only that they are there and that the run did what it
was asked (so many users, steps, modes, scenarios). A lab refactor or a renamed module that breaks a
benchmark fails here, not on the next person who wants a number."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from runs import REPO

from xmpp_user.lab.lab import Lab

PROSODY_MISSING = Lab(server="prosody").unavailable()
pytestmark = pytest.mark.skipif(PROSODY_MISSING is not None, reason=str(PROSODY_MISSING))

GRACE = 20.0
"""Seconds a benchmark interrupted past its timeout has to stop its labs before it is killed."""


@dataclass
class Bench:
    returncode: int
    output: str
    """stdout and stderr together."""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def lines(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in self.output.splitlines() if (m := re.match(pattern, line))]


def run_benchmark(script: str, tmp_path: Path, *args: str, timeout: float) -> Bench:
    """``python benchmarks/SCRIPT args`` to its end, its temporary files (labs included) in ``tmp_path``.
    Past ``timeout`` it is interrupted as by Ctrl+C (it stops its labs on the way out), killed ``GRACE``
    seconds later, and the test fails. Either way, a lab of it still running then is stopped and fails the test."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,  # its own group, for Ctrl+C
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = _interrupt(proc)
        stop_labs(tmp_path)
        pytest.fail(f"{script} did not finish within {timeout:g} s:\n{output[-3000:]}")
    bench = Bench(proc.returncode, output)
    assert not stop_labs(tmp_path), f"{script} left its lab running:\n{bench.tail()}"
    assert "Traceback" not in output, bench.tail(60)
    assert bench.returncode == 0, bench.tail()
    return bench


def _interrupt(proc: subprocess.Popen[str]) -> str:
    for sig, wait in ((signal.SIGINT, GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the benchmark and what it started in its group (Locust, observers)
        try:
            return proc.communicate(timeout=wait)[0]
        except subprocess.TimeoutExpired:
            continue
    return ""


def stop_labs(tmp_path: Path) -> list[str]:
    """Stop what a benchmark left running under ``tmp_path``: its labs (a lab records itself in RUN/lab.json until
    it is down), then any process whose command line names a path there (a lab whose temporary run directory is
    gone already, a Locust run, an observer). Returns what was running."""
    running = []
    for record in tmp_path.rglob("lab.json"):
        lab = Lab.from_record(record.parent)
        if lab.running:
            running.append(repr(lab))
        lab.down()
    for pid in _processes_naming(tmp_path):
        running.append(f"pid {pid}: {_cmdline(pid)}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while str(tmp_path) in _cmdline(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
    return running


def _processes_naming(path: Path) -> list[int]:
    inside = f"{path}/"
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and inside in _cmdline(int(p.name))]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_process_ceiling(tmp_path: Path) -> None:
    """Two steps of 2 users (4 s each) through one real Locust process: both steps measured, the table, the
    ceiling, and the JSON with the loop lag Locust's side recorded and no failure."""
    out = tmp_path / "ceiling.json"
    bench = run_benchmark("process_ceiling.py", tmp_path, "--step", "2", "--max-users", "4", "--hold", "4",
                          "--json", str(out), timeout=60)  # fmt: skip
    rows = bench.lines(r"^\s+(\d+)\s+[\d.]+\s+\S+\s+[\d.]+\s+\S+\s+[\d.]+$")
    assert [int(m.group(1)) for m in rows] == [2, 4], bench.tail()
    for line in ("memory per connected user: ", "failures during the run: 0", "ceiling: 4 users"):
        assert bench.lines(re.escape(line)), (line, bench.tail())
    data = json.loads(out.read_text())
    assert [s["users"] for s in data["steps"]] == [2, 4] and data["ceiling"] == 4
    assert data["failures"] == 0, data  # -1: Locust wrote no stats
    last = data["steps"][-1]
    assert last["loop_lag_p95_ms"] is not None, data  # the locustfile's own listener ran
    assert last["generator_rss_bytes"] > 0 and last["server_rss_bytes"] > 0, data


def test_scram_login_cost(tmp_path: Path) -> None:
    """Two logins per mechanism: one line each, SCRAM deriving keys and ANONYMOUS none."""
    bench = run_benchmark("scram_login_cost.py", tmp_path, "--logins", "2", "--accounts", "2", timeout=60)
    lines = bench.lines(r"^(\S+)\s+2 logins of 2 accounts: client CPU [\d.]+ ms per login, (\d+) PBKDF2 derivations$")
    derivations = {m.group(1): int(m.group(2)) for m in lines}
    assert derivations.keys() == {"ANONYMOUS", "SCRAM-SHA-1"}, bench.tail()
    assert derivations["ANONYMOUS"] == 0 and derivations["SCRAM-SHA-1"] > 0, derivations


def test_session_cost(tmp_path: Path) -> None:
    """2 full sessions, 10 messages, 2 idle users: the budget table and the JSON, nothing failed."""
    out = tmp_path / "session_cost.json"
    bench = run_benchmark("session_cost.py", tmp_path, "--sessions", "2", "--concurrency", "2", "--stanzas", "10",
                          "--idle", "2", "--json", str(out), timeout=60)  # fmt: skip
    assert bench.lines(r"^2 sessions \(0 failures\), 10 messages \(0 failures\), 2 idle users \(0 failures\)$"), (
        bench.tail()
    )
    measures = {m.group(1) for m in bench.lines(r"^\| (\w[^|]*?) +\|")} - {"measure"}
    assert len(measures) == 8 and "client CPU per full session" in measures, bench.tail()
    data = json.loads(out.read_text())
    assert (data["sessions"]["sessions"], data["stanzas"]["messages"], data["idle"]["connected"]) == (2, 10, 2)
    assert [data[k]["failures"] for k in ("sessions", "stanzas", "idle")] == [0, 0, 0], data


def test_stream_management(tmp_path: Path) -> None:
    """3 users, 4 messages, both modes, each on its own lab Prosody with a --prosody-option: the two-column
    table, every message delivered to everyone, <r/> and Prosody's smacks metrics with stream management and
    no <r/> without, and the option in each lab's config."""
    out = tmp_path / "sm.json"
    bench = run_benchmark("stream_management.py", tmp_path, "--users", "3", "--rate", "2", "--duration", "2",
                          "--drain", "5", "--batch", "3", "--prosody-option", "smacks_max_unacked_stanzas=0",
                          "--keep-logs", "--json", str(out), timeout=60)  # fmt: skip
    assert bench.lines(r"^\| +\| +sm \| +no-sm \|$"), bench.tail()
    for row in ("users joined / asked", "Prosody CPU per delivery (us)", "<r/> received per session", "failures"):
        assert bench.lines(rf"^\| {re.escape(row)} +\|.*\|.*\|$"), (row, bench.tail())
    results = {r["mode"]: r for r in json.loads(out.read_text())}
    assert results.keys() == {"sm", "no-sm"}
    for mode, r in results.items():
        assert r["joined"] == 3 and r["sent"] == 4, (mode, r)
        assert r["summary"]["delivered"] == r["summary"]["expected"] == 4 * 3, (mode, r["summary"])
        assert r["failures"] == {} and r["connected_at_end"] == 3, (mode, r)
        config = (Path(r["run_dir"]) / "prosody.cfg.lua").read_text()
        assert "smacks_max_unacked_stanzas = 0\n" in config, mode
    assert results["sm"]["r_per_session"] > 0 and results["no-sm"]["r_per_session"] == 0
    assert results["sm"]["server_metrics"].get("prosody_mod_smacks__tx_queued_stanzas_total", 0) > 0, results["sm"]


def test_seeds(tmp_path: Path) -> None:
    """Both field tests on the lab Prosody at a tiny size (4 viewers in 1 batch; 2 participants in 1 batch,
    through --jitsi-options): each run ends with exit code 0, the conclusions printed beside the seed's, the
    truth checked by the two observers, and the JSON with the plan as given."""
    out = tmp_path / "seeds.json"
    livechat = ["--viewers", "4", "--join-rate", "4", "--batches", "1", "--pause", "1", "--talk-delay", "0",
                "--talk-duration", "2", "--talk-interval", "1", "--seed-messages", "4", "--seed-wait", "1"]  # fmt: skip
    jitsi = "--jitsi-rooms 1 --jitsi-participants 2 --batch-size 2 --batch-interval 1 --batch-jitter 0.2 --hold 1"
    bench = run_benchmark("seeds.py", tmp_path, "--server", "prosody", *livechat, f"--jitsi-options={jitsi}",
                          "--json", str(out), "--workdir", str(tmp_path / "work"), timeout=120)  # fmt: skip
    assert [m.group(1) for m in bench.lines(r"^### (\w+): exit code 0, ")] == ["livechat", "jitsi"], bench.tail()
    data = json.loads(out.read_text())
    assert data["plan"]["viewers"] == 4 and data["plan"]["jitsi_options"] == jitsi.split(), data["plan"]
    assert "--talk-interval" in data["plan"]["livechat_options"], data["plan"]
    runs = data["runs"]["prosody"]
    for name, run in runs.items():
        assert run["exit_code"] == 0, (name, run["failures"])
        keys = [c["key"] for c in run["report"]["conclusions"]]
        assert keys and all(bench.lines(rf"^- {key}$") for key in keys), (name, keys, bench.tail())
    livechat_phases = [p["name"] for p in runs["livechat"]["report"]["phases"]]
    assert livechat_phases == ["seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave"], livechat_phases
    assert [p["name"] for p in runs["jitsi"]["report"]["phases"]] == ["batch1", "hold", "leave"]
    truth = runs["livechat"]["truth"]
    assert truth["sent"] + truth["skipped"] == 4 + 4 * 2, truth  # the seed's messages, then 2 s at 1/s each
    seen = runs["livechat"]["observers"]
    assert seen["complete"] and seen["consistent"], seen
    assert seen["expected_differs"] == seen["delivered_differs"] == [], seen
    assert bench.lines(r"^- observers: \d+ messages"), bench.tail()


def test_generator_cost(tmp_path: Path) -> None:
    """Every kind at a few users for a few seconds, each through its own real Locust process and lab: one line per
    kind, the memory and load lines, and the JSON with a window and its counts for every kind and no failure."""
    out = tmp_path / "generator_cost.json"
    bench = run_benchmark("generator_cost.py", tmp_path, "--users", "4", "--ping-users", "4", "--talk-users", "4",
                          "--occupants", "2", "--vcard-users", "2", "--mam-users", "2", "--mam-page", "3",
                          "--spawn-rate", "10", "--settle", "1", "--window", "3", "--idle", "2",
                          "--json", str(out), timeout=240)  # fmt: skip
    kinds = ["session", "ping", "groupchat", "vcard", "mam"]
    assert [m.group(1) for m in bench.lines(r"^(\w+): \d+ ops in [\d.]+ s, .*, 0 failures$")] == kinds, bench.tail()
    for line in ("memory per idle connected user: ", "failures during the runs: 0", "load average: "):
        assert bench.lines(re.escape(line)), (line, bench.tail())
    data = json.loads(out.read_text())
    assert list(data["kinds"]) == kinds and data["failures"] == 0, data
    assert {"machine", "load_average_before", "load_average_after", "targets", "summary"} <= data.keys()
    assert data["summary"].keys() >= {"kib_per_idle_user", "idle_us_per_user_s"}, data["summary"]
    for kind, result in data["kinds"].items():
        assert result["locust_exit_code"] == 0 and "error" not in result, (kind, result)
        window = result["window"]
        assert window["ops"] > 0 and window.keys() >= {"generator_cpu_s", "server_cpu_s", "ratio"}, (kind, window)
    assert data["kinds"]["session"]["window"]["ops"] == 4  # every user bound once
    assert data["kinds"]["vcard"]["window"]["bytes_per_op"] > 8192  # the avatar came back


def test_frame_path(tmp_path: Path) -> None:
    """Two bursts through the transport and the core: every message read, every ack request answered."""
    out = tmp_path / "frame_path.json"
    bench = run_benchmark("frame_path.py", tmp_path, "--bursts", "2", "--json", str(out), timeout=60)
    assert bench.lines(r"^40 messages and ack requests read, 40 acks written: [\d.]+ us of CPU"), bench.tail()
    data = json.loads(out.read_text())
    assert (data["messages"], data["acks_sent"]) == (40, 40) and "us_per_delivered_message" in data, data


def test_tsung_compare(tmp_path: Path) -> None:
    """4 users in rooms of 2, 2 messages each a second apart, one run of each generator (scripts/setup.sh installs
    Tsung): the table, and the JSON with every planned delivery made by the server and counted by
    locust-xmpp (Tsung's own count falls short: its WebSocket client decodes one frame per TCP read)."""
    generators = "tsung,locust-xmpp"
    out = tmp_path / "tsung.json"
    bench = run_benchmark("tsung_compare.py", tmp_path, "--runs", "1", "--users", "4", "--occupants", "2",
                          "--interval", "1", "--messages", "2", "--arrival-rate", "10", "--generators", generators,
                          "--json", str(out), timeout=180)  # fmt: skip
    data = json.loads(out.read_text())
    assert data["plan"]["planned_deliveries"] == 2 * (2 * 2) * 2  # 2 rooms, 2 messages from each of 2 occupants to 2
    for generator in generators.split(","):
        assert bench.lines(rf"^\| +{generator} \| +1 \|"), bench.tail()
        (run,) = data["runs"][generator]
        assert run["server"]["deliveries"] == 16 and run["server"]["messages_archived"] == 8, (generator, run)
        assert run["exit_code"] == 0 and not run["stopped_past_bound"], (generator, run)
        assert run["cpu_s"] > 0 and run["peak_rss_mib"] > 0, (generator, run)
    # Tsung's own totals are not asserted: a run this short can end before its statistics are written.
    own = data["runs"]["locust-xmpp"][0]["own_counts"]
    assert (own["messages_sent"], own["deliveries"], own["failures"]) == (8, 16, 0), own


def test_ping_floor(tmp_path: Path) -> None:
    """5 sessions pinging twice a second, 2 s per path: the table and the JSON name the four paths in order,
    each with pings answered and a cost."""
    out = tmp_path / "floor.json"
    bench = run_benchmark("ping_floor.py", tmp_path, "--users", "5", "--interval", "0.5", "--window", "2",
                          "--json", str(out), timeout=120)  # fmt: skip
    assert bench.returncode == 0, bench.tail()
    data = json.loads(out.read_text())
    assert [row["path"] for row in data["paths"]] == ["raw", "parsed", "stats", "ids"], data
    for row in data["paths"]:
        assert row["pings"] > 0 and row["generator_ms_per_ping"] > 0, row
        assert bench.lines(rf"^{row['path']} +{row['pings']} "), bench.tail()
    assert data["users"] == 5 and set(data["memory_per_session"]) == {"session_kib", "with_greenlet_kib"}, data
    memory = r"^memory per idle session: [\d.-]+ KiB, [\d.-]+ KiB with a greenlet asleep in it$"
    assert bench.lines(memory), bench.tail()


def test_motion_replay(tmp_path: Path) -> None:
    """Two real Converse pages in motion (``fidelity cost --json``, Chromium), then their frames replayed beside
    two converse-14 viewers: every frame the pages sent is sent again, none waits past its cut, both sides
    cost the server something."""
    from xmpp_user.fidelity import converse

    if not Path(converse.CHROMIUM).exists():
        pytest.skip(f"{converse.CHROMIUM} is missing")
    cost = tmp_path / "cost.json"
    cli = Path(sys.executable).with_name("locust-xmpp")
    done = subprocess.run([str(cli), "fidelity", "cost", "--joins", "2", "--interval", "1", "--stay", "2", "--json",
                           str(cost)], cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "replay.json"
    bench = run_benchmark("motion_replay.py", tmp_path, str(cost), "--json", str(out), timeout=120)
    assert bench.lines(r"^prosody, 2 pages replayed: [\d.]+ ms/join; converse-14 viewers beside them"), bench.tail()
    result = json.loads(out.read_text())
    sent = sum(len(page["sent"]) for page in json.loads(cost.read_text())["runs"][0]["real"]["pages"])
    assert result["frames_sent"] == sent and result["stalls"] == 0, result
    assert result["replay_ms_per_join"] > 0 and result["viewers_ms_per_join"] > 0, result
