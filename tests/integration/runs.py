"""Running Locust for real in tests: headless subprocesses bounded by --run-time, a phase plan or a
subprocess timeout, judged by the files Locust and locust-xmpp write and, where it matters, by an
independent slixmpp client reading the rooms and their archives."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_client_observer import SlixmppObserver

REPO = Path(__file__).resolve().parents[2]
LIVECHAT_SMALL = [
    "--viewers", "10", "--join-rate", "10", "--talk-delay", "2", "--talk-interval", "1", "--talk-duration", "3",
    "--pause", "2", "--seed-messages", "50", "--seed-interval", "0.02", "--seed-wait", "1",
]  # fmt: skip
VIEWERS = 10
TALK = VIEWERS * 3  # each viewer talks for 3 s at 1 message/s, in every batch
SEED = 50


def generator_skips(truth: dict[str, Any]) -> int:
    """The talk messages a run skipped because the generator itself reached them an interval late (one process of
    a suite on a busy machine can be): on a server that does nothing wrong the only skips there may be, each said
    as such. Asserts that, and returns their count, by which a test's planned messages come down."""
    late = truth["deviations"].get("messages_late", {"count": 0})["count"]
    assert truth["skipped"] == late and "messages_skipped" not in truth["deviations"], truth
    return late


@dataclass
class Run:
    returncode: int
    output: str
    elapsed: float
    prefix: Path

    def rows(self, suffix: str) -> list[dict[str, str]]:
        path = Path(f"{self.prefix}_{suffix}.csv")
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    @property
    def stats(self) -> dict[str, tuple[int, int]]:
        """(requests, failures) by request name, 'Aggregated' included."""
        return {r["Name"]: (int(r["Request Count"]), int(r["Failure Count"])) for r in self.rows("stats")}

    def count(self, name: str) -> int:
        return self.stats.get(name, (0, 0))[0]

    @property
    def failures(self) -> int:
        return self.stats["Aggregated"][1]

    @property
    def errors(self) -> list[dict[str, str]]:
        return self.rows("failures")

    @property
    def truth(self) -> dict[str, int]:
        return json.loads(Path(f"{self.prefix}_truth.json").read_text())

    @property
    def phases(self) -> list[dict[str, str]]:
        return self.rows("phases")

    @property
    def console_total(self) -> tuple[int, int]:
        """(requests, failures) of the 'Aggregated' row of the request table Locust printed last."""
        row = [line for line in self.output.splitlines() if line.split()[:1] == ["Aggregated"] and "|" in line][-1]
        count, failures = row.split()[1:3]
        return int(count), int(failures.split("(")[0])

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def locust_command(locustfile: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / locustfile), *args]


class Started:
    """A Locust process whose output goes to a file, so the test can wait for a line of it."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            assert self.proc.poll() is None, f"exited before {text!r}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def output(self) -> str:
        return self.log.read_text()


def run_locust(locustfile: str, prefix: Path, *args: str, timeout: float = 150) -> Run:
    """Run Locust to the end (killed and failed past ``timeout``); stdout and stderr together."""
    started = time.monotonic()
    proc = subprocess.Popen(
        locust_command(locustfile, "--csv", str(prefix), "--only-summary", *args),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"locust did not finish within {timeout} s:\n{output[-3000:]}")
    return Run(proc.returncode, output, time.monotonic() - started, prefix)


def room_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_phases_in_order(run: Run, names: list[str]) -> None:
    phases = run.phases
    assert [p["phase"] for p in phases] == names
    for p in phases:
        assert float(p["start_unix"]) < float(p["end_unix"]), p
    for before, after in zip(phases, phases[1:], strict=False):
        assert float(before["end_unix"]) <= float(after["start_unix"]) + 0.001, (before, after)


def read_archive(lab: Any, tmp_path: Path, room: str) -> list[dict[str, Any]]:
    """The room's whole archive, read by slixmpp over TCP c2s without joining the room."""
    observer = SlixmppObserver(lab, tmp_path, rooms=[], archive=[room])
    observer.start()
    seen = observer.stop()
    assert seen["error"] is None, observer.report()
    return seen["archive"][room]
