"""The locustfiles run for real against the lab servers: exact request mixes, message truth, phases,
and the failures that must not stop a run (see runs.py for how a run is driven and read)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from faults import TcpProxy
from runs import (
    LIVECHAT_SMALL,
    REPO,
    SEED,
    TALK,
    VIEWERS,
    Run,
    assert_phases_in_order,
    generator_skips,
    locust_command,
    read_archive,
    room_name,
    run_locust,
)  # fmt: skip
from test_client_observer import SlixmppObserver

from xmpp_user.lab.lab import Lab, free_port

# -- quickstart ------------------------------------------------------------------------------------


def test_quickstart_runs_without_failures(lab, tmp_path: Path) -> None:
    room = room_name("qs")
    run = run_locust(
        "quickstart.py", tmp_path / "qs", "--headless", "-u", "5", "-r", "5", "-t", "8s",
        "--host", lab.websocket_url, "--xmpp-room", room,
    )  # fmt: skip
    assert run.returncode == 0, run.tail()
    assert run.failures == 0, run.errors
    assert "Traceback" not in run.output
    # One session per user, never re-established: the negotiation and the on_session requests once each.
    for name in ("connect", "auth", "bind", "muc_join", "mam"):
        assert run.count(name) == 5, (name, run.stats)
    assert run.count("message") > 0
    assert run.count("muc_configure") == 1  # the first user created the room
    allowed = {"connect", "auth", "bind", "muc_join", "muc_configure", "mam", "message", "vcard", "ping", "Aggregated"}
    assert set(run.stats) <= allowed
    # Every message counted as reflected is in the room's archive; a message whose user was stopped
    # at the end of the run before its reflection arrived may be archived without being counted.
    archive = read_archive(lab, tmp_path, f"{room}@{lab.muc_domain}")
    assert all(a["body"].startswith("hello from u") for a in archive)
    assert run.count("message") <= len(archive) <= run.count("message") + 5


# -- failures that must not stop a run -------------------------------------------------------------


def test_server_down_is_recorded_and_users_retry_with_backoff(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    run = run_locust(
        "quickstart.py", tmp_path / "down", "--headless", "-u", "2", "-r", "2", "-t", "6s",
        "--host", f"ws://127.0.0.1:{port}/xmpp-websocket", timeout=60,
    )  # fmt: skip
    assert run.returncode == 1, run.tail()  # Locust's exit code for "some requests failed"
    assert run.elapsed >= 6  # the run went on for its whole duration
    assert "Traceback" not in run.output
    requests, failures = run.stats["connect"]
    assert set(run.stats) == {"connect", "Aggregated"}
    assert requests == failures
    # Backoff 1 s, 2 s, 4 s...: attempts at 0, 1, 3 (and 7) s per user, not a tight loop.
    assert 2 * 3 <= requests <= 2 * 4, requests
    (error,) = run.errors
    assert error["Name"] == "connect"
    assert error["Error"] == f"XmppRequestFailed('connection refused by 127.0.0.1:{port}')"
    first, last = (time.mktime(time.strptime(error[k], "%Y-%m-%dT%H:%M:%SZ")) for k in ("First Seen", "Last Seen"))
    assert last - first >= 2


def test_network_cut_mid_run_users_reconnect(lab, tmp_path: Path) -> None:
    room = room_name("cut")
    with TcpProxy(("127.0.0.1", lab.http_port)) as proxy:
        proc = subprocess.Popen(
            locust_command(
                "quickstart.py", "--headless", "-u", "3", "-r", "3", "-t", "12s", "--host", proxy.url,
                "--xmpp-room", room, "--csv", str(tmp_path / "cut"), "--only-summary",
            ),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while len(proxy.pairs) < 3:
                assert proc.poll() is None and time.monotonic() < deadline, "the users never connected"
                time.sleep(0.05)
            time.sleep(2)
            cut_at = time.time()
            proxy.cut()  # every user's connection is reset at once
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run = Run(proc.returncode, output, 0.0, tmp_path / "cut")
    assert run.returncode == 1, run.tail()
    assert "Traceback" not in run.output
    reason = "receive failed: [Errno 104] Connection reset by peer"
    assert run.stats["stream"] == (3, 3)
    # Requests in flight at the cut fail with the same reason; nothing else fails.
    assert {e["Error"] for e in run.errors} <= {
        f"XmppRequestFailed('connection lost: {reason}')", f"XmppRequestFailed('{reason}')",
    }  # fmt: skip
    # Each user reconnected once, at once (no backoff after a lost session), and rejoined the room.
    for name in ("connect", "auth", "bind", "muc_join", "mam"):
        assert run.stats[name] == (6, 0), (name, run.stats)
    archive = read_archive(lab, tmp_path, f"{room}@{lab.muc_domain}")
    after = [(a["nick"], round(a["t"] - cut_at, 2)) for a in archive if a["t"] > cut_at + 0.5]
    # Every user talked again. A user back before the server has dropped its old session finds its nick still
    # taken in the room and joins as nick-2 (xmpp_user.session.muc, as Converse does): the same user.
    assert {re.sub(r"-\d+$", "", nick) for nick, _ in after} == {"u0", "u1", "u2"}, (after, run.stats)


@pytest.mark.parametrize(
    ("locustfile", "args", "message"),
    [
        ("quickstart.py", ["--xmpp-auth", "foo"], ": error: argument --xmpp-auth: invalid choice: 'foo'"),
        ("quickstart.py", ["--xmpp-timeout", "-1"],
         ": error: argument --xmpp-timeout: invalid positive float value: '-1'"),
        ("quickstart.py", ["--xmpp-accounts", "0"],
         ": error: argument --xmpp-accounts: invalid positive int value: '0'"),
        ("quickstart.py", ["--host", "http://x"],
         "locust-xmpp: error: not a WebSocket URL (ws:// or wss://): 'http://x'"),
        ("quickstart.py", ["--host", "ws://127.0.0.1:99999/xmpp-websocket"],
         "locust-xmpp: error: bad port in WebSocket URL"),
        ("livechat.py", ["--xmpp-auth", "scram", "--xmpp-credentials", "/nonexistent.csv"],
         "locust-xmpp: error: cannot read --xmpp-credentials /nonexistent.csv"),
        ("livechat.py", ["--viewers", "0"], ": error: argument --viewers: invalid positive int value: '0'"),
        ("livechat.py", ["--talk-delay", "-1"],
         ": error: argument --talk-delay: invalid non-negative float value: '-1'"),
        ("livechat.py", ["--seed-wait", "-5"], ": error: argument --seed-wait: invalid non-negative float value: '-5'"),
        ("livechat.py", ["--pause", "-100"], ": error: argument --pause: invalid non-negative float value: '-100'"),
        ("jitsi.py", ["--hold", "-1"], ": error: argument --hold: invalid non-negative float value: '-1'"),
        ("quickstart.py", ["--xmpp-credentials", "accounts.csv"],
         "locust-xmpp: error: --xmpp-credentials needs --xmpp-auth plain or scram"),
        ("quickstart.py", ["--xmpp-room", "bad room@x"],
         "locust-xmpp: error: bad --xmpp-domain, --xmpp-muc or --xmpp-room: invalid JID"),
    ],
    ids=["auth", "timeout", "accounts", "http-url", "bad-port", "credentials", "viewers", "talk-delay", "seed-wait",
         "pause", "hold", "credentials-anonymous", "room"],
)  # fmt: skip
def test_bad_command_line_values_end_with_one_line(locustfile: str, args: list[str], message: str) -> None:
    argv = ["--headless", "-u", "1", "-r", "1", "-t", "2s", "--host", "ws://127.0.0.1:9/xmpp-websocket", *args]
    proc = subprocess.run(locust_command(locustfile, *argv), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # argparse names the program as it was run (python -m locust: "__main__.py"); ours says locust-xmpp.
    assert message in last and last.index(message) == (0 if message.startswith("locust-xmpp") else last.index(":"))


@pytest.fixture(scope="module")
def web_ui_run_with_bad_host(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The web UI path (no --headless, so the start-up check does not apply): the users see the bad URL."""
    prefix = tmp_path_factory.mktemp("badhost") / "run"
    return run_locust(
        "quickstart.py", prefix, "--autostart", "--autoquit", "0", "-u", "2", "-r", "2", "-t", "3s",
        "--web-host", "127.0.0.1", "--web-port", str(free_port()), "--host", "http://x", timeout=60,
    )  # fmt: skip


