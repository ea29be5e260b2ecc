"""The files of a run and the report drawn from them, without Locust: the timeline's writers and the model's
readers agree, the report is written whatever the run lacks, and the server to observe is found or said why not."""

from __future__ import annotations

import json
import math
import os
from argparse import Namespace
from pathlib import Path

import pytest
from PIL import Image

from xmpp_user.observe import timeline
from xmpp_user.observe.model import (
    MissingData,
    NameStats,
    Sample,
    Snapshot,
    load_files,
    write_phase_stats,
    write_server,
    write_timeline,
)
from xmpp_user.observe.report import report_files
from xmpp_user.observe.timeline import find_server, same_url

T0 = 1_800_000_000.0
MIB = 2**20


def write_run(prefix: Path, server: bool = True, phases: bool = True) -> None:
    """A one-batch livechat-like run of 12 s: 5 viewers join, talk, leave. The talk waited 1 s for the server to
    go quiet; the leave gave up waiting after 2 s. The generator fell 0.8 s behind once, in the talk."""
    plan = [("batch1-join", 4, 5, 0.0, "quiet"), ("batch1-talk", 5, 5, 1.0, "quiet"),
            ("batch1-leave", 3, 0, 2.0, "2 replies outstanding")]  # fmt: skip
    log, t = [], T0
    for name, seconds, users, waited, settled in plan:
        log.append({"phase": name, "start_unix": t, "end_unix": t + seconds, "users": users, "connected_min": 0,
                    "connected_max": users, "params": {}, "skipped": False, "settle": 2.0, "waited": waited,
                    "settled": settled})  # fmt: skip
        t += seconds
    if phases:
        Path(f"{prefix}_phases.json").write_text(json.dumps(log))
    samples = []
    for i in range(13):
        users = min(5, i + 1) if i < 9 else 0
        phase = next((e["phase"] for e in log if e["start_unix"] <= T0 + i < e["end_unix"]), None)
        samples.append(Sample(T0 + i, phase, users, users, {"connect": min(5, i + 1), "message": max(0, i - 4) * 5},
                              {"connect": 1 if i >= 2 else 0}, {"sent": max(0, i - 4) * 5, "lost": 0},
                              lag=0.8 if i == 6 else 0.02))  # fmt: skip
    write_timeline(f"{prefix}_timeline.csv", samples)
    rows = []
    if server:
        cpu = 0.0
        for k in range(61):
            t = T0 + 0.2 * k
            cpu += 0.2 * (0.6 if t < T0 + 4 else 0.1)
            second = round(t - T0, 6) // 1
            sessions = min(5, second + 1) if second < 9 else 0
            rows.append((t, cpu, None if k == 0 else (60.0 if t <= T0 + 4 else 10.0), 20 * MIB + sessions * 256 * 1024))
    write_server(f"{prefix}_server.csv", rows)
    # The talk's 125 deliveries: 100 by its end, 25 in flight; the leave judges 2 of them lost.
    snaps = [
        Snapshot(T0, "batch1-join", {}, {"delivered": 0, "in_flight": 0, "lost": 0}),
        Snapshot(T0 + 4, "batch1-talk", {"connect": NameStats(5, 1, {12.0: 4, 300.0: 1})},
                 {"delivered": 0, "in_flight": 0, "lost": 0}),
        Snapshot(T0 + 9, "batch1-leave", {"connect": NameStats(5, 1, {12.0: 4, 300.0: 1}),
                                          "message": NameStats(25, 0, {4.0: 20, 9.0: 5})},
                 {"delivered": 100, "in_flight": 25, "lost": 0}),
        Snapshot(T0 + 12, None, {"connect": NameStats(5, 1, {12.0: 4, 300.0: 1}),
                                 "message": NameStats(25, 0, {4.0: 20, 9.0: 5, math.inf: 0})},
                 {"delivered": 123, "in_flight": 0, "lost": 2}),
    ]  # fmt: skip
    note = "" if server else "the server was not observed: no --xmpp-server-pid"
    write_phase_stats(f"{prefix}_phase_stats.json", snaps, {"pid": 42 if server else None,
                                                          "name": "Prosody (pid 42)", "note": note})  # fmt: skip


