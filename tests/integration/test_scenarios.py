"""The field scenarios run for real, headless, against the lab Prosody: exact request mix,
zero failures, zero lost messages, phases in order."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LIVECHAT_SMALL = [
    "--viewers", "10", "--join-rate", "10", "--talk-delay", "2", "--talk-interval", "1", "--talk-duration", "3",
    "--pause", "2", "--seed-messages", "50", "--seed-interval", "0.02", "--seed-wait", "1",
]  # fmt: skip


def run_locust(locustfile: str, host: str, out: Path, *args: str, timeout: float = 150) -> dict[str, dict]:
    """Run a headless Locust; returns the stats rows by request name (plus 'returncode', 'log')."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / locustfile), "--headless",
        "--host", host, "--csv", str(out), "--only-summary", "--xmpp-room", f"it-{uuid.uuid4().hex[:8]}", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    rows = {}
    with open(f"{out}_stats.csv") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"])}
    rows["returncode"] = proc.returncode
    rows["log"] = proc.stderr
    return rows


def count(rows: dict, name: str) -> int:
    return rows.get(name, {"requests": 0})["requests"]


def phases_of(out: Path) -> list[dict]:
    with open(f"{out}_phases.csv") as f:
        return list(csv.DictReader(f))


def test_livechat_field_test_scaled_down(lab, tmp_path: Path) -> None:
    out = tmp_path / "livechat"
    rows = run_locust("livechat.py", lab.websocket_url, out, *LIVECHAT_SMALL)
    n = 10
    assert rows["returncode"] == 0, rows["log"]
    assert rows["Aggregated"]["failures"] == 0, rows["log"]
    # vCards only in batch 1: own + room vCard per viewer, and every other occupant's.
    assert count(rows, "vcard_occupant") == n * (n - 1)
    assert count(rows, "vcard") == 2 * n
    assert count(rows, "mam") == 2 * n  # batches 1 and 2
    assert count(rows, "disco_info") == 3 * 3 * n
    assert count(rows, "roster") == count(rows, "carbons") == count(rows, "disco_items") == 3 * n
    assert count(rows, "muc_join") == count(rows, "muc_leave") == 3 * n + 2  # and the 2 seeders
    talk = 3 * n * 3  # 3 batches, n viewers, 3 s of talk at 1 message/s
    assert count(rows, "message") == talk + 50
    truth = json.loads(Path(f"{out}_truth.json").read_text())
    assert truth["sent"] == talk + 50
    assert truth["lost"] == 0 and truth["duplicated"] == 0
    assert truth["delivered"] == truth["expected"] == count(rows, "message_delivery")
    # Talk phases have n listeners per message; the seeders' messages reach 1 or 2 of them.
    assert truth["expected"] >= talk * n
    names = [p["phase"] for p in phases_of(out)]
    assert names == ["seed", "seed-leave"] + [f"batch{b}-{s}" for b in (1, 2, 3) for s in ("join", "talk", "leave")]
    starts = [float(p["start_unix"]) for p in phases_of(out)]
    assert starts == sorted(starts)


def test_livechat_feature_switches(lab, tmp_path: Path) -> None:
    out = tmp_path / "switches"
    rows = run_locust(
        "livechat.py", lab.websocket_url, out, *LIVECHAT_SMALL, "--batches", "1", "--no-mam", "--no-carbons"
    )
    assert rows["returncode"] == 0, rows["log"]
    assert count(rows, "mam") == 0
    assert count(rows, "carbons") == 0
    assert count(rows, "vcard_occupant") == 90
    assert [p["phase"] for p in phases_of(out)][-1] == "batch1-leave"