def test_bad_host_in_the_web_ui_is_a_config_failure(web_ui_run_with_bad_host: Run) -> None:
    run = web_ui_run_with_bad_host
    assert run.returncode == 1, run.tail()
    assert run.stats == {"config": (2, 2), "Aggregated": (2, 2)}
    (error,) = run.errors
    assert error["Error"] == "ValueError(\"not a WebSocket URL (ws:// or wss://): 'http://x'\")"
    assert run.output.count("locust-xmpp: not a WebSocket URL (ws:// or wss://): 'http://x'") == 2


def test_bad_host_in_the_web_ui_logs_no_traceback(web_ui_run_with_bad_host: Run) -> None:
    assert "Traceback" not in web_ui_run_with_bad_host.output


# -- livechat --------------------------------------------------------------------------------------


PROFILE_VIEWERS = 6
DOMAIN_ITEMS = {"prosody": 3, "ejabberd": 2}
"""The lab domain's disco#items: Prosody lists its MUC service and two other hosts, ejabberd its MUC and pubsub."""
HOSTS_AMONG_ITEMS = {"prosody": 2, "ejabberd": 0}
"""Items that are servers, whose items Converse asks for in turn."""


def browser_client_mix(server: str, n: int, occupant_vcards: int, carbons: bool, watcher: int = 0) -> dict[str, int]:
    """One batch of n viewers of the converse-14 or peertube-livechat profile, after the 2 seeders left
    (the authors of the archive), with ``watcher`` other sessions in the room before the viewers."""
    prosody = server == "prosody"
    return {
        "connect": n + 2 + watcher, "pep_items": n, "roster": n, "blocklist": n, "vcard_set": n,
        "disco_info": n * (3 + DOMAIN_ITEMS[server]),  # the domain, the room, its reserved-nick node, each item
        "disco_items": n * (1 + HOSTS_AMONG_ITEMS[server]),
        "vcard": 2 * n,  # own, and again when the server reflects our presence with our avatar's hash
        # The room's, at login and (Prosody puts an avatar element in every occupant presence) for each
        # occupant presence: those in the room at our join, our own, and the later joiners.
        "vcard_room": n * (1 + n + watcher) if prosody else n,
        "vcard_occupant": occupant_vcards, "mam": n, "carbons": n if carbons else 0,
        "muc_register_query": n if prosody else 0,  # the room offers registration on Prosody only
        "muc_join": n + 2 + watcher, "muc_leave": 2 + (0 if watcher else n),
        "message": n * 3 + SEED,
    }  # fmt: skip


