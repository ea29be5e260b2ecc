"""``locust-xmpp k8s run``: a headless run on the cluster, its files brought back, the workers scaled to zero.

1. The run (id, workers, Locust arguments) goes into the master Deployment's pod template; the new master pod
   starts Locust headless for it and waits for its workers (``master.py``).
2. The workers are scaled to ceil(users / users per worker) and waited for until ready.
3. The master's log is followed and shown; the master prints the run's files into it as they are every so often
   while Locust runs, and once more when it has ended: those are written under ``--output`` (``transfer.py``).
4. Whatever happened (a failure, Ctrl+C), the workers are scaled back to zero and the run is taken out of the
   master's pod template, which brings back the interactive master. After Ctrl+C the master first stops the run
   as on SIGTERM and prints its files; a second Ctrl+C leaves them.

A master that dies before Locust ends (killed for its memory, evicted, its node lost) never prints its last block.
Its container ends, or is started again in the same pod, where it prints what the run had written until then
(``master.py``); the command says so in one line, writes the newest files it has (those of the restarted container,
else of the last block printed while the run went on), draws their report, which says that the run did not end,
and exits with EXIT_MASTER_DIED.
"""

from __future__ import annotations

import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from xmpp_user.deploy import transfer
from xmpp_user.deploy.cluster import Cluster, DeployError
from xmpp_user.deploy.master import RunSpec, csv_prefix
from xmpp_user.deploy.objects import MASTER, WORKER
from xmpp_user.distribute.budget import workers_needed

RESULTS = Path("results") / "k8s"
"""Where the files of a run land by default: RESULTS/RUN_ID."""
STOP_GRACE = 180.0
"""Seconds given to a run stopped by Ctrl+C to end and print its files (its pod has 120 to end)."""
RESTART_GRACE = 60.0
"""Seconds given to a master container started again in its pod to print what the run wrote (the kubelet may wait
10 s before it starts it again); then the files of the last block printed while the run went on are taken."""
EXIT_MASTER_DIED = 2
"""The exit code of a run whose master died before Locust ended: Locust's own was never known."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def locust_arguments(args: list[str], users: int) -> list[str]:
    """The run's Locust arguments: ``--users`` from ``users`` unless they give one."""
    if any(arg in ("-u", "--users") or arg.startswith("--users=") for arg in args):
        return list(args)
    return ["--users", str(users), *args]


def _say(line: str) -> None:
    print(f"locust-xmpp k8s: {line}", flush=True)