def test_jitsi_rooms_and_participants(lab, tmp_path: Path) -> None:
    out = tmp_path / "jitsi"
    rows = run_locust(
        "jitsi.py", lab.websocket_url, out,
        "--jitsi-rooms", "2", "--jitsi-participants", "5", "--batch-size", "4", "--batch-interval", "2",
        "--hold", "3", "--ping-interval", "1",
    )  # fmt: skip
    assert rows["returncode"] == 0, rows["log"]
    assert rows["Aggregated"]["failures"] == 0
    assert count(rows, "muc_join") == count(rows, "muc_leave") == 10
    assert count(rows, "ping") >= 10
    assert count(rows, "focus") == 0
    assert "No focus configured" in rows["log"]
    assert [p["phase"] for p in phases_of(out)] == ["batch1", "batch2", "batch3", "hold", "leave"]
    assert [int(p["users"]) for p in phases_of(out)] == [4, 8, 10, 10, 0]


@pytest.mark.parametrize("bad", ["ws://127.0.0.1:9/xmpp-websocket"])
def test_server_down_is_recorded_and_the_run_goes_on(tmp_path: Path, bad: str) -> None:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "quickstart.py"), "--headless",
        "-u", "3", "-r", "3", "-t", "5s", "--host", bad, "--csv", str(tmp_path / "down"), "--only-summary",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1  # Locust's code for "some requests failed"
    assert "Traceback" not in proc.stderr
    assert "connection refused by 127.0.0.1:9" in proc.stderr
    with open(tmp_path / "down_stats.csv") as f:
        connect = next(r for r in csv.DictReader(f) if r["Name"] == "connect")
    # Each user retried with backoff (1 s, 2 s, ...), not in a tight loop.
    assert 3 <= int(connect["Failure Count"]) <= 15


def test_livechat_distributed_master_and_two_workers(lab, tmp_path: Path) -> None:
    from xmpp_user.lab.lab import free_port

    port, out = free_port(), tmp_path / "dist"
    locustfile = str(REPO / "locustfiles" / "livechat.py")
    master = subprocess.Popen(
        [
            sys.executable, "-m", "locust", "-f", locustfile, "--master", "--expect-workers", "2",
            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--headless",
            "--host", lab.websocket_url, "--csv", str(out), "--only-summary", "--batches", "1",
            "--xmpp-room", f"dist-{uuid.uuid4().hex[:8]}", *LIVECHAT_SMALL,
        ],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                locustfile,
                "--worker",
                "--master-host",
                "127.0.0.1",
                "--master-port",
                str(port),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        log, _ = master.communicate(timeout=120)
    finally:
        for p in [master, *workers]:
            p.kill()
            p.wait()
    assert master.returncode == 0, log[-3000:]
    with open(f"{out}_stats.csv") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert rows["Aggregated"]["Failure Count"] == "0"
    assert rows["vcard_occupant"]["Request Count"] == "90"
    truth = json.loads(Path(f"{out}_truth.json").read_text())
    assert truth["lost"] == 0 and truth["duplicated"] == 0
    assert truth["delivered"] == truth["expected"] == int(rows["message_delivery"]["Request Count"]) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "http://example.org/ws"], "locust-xmpp: error: not a WebSocket URL (ws:// or wss://)"),
        (
            ["--host", "ws://127.0.0.1:9/ws", "--xmpp-auth", "scram", "--xmpp-credentials", "/nonexistent.csv"],
            "locust-xmpp: error: cannot read --xmpp-credentials /nonexistent.csv",
        ),
        (["--host", "ws://127.0.0.1:9/ws", "--xmpp-auth", "kerberos"], "argument --xmpp-auth: invalid choice"),
        (["--host", "ws://127.0.0.1:9/ws", "--xmpp-timeout", "-1"], "invalid positive float value: '-1'"),
        (["--host", "ws://127.0.0.1:9/ws", "--viewers", "0"], "invalid positive int value: '0'"),
    ],
    ids=["url", "credentials", "auth", "timeout", "viewers"],
)
def test_bad_command_line_values_get_one_line_and_exit_2(args: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "livechat.py"), "--headless", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