@pytest.mark.parametrize(("server", "client"), [("prosody", "converse-14"), ("ejabberd", "peertube-livechat")])
def test_livechat_browser_viewers_leave_as_closed_tabs(server: str, client: str, tmp_path: Path) -> None:
    """Viewers of a browser client profile (one per server, to keep CI short; the fidelity tests drive
    converse-14 on both) whose tabs close: the exact request mix of the profile, and the server keeps each
    viewer in the room until its resumable session times out (3 s on this lab); the request 'ghost' says
    how long that was."""
    lab = Lab(tmp_path / "lab", c2s_port=free_port(), http_port=free_port(), server=server, resume_timeout=3)
    if lab.unavailable():
        pytest.skip(lab.unavailable())
    lab.up()
    try:
        n = PROFILE_VIEWERS
        run = run_locust("livechat.py", tmp_path / "tabs", "--headless", "--host", lab.websocket_url,
                         "--xmpp-room", room_name("tabs"), *LIVECHAT_SMALL, "--viewers", str(n), "--batches", "1",
                         "--client", client, "--leave", "drop", "--ghost-wait", "4")  # fmt: skip
    finally:
        lab.down()
    assert run.returncode == 0, run.tail()
    assert run.failures == 0, run.errors
    # converse-14: each viewer asks the other viewers' vCards, the watcher's and the 2 seeders' (the authors of
    # the archive). peertube-livechat (its sidebar closed) only the seeders', and enables no carbons.
    converse = client == "converse-14"
    occupant_vcards = n * (n - 1) + n + 2 * n if converse else 2 * n
    expected = browser_client_mix(server, n, occupant_vcards, carbons=converse, watcher=1)
    assert {k: run.count(k) for k in expected} == expected
    assert run.truth["lost"] == 0 and "ghosts_outlived_run" not in run.truth["deviations"]
    (ghosts,) = [r for r in run.rows("stats") if r["Name"] == "ghost"]
    assert (int(ghosts["Request Count"]), int(ghosts["Failure Count"])) == (n, 0)
    assert 3000 <= float(ghosts["Min Response Time"]) <= float(ghosts["Max Response Time"]) < 3000 + 2500, ghosts


