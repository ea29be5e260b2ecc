"""The image and the manifests, run for real in containers: ``scripts/image.sh`` builds the image (and the lab
Prosody's) without a registry, ``k8s/overlays/small`` and ``k8s/prosody`` are rendered with ``kubectl kustomize``
and played with ``podman kube play``, and ``locust-xmpp k8s run``'s own ``Run`` drives a distributed headless run
through two worker pods against the Prosody pod (``podman_play.PodmanCluster`` stands for the cluster): the run
logs in with registered accounts whose passwords come from the Secret locust-xmpp-accounts, and its files come
back through the master's log, read by the project's receiver. A second run's master is killed (SIGKILL, as the
kernel's OOM killer does) once it has printed the run's own files into its log at least once: ``Run`` brings back
those files, and their report says that the run did not end.

Then what Kubernetes would enforce is checked on the pods: every container runs as uid 10001 with a read-only root
filesystem and no capability, the probes of the manifests work with what the images contain, the exporter beside
Prosody serves Prosody's process metrics, and the image holds nothing that only builds or tests. Everything played
is removed afterwards, also when a test fails. What podman cannot show (Services, NetworkPolicy, RBAC, the
kubelet's probes, scheduling) is said in README's "On Kubernetes".

Needs root and podman (bash scripts/setup.sh installs it); skipped with the reason where podman cannot run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from podman_play import (
    ACCOUNTS_SECRET,
    REPO,
    Play,
    PodmanCluster,
    container,
    one,
    podman,
    podman_env,
    render,
    unavailable,
)

from xmpp_user.deploy import objects
from xmpp_user.deploy.cluster import DeployError
from xmpp_user.deploy.run import EXIT_MASTER_DIED, Run
from xmpp_user.observe import names

pytestmark = pytest.mark.containers

IMAGE = "localhost/locust-xmpp:0.1.0"
USERS = 300
"""Viewers of the run (and registered accounts): few, mostly idle, in ten rooms."""
PER_WORKER = 150
"""Users per worker that k8s run sizes by: two workers for USERS."""
WAIT = 120.0
"""Seconds any step may wait (pods starting, workers connecting)."""
RUN_DEADLINE = 240.0
"""Seconds after which a run still going is stopped (its master pod), so that the test ends."""
KILL_DEADLINE = 120.0
"""Seconds after which the run to kill is stopped if the files to kill it after have not come."""
KILL_AFTER = ("run_timeline.csv", "run_phases.json", "run_truth.json", "run_stats.csv")
"""The run's files that the master must have printed while the run goes on before it is killed."""
KILL_IN = "batch1-join"
"""The phase in force in the last block printed before the master is killed: the viewers are joining."""
IMAGE_BUILD_TIMEOUT = 900
LOCUST_ARGS = [
    "-f", "/locustfiles/livechat.py", "--viewers", str(USERS), "--rooms", "10", "--batches", "1",
    "--join-rate", "20", "--no-vcards", "--avatar-bytes", "0", "--seed-messages", "5", "--seed-interval", "0.2",
    "--seed-wait", "1", "--talk-delay", "2", "--talk-interval", "10", "--talk-duration", "10", "--settle", "10",
    "--ghost-wait", "0", "--xmpp-auth", "scram", "--xmpp-domain", "reg.localhost",
    "--xmpp-credentials", "/etc/locust-xmpp-accounts/credentials.csv",
    # What is tested is the way through the pods, not how fast the Prosody pod answers: on a 2-core machine
    # that runs other tests beside this one, logins took up to 10 s (connect and bind failed at the default).
    "--xmpp-timeout", "30",
]  # fmt: skip


@pytest.fixture(scope="module")
def images() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(["bash", str(REPO / "scripts" / "image.sh")], capture_output=True, text=True,
                            timeout=IMAGE_BUILD_TIMEOUT)  # fmt: skip
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Killed:
    """The run whose master was killed: what k8s run said and brought back."""

    code: int | None = None
    error: str = ""
    output: list[str] = field(default_factory=list)
    """The master's output."""
    said: list[str] = field(default_factory=list)
    """What k8s run itself said."""
    files: dict[str, bytes] = field(default_factory=dict)
    killed_after: float | None = None
    """Seconds from the start of k8s run to the kill."""
    blocks: int = 0
    """The blocks k8s run had read when the master was killed."""
    seconds: float = 0.0
    master_after: str = ""
    """The master container's run annotation after k8s run ended ("" for the interactive master)."""
    workers_after: int = -1


