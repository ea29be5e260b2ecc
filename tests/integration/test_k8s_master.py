"""``locust-xmpp k8s master``, the master's entry point in its pod, run for real on loopback with the master
arguments of ``k8s/base`` (its Locust config file): a headless run against the lab Prosody with one worker that
takes its locustfile from the master (``-f -``, as the worker pods do); the run's files printed into the master's
output and read back as ``k8s run`` reads them; the interactive master after it; the same run not started again
by a restarted container; and a run stopped by SIGTERM, as Kubernetes stops a pod, that still prints its files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from xmpp_user.deploy import transfer
from xmpp_user.deploy.master import RUN_ENV, RunSpec
from xmpp_user.lab.lab import Lab, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUICKSTART = REPO / "locustfiles" / "quickstart.py"
WAIT = 60.0


class Output:
    """A process's output, read line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, *texts: str, timeout: float = WAIT) -> None:
        """Until a line holds one of ``texts``."""
        deadline = time.monotonic() + timeout
        text = " or ".join(texts)
        with self._changed:
            while not any(t in line for line in self.lines for t in texts):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"{text!r} did not come within {timeout:g} s; the output ends:\n{tail}")
                self._changed.wait(min(left, 0.5))

    def files(self, run_id: str) -> tuple[int | None, dict[str, bytes]]:
        receiver = transfer.Receiver(run_id)
        for line in list(self.lines):
            receiver.feed(line)
        return receiver.exit_code, receiver.files()


@contextmanager
def started(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """A process of the test's own, stopped by its PID on the way out."""
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        yield process, Output(process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _master(results: Path, master_port: int, web_port: int) -> list[str]:
    return [str(BIN / "locust-xmpp"), "k8s", "master", "--results", str(results), "--",
            "--config", str(REPO / "k8s" / "base" / "locust.conf"), "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(master_port), "--web-host", "127.0.0.1", "--web-port", str(web_port),
            # Not the config's fixed 9646: another test process's master may hold it.
            "--xmpp-metrics-port", str(free_port())]  # fmt: skip


def _environment(spec: RunSpec) -> dict[str, str]:
    # The interactive master after the run reads the config's locustfile (/locustfiles/livechat.py in the pod):
    # here, the environment names one of the checkout (Locust ranks it above the config file).
    return {RUN_ENV: spec.to_json(), "LOCUST_LOCUSTFILE": str(QUICKSTART)}


def _worker(master_port: int) -> list[str]:
    return [str(BIN / "locust"), "--worker", "--locustfile", "-", "--master-host", "127.0.0.1",
            "--master-port", str(master_port)]  # fmt: skip


def _spec(lab: Lab, run_time: str) -> RunSpec:
    return RunSpec(
        "20300101-000000-test",
        1,
        60,
        (
            "-f",
            str(QUICKSTART),
            "--host",
            lab.websocket_url,
            "--xmpp-metrics-port",
            "0",
            "-u",
            "3",
            "-r",
            "3",
            "-t",
            run_time,
        ),
    )


def _web_ui_answers(port: int, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.5)
    return False


@pytest.mark.parametrize("lab", ["prosody"], indirect=True)
def test_a_run_prints_its_files_then_the_interactive_master_takes_over(lab: Lab, tmp_path: Path) -> None:
    spec = _spec(lab, "4s")
    master_port, web_port, results = free_port(), free_port(), tmp_path / "results"
    command = _master(results, master_port, web_port)
    with started(command, _environment(spec), tmp_path) as (master, output):
        with started(_worker(master_port), {}, tmp_path) as (worker, _worker_output):
            output.wait_for(f"{transfer.PREFIX} {spec.id} end: locust exit code")
            worker.wait(WAIT)  # the master tells its workers to quit at the end of the run
        output.wait_for("the interactive master takes over")
        assert _web_ui_answers(web_port), "the interactive master serves its web UI"
        assert master.poll() is None, "the interactive master took over the process (exec), which still runs"
    code, files = output.files(spec.id)
    assert code == 0
    assert {"run_stats.csv", "run_failures.csv", "run_exceptions.csv", "run_truth.json"} <= set(files)
    stats = files["run_stats.csv"].decode()
    assert "XMPP,connect," in stats and "XMPP,muc_join," in stats
    assert (results / spec.id / "run_stats.csv").read_bytes() == files["run_stats.csv"]
    assert any("--expect-workers 1" in line and "--csv run" in line for line in output.lines)

    # A restarted container (same pod, same results volume) does not start the run again: it prints its files.
    with started(command, _environment(spec), tmp_path) as (_again, again):
        again.wait_for(f"run {spec.id} was started before in this pod (its container was started again): not again")
        again.wait_for("the interactive master takes over")
    assert again.files(spec.id) == (0, files)


@pytest.mark.parametrize("lab", ["prosody"], indirect=True)
def test_sigterm_stops_the_run_which_still_prints_its_files(lab: Lab, tmp_path: Path) -> None:
    spec = _spec(lab, "5m")
    master_port, web_port = free_port(), free_port()
    command = _master(tmp_path / "results", master_port, web_port)
    with started(command, _environment(spec), tmp_path) as (master, output):
        with started(_worker(master_port), {}, tmp_path):
            # Locust's master says "All users spawned", or, when the worker's report comes later than it waits
            # for (a busy machine), "Spawning is complete and report waittime is expired".
            output.wait_for("Spawning is complete", "All users spawned")
            time.sleep(2)
            master.send_signal(signal.SIGTERM)
            code = master.wait(WAIT)
    exit_code, files = output.files(spec.id)
    assert code == exit_code == 0, "the wrapper exits with Locust's code"
    assert "XMPP,connect," in files["run_stats.csv"].decode()
    assert not any("interactive master takes over" in line for line in output.lines)