def test_livechat_one_batch_without_mam(lab, tmp_path: Path) -> None:
    seed = 7  # odd: the two seeders post 4 and 3
    run = run_locust("livechat.py", tmp_path / "nomam", "--headless", "--host", lab.websocket_url,
                     "--xmpp-room", room_name("nomam"), *LIVECHAT_SMALL, "--batches", "1", "--no-mam",
                     "--seed-messages", str(seed))  # fmt: skip
    assert run.returncode == 0, run.tail()
    assert run.failures == 0, run.errors
    n = VIEWERS
    assert (run.count("mam"), run.count("carbons"), run.count("vcard"), run.count("vcard_occupant")) == (
        0, n, 2 * n, n * (n - 1),
    )  # fmt: skip
    assert run.count("muc_join") == n + 2
    assert run.truth["lost"] == 0 and run.truth["sent"] == TALK + seed - generator_skips(run.truth)
    assert_phases_in_order(run, ["seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave"])


# -- jitsi -----------------------------------------------------------------------------------------


def occupancy(presences: list[dict[str, Any]], at: float, me: str = "observer") -> set[str]:
    """Who was in the room at time ``at``, from the presences the observer received."""
    inside: set[str] = set()
    for p in presences:
        if p["t"] > at:
            break
        if p["nick"] == me:
            continue
        if p["type"] == "unavailable":
            inside.discard(p["nick"])
        else:
            inside.add(p["nick"])
    return inside


def test_jitsi_rooms_hold_their_participants(lab, tmp_path: Path) -> None:
    base = room_name("jitsi")
    rooms = [f"{base}{k}@{lab.muc_domain}" for k in range(2)]
    observer = SlixmppObserver(lab, tmp_path, rooms, archive=[], max_seconds=120)
    with observer:
        run = run_locust(
            "jitsi.py", tmp_path / "jitsi", "--headless", "--host", lab.websocket_url, "--xmpp-room", base,
            "--jitsi-rooms", "2", "--jitsi-participants", "5", "--batch-size", "5", "--batch-interval", "2",
            "--hold", "3", "--ping-interval", "1",
        )  # fmt: skip
        seen = observer.stop()
    assert run.returncode == 0, run.tail()
    assert run.failures == 0, run.errors
    assert run.count("muc_join") == run.count("muc_leave") == run.count("connect") == 10
    assert run.count("ping") > 0
    assert run.count("focus") == 0  # no focus configured in the lab
    assert_phases_in_order(run, ["batch1", "batch2", "hold", "leave"])
    assert [int(p["users"]) for p in run.phases] == [5, 10, 10, 0]
    assert seen["error"] is None, observer.report()
    hold = next(p for p in run.phases if p["phase"] == "hold")
    middle = (float(hold["start_unix"]) + float(hold["end_unix"])) / 2
    # Each batch fills a conference of its own, as the field's batches did: nobody in the second room before the
    # second batch began.
    batch2 = float(next(p for p in run.phases if p["phase"] == "batch2")["start_unix"])
    assert occupancy(seen["presence"][rooms[1]], batch2) == set()
    for room in rooms:
        presences = seen["presence"][room]
        participants = {p["nick"] for p in presences if p["nick"] != "observer"}
        assert len(participants) == 5 and all(len(nick) == 8 for nick in participants), participants
        assert occupancy(presences, middle) == participants  # all five in the room during the hold
        assert occupancy(presences, time.time()) == set()  # and all gone at the end
        peak = max(len(occupancy(presences, p["t"])) for p in presences)
        assert peak == 5