class Run:
    def __init__(self, cluster: Cluster, users: int, per_worker: int, timeout: float, output: Path | None,
                 worker: str = WORKER, show: Callable[[str], None] = print) -> None:  # fmt: skip
        self.cluster, self.users, self.per_worker, self.timeout = cluster, users, per_worker, timeout
        self.worker = worker
        self.show = show
        """Where the master's own output goes (Locust's console)."""
        self.replicas = workers_needed(users, per_worker)
        self.asked = f" ({users:,} users at {per_worker:,} per worker)"
        self.id = new_run_id()
        self.output = output or RESULTS / self.id
        self.receiver = transfer.Receiver(self.id)
        """The run's blocks read from the master's log so far."""
        self.died: str | None = None
        """How the master died before the run's last block, once the command has seen it die."""
        self._died_at = 0.0
        self._problems_said = 0

    def __call__(self, locust_args: list[str]) -> int:
        """Run; Locust's exit code, or EXIT_MASTER_DIED. DeployError for what went wrong on the cluster's side."""
        cluster = self.cluster
        worker = cluster.deployment(self.worker)
        cluster.deployment(MASTER)
        cluster.check_capacity(worker, self.replicas, self.asked)
        spec = RunSpec(self.id, self.replicas, int(self.timeout) + 60, tuple(locust_arguments(locust_args, self.users)))
        receiver = self.receiver
        keep_master = False
        try:
            cluster.set_run(spec.to_json())
            _say(f"run {spec.id}: {self.replicas} workers{self.asked} in namespace {cluster.namespace}")
            pod = cluster.run_pod(spec.id, self.timeout)
            _say(f"run {spec.id}: master pod {pod} started; scaling {self.worker} to {self.replicas}")
            cluster.scale(self.worker, self.replicas)
            waited = cluster.wait_ready(self.worker, self.replicas, self.timeout, self.asked)
            _say(f"run {spec.id}: {self.replicas} workers ready after {waited:.0f} s; the master's output follows")
            try:
                try:
                    self._follow(pod, receiver)
                except KeyboardInterrupt:
                    _say("stopping: the master stops the run and prints its files (Ctrl+C again to leave them)")
                    cluster.set_run(None)  # the run's pod gets SIGTERM, and an interactive master replaces it
                    self._follow(pod, receiver, deadline=time.monotonic() + STOP_GRACE)
            except DeployError as exc:
                if not receiver.latest:
                    raise
                written = transfer.save(receiver.latest, self.output)
                raise DeployError(f"{exc}; the files of the master's last block, {self._age()}, are in {self.output} "
                                  f"({len(written)} files)") from None  # fmt: skip
            if not receiver.ended:
                return self._master_died(pod, spec)
            try:
                files = receiver.files()
            except transfer.TransferError as exc:
                keep_master = True
                raise DeployError(
                    f"{exc}; they stay in pod {pod} under /results/{spec.id} until it is replaced "
                    f"(kubectl cp {cluster.namespace}/{pod}:/results/{spec.id} {self.output})"
                ) from None
            written = transfer.save(files, self.output)
            assert receiver.exit_code is not None
            _say(f"run {spec.id}: locust exit code {receiver.exit_code}; {len(written)} files in {self.output}")
            return receiver.exit_code
        finally:
            self._clean_up(keep_master)

    def _follow(self, pod: str, receiver: transfer.Receiver, deadline: float | None = None) -> None:
        """Show the master's log until the run's last block has come through, or the master has died (``died``
        says how); asked again where a stream broke."""
        last: tuple[str, str] = ("", "")
        last_time: float | None = None
        since: int | None = None
        while True:
            try:
                for line in self.cluster.log(pod, since_seconds=since):
                    if line.timestamp[0] and line.timestamp <= last:
                        continue  # read again after a broken stream
                    if line.timestamp[0]:
                        last = line.timestamp
                    last_time = time.monotonic()
                    if not receiver.feed(line.text):
                        self.show(line.text)
                    self._say_problems(receiver)
                    if receiver.done:
                        return
            except DeployError:
                if self.died is None:
                    raise
                # A container about to be started again has no log to read yet.
            state = self.cluster.master_state(pod)
            if state.restarts or not state.running:
                if self.died is None:
                    self.died, self._died_at = state.ended or "its container ended", time.monotonic()
                if state.final or time.monotonic() - self._died_at >= RESTART_GRACE:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise DeployError(f"timeout: the master pod {pod} did not print the run's files within "
                                  f"{STOP_GRACE:g} s of being stopped")  # fmt: skip
            since = int(time.monotonic() - last_time) + 5 if last_time is not None else None
            time.sleep(self.cluster.poll)

    def _say_problems(self, receiver: transfer.Receiver) -> None:
        for problem in receiver.problems[self._problems_said :]:
            print(f"locust-xmpp: warning: {problem}", file=sys.stderr)
        self._problems_said = len(receiver.problems)

    def _age(self) -> str:
        """How old the last block is, for people."""
        if self.receiver.last_block is None:
            return "of unknown age"
        return f"{time.monotonic() - self.receiver.last_block:.0f} s old"

    def _master_died(self, pod: str, spec: RunSpec) -> int:
        """Bring back the newest files of a run whose master died before its end, and their report."""
        receiver = self.receiver
        why = self.died or "its container was started again"
        if cut := receiver.cut():
            _say(f"run {spec.id}: {cut}")
        try:
            files, source = receiver.files(), "as its container, started again, printed them"
        except transfer.TransferError as exc:
            if receiver.done:  # the restarted container's block came damaged
                _say(f"run {spec.id}: {exc}")
            files, source = receiver.latest, f"as of its last block, {self._age()}"
        if not files:
            raise DeployError(f"the master pod {pod} ended without the run's files ({why}; kubectl logs {pod} -n "
                              f"{self.cluster.namespace} --previous shows what it said)")  # fmt: skip
        written = transfer.save(files, self.output)
        _say(f"run {spec.id}: the master died before the run ended ({why}): {len(written)} files {source}, in "
             f"{self.output}")  # fmt: skip
        self._report(self.output / csv_prefix(spec.args))
        return EXIT_MASTER_DIED

    def _report(self, prefix: Path) -> None:
        """``locust-xmpp report PREFIX`` on the files brought back, said in one line."""
        # Imported here: matplotlib is slow to import, and a run that ends needs none of it.
        from xmpp_user.observe.model import MissingData, load_files
        from xmpp_user.observe.report import unfinished_run, write_report

        try:
            run = load_files(prefix)
            report = write_report(run, prefix)
        except (MissingData, OSError, ValueError) as exc:
            _say(f"run {self.id}: no report: {exc}")
            return
        _say(f"run {self.id}: report {report.html}: {unfinished_run(run) or 'its files say that the run ended.'}")

    def _clean_up(self, keep_master: bool) -> None:
        """Workers to zero and the run out of the master's pod template; said, not raised, if that fails.

        Ctrl+C is ignored meanwhile: leaving workers up is what it must not do.
        """
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"scale {self.worker} back to zero", lambda: self.cluster.scale(self.worker, 0))
        ]
        if not keep_master:
            steps.append(("take the run out of the master", lambda: self.cluster.set_run(None)))
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for what, step in steps:
                try:
                    step()
                except DeployError as exc:
                    print(f"locust-xmpp: warning: could not {what}: {exc}", file=sys.stderr)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        back = "" if keep_master else "; the interactive master is back"
        _say(f"run {self.id}: {self.worker} scaled back to zero{back}")