def test_files_round_trip(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    run = load_files(tmp_path / "run")
    assert [p.name for p in run.phases] == ["batch1-join", "batch1-talk", "batch1-leave"]
    assert len(run.timeline) == 13 and run.timeline[5].requests == {"connect": 5, "message": 5}
    assert run.timeline[5].failures == {"connect": 1, "message": 0} and run.timeline[5].truth == {"sent": 5, "lost": 0}
    assert [s.lag for s in run.timeline[5:8]] == [0.02, 0.8, 0.02]
    assert len(run.server) == 61 and run.server[0].cpu_percent is None and run.server[1].cpu_percent == 60.0
    assert [s.phase for s in run.snapshots] == ["batch1-join", "batch1-talk", "batch1-leave", None]
    assert run.snapshots[1].requests["connect"] == NameStats(5, 1, {12.0: 4, 300.0: 1})
    assert run.server_name == "Prosody (pid 42)" and run.server_note == ""
    assert run.server[0].cpu_seconds == pytest.approx(0.12) and run.server[-1].cpu_seconds == pytest.approx(3.22)
    assert [(p.waited, p.settled) for p in run.phases] == [(0.0, "quiet"), (1.0, "quiet"),
                                                           (2.0, "2 replies outstanding")]  # fmt: skip


def test_the_report_of_a_one_batch_run(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    report = report_files(tmp_path / "run")
    assert [c.name for c in report.charts] == [
        "run_report_server.png", "run_report_load.png",
    ]  # fmt: skip
    for chart in report.charts:
        with Image.open(chart) as image:
            assert image.format == "PNG" and image.size == (1100, 600 if "server" in chart.name else 550)
    page = report.html.read_text()
    assert page.count('<tr class="phase"') == 3
    # phase, start, seconds, waited (why in its title), users, sessions, CPU, RSS, messages/s, failures, lost,
    # in flight, generator lag
    assert ('<tr class="phase" data-phase="batch1-talk"><td>batch1-talk</td><td>4.0</td><td>5.0</td>'
            '<td title="settled: quiet">1.0</td><td>5</td><td>0–5</td>') in page  # fmt: skip
    assert page.count("<th>") + page.count("<th title=") == 16 + 4  # the phase table's 16 columns, the latency's 4
    # talk: messages/s, failures, lost, in flight, generator lag
    assert "<td>5.0</td><td>0</td><td>0</td><td>25</td><td>0.80</td></tr>" in page
    assert "<td>0.0</td><td>0</td><td>2</td><td>0</td><td>0.02</td></tr>" in page  # leave: 2 lost, none in flight
    assert '<td class="gave-up" title="gave up: 2 replies outstanding">2.0*</td>' in page
    assert ('<p class="footnote">* batch1-leave stopped waiting for the server after 2.0 s, before it went quiet: '
            "2 replies outstanding.</p>") in page  # fmt: skip
    data = json.loads(report.json.read_text())
    talk, leave = data["phases"][1:]
    assert (talk["messages"], talk["message_rate"], talk["failures"]) == (25, 5.0, 0)
    assert (talk["deliveries"], talk["delivery_rate"], talk["lost"], talk["in_flight"]) == (100, 20.0, 0, 25)
    assert (leave["deliveries"], leave["lost"], leave["in_flight"]) == (23, 2, 0)
    assert (talk["waited"], talk["settled"], leave["waited"], leave["settled"]) == (
        1.0, "quiet", 2.0, "2 replies outstanding",
    )  # fmt: skip
    assert talk["latency"]["message"] == {"requests": 25, "failures": 0, "p50": 4.0, "p95": 9.0}
    assert data["phases"][0]["cpu_mean"] == pytest.approx(60.0) and data["phases"][0]["failures"] == 1
    texts = {c["key"]: c["text"] for c in data["conclusions"]}
    assert list(texts) == ["vcards", "mam", "flooding", "memory", "failures", "generator"]
    assert "the run had 1 batch only" in texts["vcards"]
    assert texts["flooding"].startswith(
        "While the viewers talked, Prosody (pid 42) spent 5,000 µs of CPU per delivered message in batch1-talk (5.0 "
        "messages/s sent, 20 deliveries/s over 5.0 s; CPU mean 10 %, peak 10 %, 0.50 CPU-seconds). "
    )
    assert texts["failures"].startswith("Requests began to fail 2 s into the run in phase batch1-join, with 3 users")
    assert texts["generator"] == (
        "The generator ran behind its schedule: its event loop was up to 0.8 s late, in batch1-talk (0.8 s). The "
        "latencies measured there include up to that much of its own delay, not the server's; more workers, or "
        "fewer users per worker, remove it."
    )
    assert (talk["generator_lag"], data["phases"][0]["generator_lag"]) == (0.8, 0.02)
    assert texts["memory"] == (
        "The memory of Prosody (pid 42) grows by 256.0 KiB per connected session: RSS = 20.0 MiB + 256.0 KiB × "
        "sessions, R² 1.00, fitted to 9 samples from 1 to 5 sessions on the way to the first peak."
    )


def test_the_report_of_a_run_that_did_not_end_says_so(tmp_path: Path) -> None:
    # What a generator killed during its leave phase leaves: the phase in force has no end, no final snapshot.
    write_run(tmp_path / "run")
    log = json.loads(Path(f"{tmp_path / 'run'}_phases.json").read_text())
    log[-1]["end_unix"] = None
    Path(f"{tmp_path / 'run'}_phases.json").write_text(json.dumps(log))
    report = report_files(tmp_path / "run")
    data = json.loads(report.json.read_text())
    said = ("This run did not end: its files stop at 2027-01-15T08:00:12+00:00, 3 s into phase batch1-leave (the "
            "generator stopped or was killed).")  # fmt: skip
    assert data["unfinished"].startswith(said)
    assert said in report.html.read_text()
    assert [p["name"] for p in data["phases"]] == ["batch1-join", "batch1-talk", "batch1-leave"]
    write_run(tmp_path / "whole")
    assert json.loads(report_files(tmp_path / "whole").json.read_text())["unfinished"] is None


def test_the_report_without_server_samples_says_why(tmp_path: Path) -> None:
    write_run(tmp_path / "run", server=False)
    report = report_files(tmp_path / "run")
    assert [c.name for c in report.charts] == ["run_report_load.png"]
    page = report.html.read_text()
    assert "No server chart: the server was not observed: no --xmpp-server-pid." in page
    assert "The memory per connected session cannot be drawn, as the server was not observed" in page


def test_the_report_of_a_run_without_phases(tmp_path: Path) -> None:
    write_run(tmp_path / "run", phases=False)
    report = report_files(tmp_path / "run")
    assert report.rows == [] and len(report.charts) == 2
    # No phases: no scenario's conclusions.
    assert [c.key for c in report.conclusions] == ["memory", "failures", "generator"]


def test_a_run_without_files_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MissingData, match=r"run_timeline.csv does not exist: was the run made with --csv .*run\?$"):
        load_files(tmp_path / "run")


def test_same_url() -> None:
    assert same_url("ws://127.0.0.1:15280/xmpp-websocket", "ws://localhost:15280/xmpp-websocket/")
    assert not same_url("ws://127.0.0.1:15280/xmpp-websocket", "ws://127.0.0.1:15281/xmpp-websocket")
    assert not same_url("ws://127.0.0.1:15280/xmpp-websocket", "wss://127.0.0.1:15280/xmpp-websocket")
    assert not same_url("ws://127.0.0.1:15280/xmpp-websocket", "ws://chat.example.org:15280/xmpp-websocket")


def test_find_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUST_XMPP_LAB_DIR", str(tmp_path / "no-lab"))
    pid, name, note = find_server(Namespace(xmpp_server_pid=os.getpid()), "ws://127.0.0.1:1/x")
    assert pid == os.getpid() and name.endswith(f"(pid {pid})") and note.endswith("from --xmpp-server-pid")
    pid, _, note = find_server(Namespace(xmpp_server_pid=2**22 + 1), None)
    assert pid is None and note == f"no process {2**22 + 1} on this host (--xmpp-server-pid)"
    pid, _, note = find_server(Namespace(xmpp_server_pid=None), "ws://127.0.0.1:1/x")
    assert pid is None and note == (
        f"the server was not observed: --host is not the WebSocket URL of a lab running in {tmp_path / 'no-lab'} "
        "and no --xmpp-server-pid was given"
    )
    assert find_server(Namespace(xmpp_server_pid="None"), None)[0] is None  # the web UI form's empty field


def test_a_sampler_woken_late_skips_the_slots_it_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A generator busy for 1.3 s wakes its 0.2 s server sampler late: the next sample is the next slot ahead,
    # not six samples milliseconds apart (each of whose CPU % read thousands of per cent).
    monkeypatch.setattr(timeline.time, "monotonic", lambda: 101.3)
    assert timeline._next_slot(3, 100.0, 0.2) == 7
    monkeypatch.setattr(timeline.time, "monotonic", lambda: 100.65)
    assert timeline._next_slot(3, 100.0, 0.2) == 4  # on time: simply the next one