# -- distributed -----------------------------------------------------------------------------------


def test_livechat_distributed_over_two_workers(lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUST_XMPP_LAB_DIR", str(lab.run_dir))  # the master observes the lab's server
    port, prefix, room = free_port(), tmp_path / "dist", room_name("dist")
    master_cmd = locust_command(
        "livechat.py", "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--expect-workers", "2", "--expect-workers-max-wait", "30", "--headless", "--host", lab.websocket_url,
        "--csv", str(prefix), "--only-summary", "--xmpp-room", room, *LIVECHAT_SMALL, "--batches", "1",
    )  # fmt: skip
    worker_cmd = locust_command("livechat.py", "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"proc-{i}.log" for i in range(3)]
    try:
        for cmd, log in zip([master_cmd, worker_cmd, worker_cmd], logs, strict=True):
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
        master_code = procs[0].wait(timeout=120)
        worker_codes = [p.wait(timeout=20) for p in procs[1:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    master_log = logs[0].read_text()
    assert master_code == 0, master_log[-3000:]
    assert worker_codes == [0, 0], [log.read_text()[-2000:] for log in logs[1:]]
    run = Run(master_code, master_log, 0.0, prefix)
    assert run.failures == 0, run.errors
    n = VIEWERS
    assert run.count("vcard_occupant") == n * (n - 1)
    assert run.count("muc_join") == run.count("muc_leave") == n + 2
    truth = run.truth
    talk = TALK - generator_skips(truth)
    assert run.count("message") == talk + SEED
    assert truth["lost"] == 0 and truth["duplicated"] == 0
    assert truth["delivered"] == truth["expected"] == talk * n + SEED * 2 == run.count("message_delivery")
    assert_phases_in_order(run, ["seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave"])
    # The master sampled the run with the workers' statistics, and wrote the report once they had all come in.
    phase_stats = json.loads(Path(f"{prefix}_phase_stats.json").read_text())
    assert phase_stats["server"]["pid"] == lab.pid
    assert [s["phase"] for s in phase_stats["snapshots"]] == [p["phase"] for p in run.phases] + [None]
    assert phase_stats["snapshots"][-1]["requests"]["vcard_occupant"]["requests"] == n * (n - 1)
    assert Path(f"{prefix}_report.html").stat().st_size > 0 and Path(f"{prefix}_report_server.png").exists()
    # The workers' event loop delays reached the master's timeline (a worker's loop is never exactly on time).
    lags = [float(r["generator_lag_s"]) for r in run.rows("timeline")]
    assert min(lags) >= 0 and max(lags) > 0, lags
    archive = read_archive(lab, tmp_path, f"{room}@{lab.muc_domain}")
    assert len(archive) == talk + SEED


def test_livechat_on_stock_room_settings(stock_lab, tmp_path: Path) -> None:
    """Each server's own room defaults: temporary rooms (created by their first viewer, locked until it
    configures them on Prosody) whose archive goes with them. The run is clean, and says that the
    viewers found no archive where the test had seeded one."""
    room = room_name("stock")
    run = run_locust("livechat.py", tmp_path / "stock", "--headless", "--host", stock_lab.websocket_url,
                     "--xmpp-room", room, *LIVECHAT_SMALL, "--batches", "2")  # fmt: skip
    assert run.returncode == 0, run.tail()
    assert run.failures == 0, run.errors
    n = VIEWERS
    assert run.count("muc_join") == run.count("muc_leave") == 2 * n + 2
    assert run.count("mam") == 2 * n and run.count("vcard_occupant") == n * (n - 1)
    truth = run.truth
    talk = 2 * TALK - generator_skips(truth)
    assert truth["lost"] == 0 and truth["unexpected"] == 0 and truth["sent"] == talk + SEED, truth
    assert truth["delivered"] == truth["expected"] == talk * n + SEED * 2
    # The seeders' room emptied, so the server destroyed it and its archive: said once, counted per viewer.
    assert truth["deviations"]["archive_short"]["count"] == 2 * n, truth["deviations"]
    assert "returned 0 messages where the test seeded 50" in truth["deviations"]["archive_short"]["message"]
    # Every room was created by its first joiner, who configured it as Converse does (an instant room).
    assert run.count("muc_configure") == 3