@dataclass
class Played:
    play: Play
    small: list[dict[str, Any]]
    prosody: list[dict[str, Any]]
    password: str
    code: int | None = None
    error: str = ""
    output: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    killed: Killed = field(default_factory=Killed)


def _http(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the test's own network)
        return response.status, response.read().decode("utf-8", "replace")


def _wait(what: str, check: Any, timeout: float = WAIT) -> Any:
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, AssertionError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:g} s" + (f": {last}" if last else ""))


def _register(address: str, password: str) -> None:
    """The accounts of the Secret, by in-band registration on the Prosody pod, as locust-xmpp lab register does."""
    command = [str(Path(sys.executable).with_name("locust-xmpp")), "lab", "register", "--count", str(USERS),
               "--url", f"ws://{address}:5280/xmpp-websocket", "--domain", "reg.localhost",
               "--password", password]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def played(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    play = Play(f"lxt{secrets.token_hex(3)}", tmp_path_factory.mktemp("podman"))
    try:
        play.create_network()
        prosody, small = render("prosody"), render("overlays/small")
        play.play("xmpp-server", [d for d in prosody if d["kind"] in ("ConfigMap", "Deployment")], alias="xmpp-server")
        address = play.address("xmpp-server-pod-0")
        # The readiness probe of the manifest, from outside the pod as the kubelet sends it.
        probe = container(one(prosody, "Deployment", "xmpp-server"), "prosody")["readinessProbe"]["httpGet"]
        _wait("Prosody ready", lambda: _http(f"http://{address}:5280{probe['path']}")[0] == 200)
        password = secrets.token_urlsafe(16)
        _register(address, password)
        lines = io.StringIO()
        csv.writer(lines, lineterminator="\n").writerows((f"user{n}", password) for n in range(USERS))
        play.secret(ACCOUNTS_SECRET, {"credentials.csv": lines.getvalue()})
        result = Played(play, small, prosody, password)
        _distributed_run(result, tmp_path_factory.mktemp("run"))
        result.killed = _killed_run(result, tmp_path_factory.mktemp("killed"))
        # k8s run left the interactive master and no worker: two again, for the checks on the pods.
        cluster = PodmanCluster(play, small)
        cluster.scale(objects.WORKER, 2)
        cluster.wait_ready(objects.WORKER, 2, WAIT)
        yield result
    finally:
        left = play.tear_down()
        assert not left, f"left behind: {left}"


def _distributed_run(played: Played, output: Path) -> None:
    """``Run`` of ``locust-xmpp k8s run`` on the played pods; stopped by its master pod's end after RUN_DEADLINE."""
    cluster = PodmanCluster(played.play, played.small)
    run = Run(cluster, USERS, PER_WORKER, WAIT, output, show=played.output.append)  # type: ignore[arg-type]
    assert run.replicas == 2
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(RUN_DEADLINE):
            podman("pod", "stop", "-t", "5", f"{objects.MASTER}-pod-0", check=False)

    threading.Thread(target=watchdog, daemon=True).start()
    start = time.monotonic()
    try:
        played.code = run(LOCUST_ARGS)
    except DeployError as exc:
        played.error = str(exc)
    finally:
        done.set()
        played.seconds = time.monotonic() - start
    if output.exists():
        played.files = {p.relative_to(output).as_posix(): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    # What the master said, for whoever reads the test's output (its files block aside).
    said = [line for line in played.output if len(line) != 76 or " " in line]
    (output.parent / "master.log").write_text("\n".join(said) + "\n")
    print("\n".join(said)[-8000:])


def _killed_run(played: Played, output: Path) -> Killed:
    """``Run`` again, its master container killed with SIGKILL once ``Run`` has read the files of KILL_AFTER from
    a block the master printed in phase KILL_IN while the run went on (no handler runs: an OOM kill, or an eviction
    that leaves no time)."""
    cluster = PodmanCluster(played.play, played.small)
    killed = Killed()
    run = Run(cluster, USERS, PER_WORKER, WAIT, output, show=killed.output.append)  # type: ignore[arg-type]
    start = time.monotonic()
    done = threading.Event()

    def killer() -> None:
        while not done.wait(0.2) and time.monotonic() - start < KILL_DEADLINE:
            latest = run.receiver.latest
            if (all(name in latest for name in KILL_AFTER) and b'"partial"' in latest["run_truth.json"]
                    and json.loads(latest["run_phases.json"])[-1]["phase"] == KILL_IN):  # fmt: skip
                killed.killed_after, killed.blocks = time.monotonic() - start, run.receiver.blocks
                podman("kill", cluster.master_container())
                return
        podman("pod", "stop", "-t", "5", f"{objects.MASTER}-pod-0", check=False)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            killed.code = run(LOCUST_ARGS)
    except DeployError as exc:
        killed.error = str(exc)
    finally:
        done.set()
        thread.join(timeout=30)
        killed.seconds = time.monotonic() - start
    killed.said = said.getvalue().splitlines()
    if output.exists():
        killed.files = {p.relative_to(output).as_posix(): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    killed.workers_after = len(podman("ps", "-a", "--filter", f"name=^{objects.WORKER}-pod-", "--format",
                                      "{{.Names}}").split())  # fmt: skip
    env = podman("container", "inspect", cluster.master_container(), "--format", "{{json .Config.Env}}", check=False)
    killed.master_after = run.id if run.id in env else ""
    print("\n".join(killed.said))
    return killed


def test_a_distributed_run_through_two_worker_pods_brings_its_files_back(played: Played) -> None:
    assert not played.error, played.error + "\n" + "\n".join(played.output[-40:])
    assert played.code == 0, "\n".join(played.output[-60:])
    [truth_line] = [line for line in played.output if "Message truth:" in line]
    counts = dict(item.split("=", 1) for item in truth_line.split("Message truth:", 1)[1].split())
    for name in ("sent", "expected", "delivered", "lost", "in_flight", "unverified", "missing_workers"):
        assert name in counts, (name, truth_line)
    assert int(counts["sent"]) > 0 and int(counts["delivered"]) > 0, truth_line
    assert counts["lost"] == counts["missing_workers"] == counts["in_flight"] == "0", truth_line
    files = played.files
    for name in ("run_stats.csv", "run_failures.csv", "run_truth.json", "run_phases.csv", "run_phases.json",
                 "run_report.html", "run_report.json"):  # fmt: skip
        assert name in files, (name, sorted(files))
    phases = [row["phase"] for row in csv.DictReader(io.StringIO(files["run_phases.csv"].decode()))]
    assert phases == ["seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave"], phases
    stats = list(csv.DictReader(io.StringIO(files["run_stats.csv"].decode())))
    [total] = [row for row in stats if row["Name"] == "Aggregated"]
    assert int(total["Request Count"]) > USERS * 5 and int(total["Failure Count"]) == 0, total
    logins = [row for row in stats if row["Name"] == "auth"]
    assert logins and int(logins[0]["Request Count"]) >= USERS, "every viewer logged in with its account"
    truth = json.loads(files["run_truth.json"])
    assert truth["lost"] == 0 and truth["sent"] == int(counts["sent"]), truth
    report = json.loads(files["run_report.json"])
    assert [row["name"] for row in report["phases"]] == phases, report["phases"]
    assert b"<html" in files["run_report.html"][:2000].lower()
    print(
        f"run: {total['Request Count']} requests, {total['Failure Count']} failures, {played.seconds:.0f} s; "
        f"{truth_line.split('Message truth:', 1)[1].strip()}"
    )


def test_a_master_killed_mid_run_leaves_its_files_and_their_report(played: Played) -> None:
    killed = played.killed
    assert killed.killed_after is not None, "the master printed the run's files while it went on:\n" + "\n".join(
        killed.said + killed.output[-40:]
    )
    assert not killed.error, killed.error
    assert killed.code == EXIT_MASTER_DIED, "\n".join(killed.said)
    [died] = [line for line in killed.said if "the master died" in line]
    assert "the master died before the run ended (exit code 137 (SIGKILL)): " in died, died
    assert " files as of its last block, " in died, died
    files = killed.files
    for name in (*KILL_AFTER, "run_phases.csv", "run_phase_stats.json", "run_server.csv", "run_stats_history.csv"):
        assert name in files, (name, sorted(files))
    truth = json.loads(files["run_truth.json"])
    assert truth["partial"].startswith("the run had not ended"), truth
    phases = json.loads(files["run_phases.json"])
    assert [p["phase"] for p in phases][-1] == KILL_IN and phases[-1]["end_unix"] is None, "the phase in force is open"
    assert phases[0]["phase"] == "seed" and phases[-1]["users"] == USERS, phases[-1]
    timeline = list(csv.DictReader(io.StringIO(files["run_timeline.csv"].decode())))
    assert len(timeline) >= 5 and float(timeline[-1]["t_unix"]) > phases[0]["start_unix"], timeline[-1]
    stats = csv.DictReader(io.StringIO(files["run_stats.csv"].decode()))
    [total] = [row for row in stats if row["Name"] == "Aggregated"]
    assert int(total["Request Count"]) > 0, total
    server = json.loads(files["run_phase_stats.json"])["server"]
    server_rows = list(csv.DictReader(io.StringIO(files["run_server.csv"].decode())))
    # The master is not beside the server here: not observed, and the files say so (observed, they hold samples).
    assert server_rows or server["note"].startswith("the server was not observed"), server
    report = json.loads(files["run_report.json"])
    assert report["unfinished"].startswith("This run did not end: its files stop at "), report["unfinished"]
    assert f"into phase {KILL_IN}" in report["unfinished"]
    assert [row["name"] for row in report["phases"]][-1] == KILL_IN, report["phases"]
    assert b"This run did not end" in files["run_report.html"]
    [said] = [line for line in killed.said if " report " in line]
    assert said.endswith(report["unfinished"]), said
    assert killed.workers_after == 0 and killed.master_after == "", "workers to zero, the interactive master back"
    seconds_in = float(timeline[-1]["t_unix"]) - phases[0]["start_unix"]
    print(f"killed run: master killed {killed.killed_after:.0f} s after k8s run started, {killed.blocks} blocks read; "
          f"its files stop {seconds_in:.0f} s into the run, in phase {phases[-1]['phase']}, after "
          f"{total['Request Count']} requests: {len(files)} files; "
          f"k8s run took {killed.seconds:.0f} s; {report['unfinished']}")  # fmt: skip


def test_the_accounts_passwords_come_from_the_secret_and_nowhere_else(played: Played) -> None:
    master = one(played.small, "Deployment", objects.MASTER)
    assert played.password not in json.dumps(played.small), "not in any rendered object"
    assert all(played.password not in arg for arg in LOCUST_ARGS)
    env = podman("container", "inspect", f"{objects.MASTER}-pod-0-master", "--format", "{{json .Config.Env}}")
    assert played.password not in env
    for name in (f"{objects.MASTER}-pod-0-master", f"{objects.WORKER}-pod-0-worker"):
        if played.play.running(name):
            result = played.play.exec(name, "sh", "-c", "cat /etc/locust-xmpp-accounts/credentials.csv | head -1")
            assert result.stdout.strip() == f"user0,{played.password}", result.stderr
    mounts = [m for m in container(master, objects.MASTER_CONTAINER)["volumeMounts"] if m["name"] == "accounts"]
    assert mounts == [{"name": "accounts", "mountPath": "/etc/locust-xmpp-accounts", "readOnly": True}]


def _containers(played: Played) -> list[str]:
    names_ = [f"{objects.MASTER}-pod-0-master", "xmpp-server-pod-0-prosody", "xmpp-server-pod-0-exporter"]
    names_ += [name for name in podman("ps", "--format", "{{.Names}}").split()
               if name.startswith(f"{objects.WORKER}-pod-")]  # fmt: skip
    return names_


def _status(host_pid: str) -> dict[str, str]:
    text = Path(f"/proc/{host_pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_every_container_runs_as_10001_on_a_read_only_root_without_capabilities(played: Played) -> None:
    checked = []
    for name in _containers(played):
        pid = podman("container", "inspect", name, "--format", "{{.State.Pid}}").strip()
        status = _status(pid)
        assert status["Uid"].split() == ["10001"] * 4, (name, status["Uid"])
        assert status["Gid"].split() == ["10001"] * 4, (name, status["Gid"])
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (name, status["CapEff"])
        assert status["NoNewPrivs"].strip() == "1", name
        result = played.play.exec(name, "sh", "-c", "touch /usr/rw-check")
        assert result.returncode != 0 and "Read-only file system" in result.stderr, (name, result.stderr)
        checked.append(name)
    assert len([n for n in checked if "worker" in n]) == 2, checked


def test_the_manifests_probes_work_with_what_the_images_contain(played: Played) -> None:
    worker = container(one(played.small, "Deployment", objects.WORKER), "worker")
    for name in (f"{objects.WORKER}-pod-0-worker", f"{objects.WORKER}-pod-1-worker"):
        for probe in ("readinessProbe", "livenessProbe"):
            result = played.play.exec(name, *worker[probe]["exec"]["command"])
            assert result.returncode == 0, (name, probe, result.stderr)
    # TCP and HTTP probes are the kubelet's, from outside the pod: from the host here, on the test's network.
    master = container(one(played.small, "Deployment", objects.MASTER), objects.MASTER_CONTAINER)
    ports = {p["name"]: p["containerPort"] for p in master["ports"]}
    address = played.play.address(f"{objects.MASTER}-pod-0")
    for probe in ("readinessProbe", "livenessProbe"):
        with socket.create_connection((address, ports[master[probe]["tcpSocket"]["port"]]), timeout=5):
            pass
    server = one(played.prosody, "Deployment", "xmpp-server")
    address = played.play.address("xmpp-server-pod-0")
    for name in ("prosody", "exporter"):
        spec = container(server, name)
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in spec:
                continue
            if "httpGet" in spec[probe]:
                get = spec[probe]["httpGet"]
                assert _http(f"http://{address}:{ports[get['port']]}{get['path']}")[0] == 200
            else:
                with socket.create_connection((address, ports[spec[probe]["tcpSocket"]["port"]]), timeout=5):
                    pass


def test_the_exporter_beside_prosody_serves_its_process_metrics(played: Played) -> None:
    address = played.play.address("xmpp-server-pod-0")

    def scrape() -> dict[str, float]:
        status, text = _http(f"http://{address}:9647/metrics")
        assert status == 200
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line and not line.startswith("#") and len(line.split()) == 2}  # fmt: skip

    samples = _wait("the exporter's metrics", lambda: (s := scrape()).get(names.SERVER_CPU) is not None and s)
    assert samples[names.SERVER_CPU] > 0, "Prosody's CPU, read from its /proc by the sidecar"
    assert samples[names.SERVER_RSS] > 10 * 2**20
    assert samples[names.SERVER_OPEN_FDS] > 0
    assert any(name.startswith("prosody_") for name in samples), "Prosody's own metrics passed on"


def test_the_image_holds_nothing_that_only_builds_or_tests(images: None) -> None:
    script = (
        "import importlib.metadata as m, importlib.util as u, re\n"
        "for name in ('pytest', 'pip', 'setuptools', '_pytest', 'pluggy'):\n"
        "    assert u.find_spec(name) is None, name\n"
        "have = {re.sub('[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}\n"
        "for d in m.distributions():\n"
        "    for req in d.requires or []:\n"
        "        if 'extra ==' in req or 'sys_platform' in req or 'python_version <' in req:\n"
        "            continue\n"
        "        name = re.sub('[-_.]+', '-', re.split('[ <>=!~;\\\\[(]', req)[0]).lower()\n"
        "        if name not in have and (d.metadata['Name'], name) != ('locust', 'pytest'):\n"
        "            raise SystemExit(f'{d.metadata[\"Name\"]} requires {name}, not in the image')\n"
        "print('ok')\n"
    )
    result = subprocess.run(["podman", "run", "--rm", IMAGE, "python3", "-c", script], capture_output=True,
                            text=True, timeout=120, env=podman_env())  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    history = podman("history", "--format", "{{.CreatedBy}}", IMAGE)
    assert "pip install" not in history, "the build stage is not a layer of the image"
