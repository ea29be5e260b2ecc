"""Runs that go wrong must say so, and only so: a stalled server, a network cut, a user stopped with
requests in flight, a signal, a generator that dies. Each test starts a real headless Locust (and
workers) against the lab, injects one fault at a known moment, and reads what the run reported."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from faults import TcpProxy
from runs import REPO, Run, Started, locust_command, room_name

from xmpp_user.lab.lab import free_port

VIEWERS = 6
ONE_BATCH = [
    "--batches", "1", "--viewers", str(VIEWERS), "--join-rate", "20", "--talk-delay", "1", "--pause", "1",
    "--seed-messages", "10", "--seed-interval", "0.02", "--seed-wait", "1",
]  # fmt: skip


def livechat(tmp_path: Path, host: str, *args: str, name: str = "run") -> tuple[Started, Path]:
    prefix = tmp_path / name
    cmd = locust_command(
        "livechat.py", "--headless", "--host", host, "--xmpp-room", room_name(name), "--csv", str(prefix),
        "--only-summary", *ONE_BATCH, *args,
    )  # fmt: skip
    return Started(cmd, tmp_path / f"{name}.log"), prefix


def test_a_stalled_server_does_not_stop_the_talk(lab, tmp_path: Path) -> None:
    """Messages that time out while the server hangs are failures; the viewers keep their plan; the reflections
    that come after the stall still confirm the messages, so the truth is exact (it once counted them
    unconfirmed, and their deliveries unexpected)."""
    talk = 8
    with TcpProxy(("127.0.0.1", lab.http_port)) as proxy:
        run, prefix = livechat(tmp_path, proxy.url, "--talk-interval", "1", "--talk-duration", str(talk),
                               "--xmpp-timeout", "1.5")  # fmt: skip
        run.wait_for("Phase 'batch1-talk' starts")
        time.sleep(3)
        proxy.stall(3)
        code = run.finish()
    result = Run(code, run.output, 0.0, prefix)
    truth = result.truth
    assert code == 1, result.tail()  # the timeouts are failures
    assert "Traceback" not in result.output
    # Every planned message was sent (or, if its viewer was reconnecting, counted as skipped).
    assert truth["sent"] + truth["skipped"] == VIEWERS * talk + 10, truth
    assert result.count("message") == truth["sent"]  # each sent message is one request, ended once
    failed = {e["Name"] for e in result.errors}
    assert failed <= {"message", "ping", "stream", "vcard_occupant", "muc_leave"}, result.errors
    assert "message" in failed and "late_replies" in truth["deviations"], (result.errors, truth)
    assert truth["confirmed"] == truth["sent"] and truth["unconfirmed"] == 0, truth
    assert truth["delivered"] == truth["expected"] and truth["lost"] == truth["unexpected"] == 0, truth


def test_a_generator_that_falls_behind_says_so(lab, tmp_path: Path) -> None:
    """The generator's own process is stopped for longer than a message interval while its viewers talk, with
    the server well: the messages whose time passed are skipped as the generator's delay (they were once said
    to be skipped because their viewers were not connected), the delay is said once with its phase, and the
    truth stays exact."""
    talk = 8
    run, prefix = livechat(tmp_path, lab.websocket_url, "--talk-interval", "1", "--talk-duration", str(talk))
    run.wait_for("Phase 'batch1-talk' starts")
    time.sleep(3)
    os.kill(run.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)
    finally:
        os.kill(run.proc.pid, signal.SIGCONT)
    code = run.finish()
    result = Run(code, run.output, 0.0, prefix)
    truth = result.truth
    assert code == 0, result.tail()  # nothing the server did wrong
    deviations = truth["deviations"]
    assert set(deviations) - {"no_room_vcard"} == {"messages_late", "generator_behind"}, deviations
    # Each viewer was stopped past at least one message's time (2.5 s against an interval of 1 s).
    assert truth["skipped"] == deviations["messages_late"]["count"] >= VIEWERS, truth
    assert "the generator ran behind, not the server" in deviations["messages_late"]["message"]
    assert re.fullmatch(r"the load generator ran behind its schedule \(first by \d+\.\d s in phase '[\w-]+'\): .+",
                        deviations["generator_behind"]["message"]), deviations  # fmt: skip
    # The stop, in the samples of the phase it fell in: at least 2 of its 2.5 s. (Not which delay came first, nor
    # how far past the stop it went: on a busy machine both are the machine's.)
    lags = [float(r["generator_lag_s"]) for r in result.rows("timeline") if r["phase"] == "batch1-talk"]
    assert max(lags) >= 2.0, lags
    assert run.output.count("Run differs from the plan: the load generator ran behind") == 1
    assert truth["sent"] + truth["skipped"] == VIEWERS * talk + 10, truth
    assert truth["confirmed"] == truth["sent"] == result.count("message"), truth
    assert truth["delivered"] == truth["expected"] and truth["lost"] == truth["unexpected"] == 0, truth


def test_a_network_cut_mid_talk_loses_nothing(lab, tmp_path: Path) -> None:
    """Every connection is reset at once: the failures are recorded, the viewers reconnect and go on,
    and no message counts as lost (the receivers that were cut off are not judged for that time)."""
    talk = 8
    with TcpProxy(("127.0.0.1", lab.http_port)) as proxy:
        run, prefix = livechat(tmp_path, proxy.url, "--talk-interval", "1", "--talk-duration", str(talk))
        run.wait_for("Phase 'batch1-talk' starts")
        time.sleep(3)
        proxy.cut()
        code = run.finish()
    result = Run(code, run.output, 0.0, prefix)
    truth = result.truth
    assert code == 1, result.tail()
    assert "Traceback" not in result.output
    assert result.stats["stream"][1] == VIEWERS, result.errors  # one "connection lost" per viewer
    assert result.count("connect") == 2 * VIEWERS + 2, result.errors  # each viewer reconnected once (+2 seeders)
    assert result.count("muc_join") >= 2 * VIEWERS + 2
    assert truth["lost"] == 0 and truth["sent"] + truth["skipped"] == VIEWERS * talk + 10, truth
    assert truth["unverified"] >= 0 and truth["delivered"] > 0


def test_requests_in_flight_when_users_stop_are_not_failures(lab, tmp_path: Path) -> None:
    """A slow link (0.2 s each way) keeps pings and messages in flight when the run ends."""
    with TcpProxy(("127.0.0.1", lab.http_port), delay=0.2) as proxy:
        prefix = tmp_path / "slow"
        cmd = locust_command(
            # 6 s once left no time for a message on a busy machine: the login takes a dozen slow round trips.
            "quickstart.py", "--headless", "-u", "4", "-r", "4", "-t", "12s", "--host", proxy.url,
            "--xmpp-room", room_name("slow"), "--csv", str(prefix), "--only-summary",
        )  # fmt: skip
        run = Started(cmd, tmp_path / "slow.log")
        code = run.finish()
    result = Run(code, run.output, 0.0, prefix)
    assert result.count("message") > 0
    assert result.failures == 0, result.errors
    assert code == 0, result.tail()


def test_a_run_killed_midway_leaves_its_files_and_a_report(lab, tmp_path: Path, monkeypatch) -> None:
    """SIGKILL, as an OOM kill or an evicted pod: no handler runs, yet the run's own files up to a few seconds
    before are on disk (they used to be Locust's stats files only), and the report drawn from them says that
    the run did not end."""
    monkeypatch.setenv("LOCUST_XMPP_LAB_DIR", str(lab.run_dir))  # observe the lab's server
    run, prefix = livechat(tmp_path, lab.websocket_url, "--talk-interval", "1", "--talk-duration", "30")
    run.wait_for("Phase 'batch1-talk' starts")
    time.sleep(7)  # longer than the 5 s between two writes
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish(timeout=10)
    for suffix in ("timeline.csv", "server.csv", "phase_stats.json", "phases.json", "phases.csv", "truth.json"):
        assert Path(f"{prefix}_{suffix}").stat().st_size > 0, suffix
    truth = json.loads(Path(f"{prefix}_truth.json").read_text())
    assert truth["partial"].startswith("the run had not ended") and truth["sent"] > 10, truth
    phases = json.loads(Path(f"{prefix}_phases.json").read_text())
    assert [(p["phase"], p["end_unix"]) for p in phases][-1] == ("batch1-talk", None)
    report = subprocess.run([sys.executable, "-m", "xmpp_user.cli", "report", str(prefix)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    data = json.loads(Path(f"{prefix}_report.json").read_text())
    assert data["unfinished"].startswith("This run did not end: its files stop at "), data["unfinished"]
    assert "into phase batch1-talk" in data["unfinished"]
    assert [p["name"] for p in data["phases"]][-1] == "batch1-talk" and data["server"], data


def test_sigterm_stops_the_run_like_ctrl_c(lab, tmp_path: Path) -> None:
    run, prefix = livechat(tmp_path, lab.websocket_url, "--talk-interval", "1", "--talk-duration", "20")
    run.wait_for("Phase 'batch1-talk' starts")
    time.sleep(2)
    run.proc.send_signal(signal.SIGTERM)
    code = run.finish(timeout=30)
    result = Run(code, run.output, 0.0, prefix)
    assert code == 0, result.tail()
    assert "Got SIGTERM" in result.output and "Traceback" not in result.output
    # Users stopped (their leaves are requests), the files are written, and the early end is said.
    assert result.count("muc_leave") == VIEWERS + 2
    assert result.console_total == result.stats["Aggregated"]  # the leaves made at the very end included
    assert [p["phase"] for p in result.phases] == ["seed", "seed-leave", "batch1-join", "batch1-talk"]
    truth = result.truth
    assert truth["lost"] == 0 and truth["sent"] > 0
    assert "stopped during phase 'batch1-talk'" in truth["deviations"]["stopped_early"]["message"]


def distributed(tmp_path: Path, host: str, workers: int, *args: str) -> tuple[Started, list[Started], Path]:
    port, prefix = free_port(), tmp_path / "dist"
    master = Started(
        locust_command(
            "livechat.py", "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--expect-workers", str(workers), "--expect-workers-max-wait", "30", "--headless", "--host", host,
            "--csv", str(prefix), "--only-summary", "--xmpp-room", room_name("dist"), *ONE_BATCH, *args,
        ),
        tmp_path / "master.log",
    )  # fmt: skip
    worker_cmd = locust_command("livechat.py", "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
    return master, [Started(worker_cmd, tmp_path / f"worker-{i}.log") for i in range(workers)], prefix


def test_a_lost_worker_is_reported_and_its_users_are_not_judged(lab, tmp_path: Path) -> None:
    master, workers, prefix = distributed(tmp_path, lab.websocket_url, 2, "--talk-interval", "1",
                                          "--talk-duration", "10")  # fmt: skip
    try:
        master.wait_for("Phase 'batch1-talk' starts")
        time.sleep(2)
        # Frozen first, so that it reports nothing more while the other worker's viewers (one message a second
        # each) go on sending to its members: their deliveries are certain to be unreported, whenever its
        # last report came (killed at once, a report just before the kill left nothing unverified).
        os.kill(workers[1].proc.pid, signal.SIGSTOP)
        time.sleep(2)
        os.kill(workers[1].proc.pid, signal.SIGKILL)
        code = master.finish(timeout=90)
        workers[0].finish(timeout=20)
    finally:
        for p in [master, *workers]:
            p.kill()
    result = Run(code, master.output, 0.0, prefix)
    truth = result.truth
    assert code == 1, result.tail()  # a generator went missing: the run is not a clean one
    assert truth["missing_workers"] == 1 and truth["missing_users"] == VIEWERS // 2, truth
    assert "stopped answering" in truth["deviations"]["worker_missing"]["message"]
    assert result.output.count("Run differs from the plan: worker") == 1
    # The dead worker's receivers are not counted as losses of the server.
    assert truth["lost"] == 0 and truth["unverified"] > 0, truth


def test_sigterm_on_the_master_stops_its_workers(lab, tmp_path: Path) -> None:
    master, workers, prefix = distributed(tmp_path, lab.websocket_url, 2, "--talk-interval", "1",
                                          "--talk-duration", "30")  # fmt: skip
    try:
        master.wait_for("Phase 'batch1-talk' starts")
        time.sleep(1)
        master.proc.send_signal(signal.SIGTERM)
        code = master.finish(timeout=30)
        started = time.monotonic()
        worker_codes = [w.finish(timeout=20) for w in workers]
        assert time.monotonic() - started < 10  # told to quit, not left waiting for a heartbeat timeout
    finally:
        for p in [master, *workers]:
            p.kill()
    result = Run(code, master.output, 0.0, prefix)
    assert code == 0, (result.truth, result.tail())
    assert worker_codes == [0, 0]
    assert result.count("muc_leave") == VIEWERS + 2
    assert result.truth["lost"] == 0
