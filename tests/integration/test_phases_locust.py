"""A real headless Locust run, master and two workers on loopback (and a third that joins
during the second phase): phases reach every worker, the phase files are written, and the
truth totals on the master add up to what the workers did.

The users need no server: each worker's users form an in-process room, and a message "sent"
by one is handed at once to every user in the room.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60

LOCUSTFILE = """
from __future__ import annotations

import json
import os
import time
from xml.etree.ElementTree import fromstring

from locust import User, constant, events, task
from locust.runners import WorkerRunner

from xmpp_user.run import outcome, phases, truth
from xmpp_user.run.phases import Phase, PhasedShape

OUT = os.environ["PHASES_TEST_OUT"]
ROOM: list[Chatter] = []
DONE = {"sent": 0, "expected": 0, "delivered": 0, "duplicated": 0, "callbacks": [], "spawned_in": []}


@events.init.add_listener
def _install(environment, **_kw):
    phases.install(environment)
    outcome.install(environment)


phases.on_phase_change.append(lambda phase: DONE["callbacks"].append(phase.name))


@events.quitting.add_listener
def _dump(environment, **_kw):
    if isinstance(environment.runner, WorkerRunner):
        with open(os.path.join(OUT, f"worker-{os.getpid()}.json"), "w") as f:
            json.dump(DONE, f)


class Chatter(User):
    wait_time = constant(0.1)

    def on_start(self):
        phase = phases.current_phase()
        DONE["spawned_in"].append(phase.name if phase else None)
        sender_id = outcome.sender_id(self.environment)
        self.sender = truth.Sender(sender_id)
        self.receiver = truth.Receiver(truth.new_member(sender_id))
        ROOM.append(self)

    def on_stop(self):
        ROOM.remove(self)

    @task
    def talk(self):
        phase = phases.current_phase()
        if phase is None or not phase.params.get("talk"):
            return
        marker = self.sender.next_marker(time.time() * 1000)
        xml = f"<message xmlns='jabber:client' type='groupchat'><body>hi</body>{marker}</message>"
        # The room "reflects" it at once, to everyone in it.
        truth.TALLY.sent += 1
        truth.TALLY.confirm(frozenset(member.receiver.member for member in ROOM), self.sender.group)
        DONE["sent"] += 1
        DONE["expected"] += len(ROOM)
        for member in list(ROOM):
            latency = member.receiver.receive(truth.find_marker(fromstring(xml)), time.time() * 1000)
            if latency is None:
                DONE["duplicated"] += 1
                continue
            DONE["delivered"] += 1
            self.environment.events.request.fire(
                request_type="XMPP", name="message_delivery", response_time=latency,
                response_length=0, exception=None, context={},
            )


class ThreePhases(PhasedShape):
    def phases(self):
        return [
            Phase("join", 2, 4, 50, params={"talk": False}),
            Phase("talk", 4, 4, 50, params={"talk": True}),
            Phase("leave", 2, 0, 50, params={"talk": False}),
        ]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_phases_and_truth_in_a_distributed_headless_run(tmp_path: Path) -> None:
    locustfile = tmp_path / "locustfile_phases.py"
    locustfile.write_text(LOCUSTFILE)
    port = str(_free_port())
    env = {**os.environ, "PHASES_TEST_OUT": str(tmp_path), "PYTHONPATH": str(REPO)}
    locust = [sys.executable, "-m", "locust", "-f", str(locustfile), "--loglevel", "INFO"]
    master_cmd = [
        *locust,
        "--headless",
        "--master",
        "--master-bind-host=127.0.0.1",
        f"--master-bind-port={port}",
        "--expect-workers=2",
        "--expect-workers-max-wait=30",
        "--csv",
        str(tmp_path / "run"),
    ]
    worker_cmd = [*locust, "--worker", "--master-host=127.0.0.1", f"--master-port={port}"]

    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> None:
        with open(tmp_path / f"proc-{len(procs)}.log", "wb") as out:
            procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))

    deadline = time.monotonic() + TIMEOUT
    try:
        for cmd in [master_cmd, worker_cmd, worker_cmd]:
            start(cmd)
        while "Phase 'talk' starts" not in (tmp_path / "proc-0.log").read_text():
            assert procs[0].poll() is None and time.monotonic() < deadline, "the talk phase never started"
            time.sleep(0.1)
        start(worker_cmd)
        master_code = procs[0].wait(timeout=max(1.0, deadline - time.monotonic()))
        worker_codes = [p.wait(timeout=15) for p in procs[1:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"proc-{i}.log").read_text() for i in range(len(procs))]
    master_log = logs[0]
    assert master_code == 0, master_log
    assert worker_codes == [0, 0, 0], logs[1:]

    # The phases, in order, with increasing actual times.
    with open(tmp_path / "run_phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["join", "talk", "leave"], rows
    times = [float(t) for r in rows for t in (r["start_unix"], r["end_unix"])]
    assert all(a < b for a, b in zip(times[0::2], times[1::2], strict=True)), times
    assert all(a <= b for a, b in zip(times, times[1:], strict=False)), times
    assert [json.loads(r["params_json"]) for r in rows] == [{"talk": False}, {"talk": True}, {"talk": False}]
    assert [e["phase"] for e in json.loads((tmp_path / "run_phases.json").read_text())] == ["join", "talk", "leave"]

    # Every worker saw every phase, once and in order, and spawned its users in the first one;
    # the late worker learnt the phase in force when it joined, and the next one.
    reports = [json.loads((tmp_path / f"worker-{p.pid}.json").read_text()) for p in procs[1:]]
    for report in reports[:2]:
        assert report["callbacks"] == ["join", "talk", "leave"], report
        assert report["spawned_in"] == ["join"] * len(report["spawned_in"]) and report["spawned_in"], report
    assert reports[2]["callbacks"] == ["talk", "leave"], reports[2]
    assert all(name == "talk" for name in reports[2]["spawned_in"]), reports[2]

    # The master's totals are the sum of what the workers did.
    totals = json.loads((tmp_path / "run_truth.json").read_text())
    done = {k: sum(r[k] for r in reports) for k in ("sent", "expected", "delivered", "duplicated")}
    assert done["sent"] > 0, reports
    assert {k: totals[k] for k in done} == done, (totals, reports)
    assert (totals["lost"], totals["unexpected"], totals["unverified"], totals["out_of_order"]) == (0, 0, 0, 0)
    assert "Message truth: sent=" in master_log

    # Locust's own stats of the deliveries made it to the master as well.
    with open(tmp_path / "run_stats.csv", newline="") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(stats["message_delivery"]["Request Count"]) == done["delivered"]
