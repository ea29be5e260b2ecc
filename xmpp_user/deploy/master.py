"""The Locust master's entry point in its pod: ``locust-xmpp k8s master`` (see ``k8s/base/master.yaml``).

Without a run it is the interactive master, ``locust --master`` with its web UI (``kubectl port-forward``), behind
a password when its arguments say ``--web-login`` (``weblogin.py``).
With one, given by ``locust-xmpp k8s run`` as the pod template's ``locust-xmpp/run`` annotation (here
$LOCUST_XMPP_RUN, through the downward API), it runs Locust headless in RESULTS/RUN_ID, prints the files written
there into the log as they are every so often while Locust runs, and once more when it has ended (``transfer.py``),
then becomes the interactive master: the pod stays up, so Kubernetes does not start the run again. A container
started again in the same pod (the last one was killed: out of memory, its liveness probe) finds the run's directory
and prints its files instead, saying whether the run had ended. SIGTERM stops the run as Ctrl+C does; the files are
printed, and the process exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmpp_user.deploy import transfer

RUN_ENV = "LOCUST_XMPP_RUN"
"""The environment variable the master container gets the run annotation in."""
CSV_PREFIX = "run"
"""Locust's --csv prefix in the run's directory, unless the run's arguments name one."""


@dataclass(frozen=True)
class RunSpec:
    """One headless run, as ``k8s run`` asks for it."""

    id: str
    workers: int
    """Workers the master waits for before it starts (--expect-workers)."""
    wait: int
    """Seconds the master waits for them at most, then gives up (exit code 1)."""
    args: tuple[str, ...]
    """Locust's arguments for the run, after the master's own."""

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "workers": self.workers, "wait": self.wait, "args": list(self.args)})

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        try:
            data: Any = json.loads(text)
            spec = cls(str(data["id"]), int(data["workers"]), int(data["wait"]), tuple(str(a) for a in data["args"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a run: {text[:200]!r} ({exc})") from None
        if not spec.id or "/" in spec.id or spec.id.startswith("."):
            raise ValueError(f"not a run id: {spec.id!r}")
        return spec


def _has_option(args: tuple[str, ...] | list[str], *names: str) -> bool:
    return any(arg in names or arg.split("=", 1)[0] in names for arg in args)


def csv_prefix(args: tuple[str, ...] | list[str]) -> str:
    """The run's --csv prefix, relative to its directory: the last that its arguments give, else CSV_PREFIX."""
    prefix = CSV_PREFIX
    for n, arg in enumerate(args):
        if arg == "--csv" and n + 1 < len(args):
            prefix = args[n + 1]
        elif arg.startswith("--csv="):
            prefix = arg.split("=", 1)[1]
    return prefix


def _locust() -> str:
    """Locust's command: the one installed beside this Python (a virtualenv not on PATH), else from PATH."""
    beside = Path(sys.executable).with_name("locust")
    return str(beside) if beside.exists() else "locust"


def run_command(spec: RunSpec, base_args: list[str]) -> list[str]:
    """Locust's command line for a run: the master's own arguments, the run's settings, the run's arguments."""
    command = [_locust(), *base_args, "--master", "--headless", "--expect-workers", str(spec.workers),
               "--expect-workers-max-wait", str(spec.wait)]  # fmt: skip
    if not _has_option(spec.args, "--csv"):
        command += ["--csv", CSV_PREFIX]
    return command + list(spec.args)


def _say(line: str) -> None:
    print(f"locust-xmpp k8s master: {line}", flush=True)


def interactive_command(base_args: list[str]) -> list[str]:
    """The interactive master's command line: Locust's, through ``weblogin`` when it is to ask for a password."""
    if _has_option(base_args, "--web-login"):
        return [sys.executable, "-m", "xmpp_user.deploy.weblogin", *base_args, "--master"]
    return [_locust(), *base_args, "--master"]


def _interactive(base_args: list[str]) -> None:
    """Become ``locust --master`` with the web UI (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    command = interactive_command(base_args)
    os.execvp(command[0], command)


def _run(spec: RunSpec, directory: Path, base_args: list[str]) -> tuple[int, bool]:
    """Run Locust for ``spec`` in ``directory``: its exit code, and whether SIGTERM or SIGINT stopped it."""
    command = run_command(spec, base_args)
    _say(f"run {spec.id} in {directory}: {' '.join(command)}")
    stopping = False
    process = subprocess.Popen(command, cwd=directory)

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = stream(process, spec.id, directory)
    return code, stopping


def stream(process: subprocess.Popen[bytes], run_id: str, directory: Path) -> int:
    """Wait for Locust to end, printing the run's files as they are every so often (``transfer.next_wait``): what
    ``k8s run`` brings back if this container dies before Locust ends. Locust's exit code."""
    wait = transfer.STREAM_INTERVAL
    while True:
        try:
            return process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        try:
            written = transfer.write_lines(transfer.block(run_id, directory, None, going_on=True))
        except OSError as exc:
            _say(f"the files of run {run_id} could not be printed: {exc}")
            written = 0
        wait = transfer.next_wait(written)


def main(results: Path, base_args: list[str]) -> int:
    text = os.environ.get(RUN_ENV, "").strip()
    if not text:
        _interactive(base_args)
    try:
        spec = RunSpec.from_json(text)
    except ValueError as exc:
        _say(f"ignoring ${RUN_ENV}: {exc}")
        _interactive(base_args)
    directory = results / spec.id
    exit_file = results / f".{spec.id}.exit-code"
    code: int | None
    if directory.exists():
        # The container was started again (the pod, and its results volume, stay): the run is not started again.
        code = int(exit_file.read_text()) if exit_file.exists() else None
        _say(
            f"run {spec.id} was started before in this pod (its container was started again): not again"
            + ("" if code is not None else "; it did not end, and its files are what it wrote until then")
        )
        stopping = False
    else:
        directory.mkdir(parents=True)
        code, stopping = _run(spec, directory, base_args)
        exit_file.write_text(f"{code}\n")
    transfer.write_lines(transfer.block(spec.id, directory, code))
    if stopping and code is not None:  # stopped by SIGTERM: the pod ends
        return code
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ended = f"ended (locust exit code {code})" if code is not None else "did not end"
    _say(f"run {spec.id} {ended}; the interactive master takes over")
    _interactive(base_args)
    return 0  # not reached: the interactive master replaced this process
