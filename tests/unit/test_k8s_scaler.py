"""``locust-xmpp k8s scale`` and ``k8s run`` against kmock's Kubernetes API emulator on loopback
(``k8s_emulator.py``), with the Deployments of ``k8s/base``: the scale patch, the wait for readiness (the test's
controller marks replicas ready through the API), every error as one line with exit code 2, a run whose files come
back through the master's log, workers scaled back to zero after any run (and after a real Ctrl+C), and every
request of a run granted by the Role of ``k8s/base/rbac.yaml``. Ctrl+C during a run is tested on a fake cluster.
"""

from __future__ import annotations

# xmpp_user first: Locust monkey-patches with gevent on import, which must come before the Kubernetes client's.
from xmpp_user import cli  # isort: skip
from xmpp_user.deploy import transfer  # isort: skip

import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_cluster import RecordingCluster
from k8s_emulator import FORBIDDEN, TEST_AGENT, Controller, container_status, emulator, kubeconfig
from schema_tools import REPO

from xmpp_user.deploy.cluster import Cluster, DeployError, LogLine, MasterState
from xmpp_user.deploy.run import Run, locust_arguments

kubernetes = pytest.importorskip("kubernetes", reason="the k8s extra is missing: run  bash scripts/setup.sh")
pytest.importorskip("kmock", reason="kmock is missing: run  bash scripts/setup.sh")
from kubernetes import client  # noqa: E402

BASE = REPO / "k8s" / "base"
PER_WORKER = ("--per-worker", "5000")
"""The figures below are written for 5,000 users per worker (a later --per-worker in a call wins)."""
ERROR = "locust-xmpp: error: "
_namespaces = itertools.count(1)


@dataclass
class Emulator:
    port: int
    request_log: Path
    api: Any
    directory: Path

    def requests(self) -> list[dict[str, Any]]:
        """Every request the emulator got, in order: method, path, query, body, agent."""
        return [json.loads(line) for line in self.request_log.read_text().splitlines()]

    def requests_to(self, method: str, path: str) -> list[Any]:
        """The bodies of the requests made to ``path`` with ``method``, in order (None for none)."""
        return [r["body"] for r in self.requests() if (r["method"], r["path"]) == (method, path)]

    def scales(self, namespace: str) -> list[int]:
        """The replica counts the worker Deployment's scale was patched with, in order."""
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/locust-worker/scale"
        return [body["spec"]["replicas"] for body in self.requests_to("PATCH", path)]


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    directory = tmp_path_factory.mktemp("kmock")
    with emulator(directory) as (port, requests):
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{port}"
        api = client.ApiClient(configuration)
        api.user_agent = TEST_AGENT
        yield Emulator(port, requests, api, directory)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Cluster, "poll", 0.05)


@pytest.fixture
def namespace(k8s: Emulator) -> str:
    """A namespace of its own with k8s/base's master and worker Deployments."""
    name = f"test-{next(_namespaces)}"
    apps = client.AppsV1Api(k8s.api)
    for path in (BASE / "master.yaml", BASE / "worker.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "Deployment":
                doc["metadata"]["namespace"] = name
                apps.create_namespaced_deployment(name, doc)
    return name


def _cli(k8s: Emulator, action: str, *args: str, namespace: str | None = None) -> int:
    """``locust-xmpp k8s ACTION`` with a kubeconfig for the emulator whose context names ``namespace``."""
    config = kubeconfig(k8s.directory, k8s.port, namespace)
    return cli.main(["k8s", action, "--kubeconfig", str(config), "--timeout", "5", *PER_WORKER, *args])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(ERROR)]
    assert len(errors) == 1, err
    return errors[0][len(ERROR) :]


def _worker(k8s: Emulator, namespace: str) -> client.V1Deployment:
    return client.AppsV1Api(k8s.api).read_namespaced_deployment("locust-worker", namespace)


def _master_annotations(k8s: Emulator, namespace: str) -> dict[str, str]:
    master = client.AppsV1Api(k8s.api).read_namespaced_deployment("locust-master", namespace)
    return master.spec.template.metadata.annotations or {}


# ---- k8s scale ----


def test_scale_patches_the_scale_subresource_and_waits_until_ready(
    k8s: Emulator, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Controller(k8s.api, namespace) as controller:
        assert _cli(k8s, "scale", "--users", "12000", namespace=namespace) == 0
        assert _cli(k8s, "scale", "--users", "600", "--per-worker", "250", namespace=namespace) == 0
    out = capsys.readouterr().out
    assert f"locust-worker: 3 replicas ready in namespace {namespace} (12,000 users at 5,000 per worker)" in out
    assert "locust-worker: 3 replicas ready" in out.splitlines()[1] and "(600 users at 250 per worker)" in out
    assert k8s.scales(namespace) == [3, 3]
    assert controller.worker_replicas[-1] == 3
    assert _worker(k8s, namespace).spec.replicas == 3


def test_scale_to_zero_waits_until_no_worker_is_left(
    k8s: Emulator, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Controller(k8s.api, namespace):
        assert _cli(k8s, "scale", "--users", "5000", namespace=namespace) == 0
        assert _cli(k8s, "scale", "--users", "0", namespace=namespace) == 0
    assert "locust-worker: 0 replicas ready" in capsys.readouterr().out
    assert _worker(k8s, namespace).spec.replicas == 0


def test_a_missing_deployment_is_one_line(k8s: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(k8s, "scale", "--users", "10", namespace="nothing-here") == 2
    assert _error(capsys) == ("deployment locust-worker not found in namespace nothing-here: apply the manifests "
                              "first (kubectl apply -k k8s/overlays/small)")  # fmt: skip


def test_forbidden_is_one_line_naming_the_role(k8s: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(k8s, "scale", "--users", "10", namespace=FORBIDDEN) == 2
    error = _error(capsys)
    assert error.startswith('forbidden: deployments.apps "locust-worker" is forbidden: User ')
    assert error.endswith("(k8s/base/rbac.yaml grants what locust-xmpp k8s needs)")


def test_a_timeout_says_what_became_ready_and_why_not(
    k8s: Emulator, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(k8s.directory, k8s.port, namespace)
    with Controller(k8s.api, namespace, workers_ready=False):
        code = cli.main(["k8s", "scale", "--users", "10000", "--kubeconfig", str(config), "--timeout", "0.5",
                         *PER_WORKER])
    assert code == 2
    assert _error(capsys) == ("timeout: 0 of 2 locust-worker replicas ready after 0.5 s (10,000 users at 5,000 per "
                              "worker); 2 pods not ready, locust-worker-0 unschedulable: 0/3 nodes are available: "
                              "3 Insufficient cpu.")  # fmt: skip


def test_a_quota_too_small_for_the_workers_is_said_before_scaling(
    k8s: Emulator, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute", "namespace": namespace},
             "spec": {"hard": {"requests.cpu": "4", "limits.memory": "8Gi"}},
             "status": {"hard": {"requests.cpu": "4", "limits.memory": "8Gi"},
                        "used": {"requests.cpu": "1500m", "limits.memory": "1Gi"}}}  # fmt: skip
    client.CoreV1Api(k8s.api).create_namespaced_resource_quota(namespace, quota)
    assert _cli(k8s, "scale", "--users", "15000", namespace=namespace) == 2
    assert _error(capsys) == ("cluster too small (15,000 users at 5,000 per worker): 3 workers need 3 more "
                              "requests.cpu, and ResourceQuota compute leaves 2.5 of 4")  # fmt: skip
    assert k8s.scales(namespace) == []


def test_nodes_too_small_for_the_workers_are_said_when_they_can_be_read(
    k8s: Emulator, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    core = client.CoreV1Api(k8s.api)
    nodes = [f"node-{index}" for index in range(2)]
    for name in nodes:
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                          "status": {"allocatable": {"cpu": "1900m"},
                                     "conditions": [{"type": "Ready", "status": "True"}]}})  # fmt: skip
    try:
        assert _cli(k8s, "scale", "--users", "20000", namespace=namespace) == 2
    finally:
        for name in nodes:
            core.delete_node(name)
    assert _error(capsys) == ("cluster too small (20,000 users at 5,000 per worker): 4 workers request 4 CPU, and "
                              "all its schedulable nodes have 3.8 allocatable")  # fmt: skip


def test_a_bad_kubeconfig_and_an_api_out_of_reach_are_one_line(
    k8s: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: [is not a kubeconfig\n")
    assert cli.main(["k8s", "scale", "--users", "1", "--kubeconfig", str(bad)]) == 2
    assert _error(capsys).startswith(f"cannot load the cluster's configuration from {bad}: ")
    closed = kubeconfig(tmp_path, 1, "somewhere")  # port 1: nothing listens
    assert cli.main(["k8s", "scale", "--users", "1", "--kubeconfig", str(closed)]) == 2
    assert _error(capsys).startswith("cannot reach the Kubernetes API at http://127.0.0.1:1: ")


def test_the_master_containers_state_is_read_from_its_pod(k8s: Emulator, namespace: str) -> None:
    core = client.CoreV1Api(k8s.api)
    for name, running in (("running", True), ("ended", False)):
        statuses = [container_status("master", running=running)]
        core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "master", "image": "locust-xmpp:0.1.0"}]},
            "status": {"phase": "Running", "containerStatuses": statuses}})  # fmt: skip
    cluster = Cluster(k8s.api, namespace)
    assert cluster.master_state("running") == MasterState(True, 0, "", final=False)
    assert cluster.master_state("ended") == MasterState(False, 0, "Completed, exit code 0", final=False)
    assert cluster.master_state("gone") == MasterState(False, 0, "its pod is gone", final=True)


# ---- k8s run ----


def _master_log(tmp_path: Path, exit_code: int = 0, damage: bool = False) -> Any:
    directory = tmp_path / "written-by-the-master"
    directory.mkdir()
    (directory / "run_stats.csv").write_text("Type,Name,Request Count\nXMPP,connect,7000\n")
    (directory / "run_truth.json").write_text('{"lost": 0}\n')

    def log(spec: dict[str, Any]) -> str:
        block = list(transfer.block(spec["id"], directory, exit_code))
        if damage:
            del block[1]
        return "\n".join(["[master] Starting Locust 2.47.0", "[master] All users spawned", *block,
                          "locust-xmpp k8s master: the interactive master takes over"]) + "\n"  # fmt: skip

    return log


def test_a_run_brings_its_files_back_and_scales_the_workers_back_to_zero(
    k8s: Emulator, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "results"
    with Controller(k8s.api, namespace, master_log=_master_log(tmp_path, exit_code=1)) as controller:
        code = _cli(k8s, "run", "--users", "7000", "--output", str(output), "--", "-f", "/locustfiles/quickstart.py",
                    "-t", "1m", namespace=namespace)  # fmt: skip
    assert code == 1, "the exit code is Locust's"
    out = capsys.readouterr().out
    assert "[master] Starting Locust 2.47.0" in out and "[master] All users spawned" in out
    assert transfer.PREFIX not in out, "the files' block is not shown"
    assert "locust exit code 1; 2 files in" in out
    assert (output / "run_stats.csv").read_text() == "Type,Name,Request Count\nXMPP,connect,7000\n"
    assert (output / "run_truth.json").read_text() == '{"lost": 0}\n'
    [run] = controller.runs
    assert run["workers"] == 2 and run["args"] == ["--users", "7000", "-f", "/locustfiles/quickstart.py", "-t", "1m"]
    assert k8s.scales(namespace) == [2, 0]
    assert _worker(k8s, namespace).spec.replicas == 0
    assert "locust-xmpp/run" not in _master_annotations(k8s, namespace), "the interactive master is back"


def _rbac_request(request: dict[str, Any], namespace: str) -> tuple[str, str, str | None] | None:
    """The (verb, resource, name) RBAC sees in a request to ``namespace`` (None for another namespace)."""
    if request["path"] == "/api/v1/nodes":
        return ("list", "nodes", None)
    match = re.fullmatch(
        rf"/apis?(?:/apps)?/v1/namespaces/{namespace}/(\w+)(?:/([\w.-]+))?(?:/(\w+))?", request["path"]
    )
    if match is None:
        return None
    resource, name, subresource = match.groups()
    verb = {"GET": "get" if name else "list", "PATCH": "patch"}[request["method"]]
    return (verb, f"{resource}/{subresource}" if subresource else resource, name)


def test_the_runner_role_grants_every_request_of_a_run(k8s: Emulator, namespace: str, tmp_path: Path) -> None:
    with Controller(k8s.api, namespace, master_log=_master_log(tmp_path)):
        assert _cli(k8s, "run", "--users", "6000", "--output", str(tmp_path / "out"), namespace=namespace) == 0
    [role] = [d for d in yaml.safe_load_all((BASE / "rbac.yaml").read_text()) if d["kind"] == "Role"]
    asked = {_rbac_request(r, namespace) for r in k8s.requests() if r["agent"] != TEST_AGENT} - {None}
    resources = {resource for _verb, resource, _name in asked}  # type: ignore[misc]
    assert resources == {"deployments", "deployments/scale", "pods", "pods/log", "resourcequotas", "nodes"}
    for verb, resource, name in sorted(asked, key=str):
        if resource == "nodes":
            continue  # cluster-wide: a namespaced Role cannot grant it, and the command does without (403 tolerated)
        granted = [rule for rule in role["rules"] if resource in rule["resources"] and verb in rule["verbs"]
                   and (not rule.get("resourceNames") or name in rule["resourceNames"])]  # fmt: skip
        assert granted, f"the Role does not grant {verb} {resource} {name or ''}"


def test_a_failed_run_still_scales_the_workers_back_to_zero(
    k8s: Emulator, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(k8s.directory, k8s.port, namespace)
    with Controller(k8s.api, namespace, workers_ready=False, master_log=_master_log(tmp_path)):
        code = cli.main(["k8s", "run", "--users", "12000", "--kubeconfig", str(config), "--timeout", "0.5", *PER_WORKER,
                         "--output", str(tmp_path / "results"), "--", "-f", "/locustfiles/livechat.py"])  # fmt: skip
    assert code == 2
    assert _error(capsys).startswith("timeout: 0 of 3 locust-worker replicas ready after 0.5 s (12,000 users")
    assert k8s.scales(namespace) == [3, 0]
    assert _worker(k8s, namespace).spec.replicas == 0
    assert "locust-xmpp/run" not in _master_annotations(k8s, namespace)
    assert not (tmp_path / "results").exists()


def test_damaged_files_are_said_and_left_in_the_master_pod(
    k8s: Emulator, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Controller(k8s.api, namespace, master_log=_master_log(tmp_path, damage=True)) as controller:
        code = _cli(k8s, "run", "--users", "10", "--output", str(tmp_path / "out"), namespace=namespace)
    assert code == 2
    error = _error(capsys)
    assert "came through the master's log damaged" in error
    assert f"kubectl cp {namespace}/locust-master-{controller.runs[0]['id']}:/results/" in error
    assert k8s.scales(namespace) == [1, 0]
    assert "locust-xmpp/run" in _master_annotations(k8s, namespace), "the run's pod, with its files, stays"


def test_the_users_asked_become_locusts_unless_the_arguments_say() -> None:
    assert locust_arguments(["-f", "x.py"], 500) == ["--users", "500", "-f", "x.py"]
    assert locust_arguments(["-u", "7"], 500) == ["-u", "7"]
    assert locust_arguments(["--users=7"], 500) == ["--users=7"]


def _ctrl_c_as_a_terminal_sends_it() -> None:
    """In the command's process, before it starts: SIGINT handled by default and not blocked, as from a shell,
    whatever the test process (gevent, Playwright, earlier tests) did with its own signals."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return str(exc)
    return ", ".join(line for line in status if line.startswith(("State", "SigBlk", "SigIgn", "SigCgt", "SigPnd")))


def test_ctrl_c_while_waiting_for_the_workers_still_scales_them_back_to_zero(
    k8s: Emulator, namespace: str, tmp_path: Path
) -> None:
    config = kubeconfig(k8s.directory, k8s.port, namespace)
    command = [str(Path(sys.executable).with_name("locust-xmpp")), "k8s", "run", "--users", "5000", *PER_WORKER,
               "--kubeconfig", str(config), "--timeout", "60", "--", "-f", "/locustfiles/quickstart.py"]  # fmt: skip
    with Controller(k8s.api, namespace, workers_ready=False, master_log=_master_log(tmp_path)):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=_ctrl_c_as_a_terminal_sends_it)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while k8s.scales(namespace) != [1] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert k8s.scales(namespace) == [1], "the command scaled the workers"
            time.sleep(0.5)  # its scale request answered: it is waiting for the workers
            process.send_signal(signal.SIGINT)
            try:
                _out, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit 30 s after Ctrl+C; its signals: {_signal_state(process.pid)}", pytrace=False)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert process.returncode == 130, err
    assert k8s.scales(namespace) == [1, 0]
    assert "locust-xmpp/run" not in _master_annotations(k8s, namespace)


# ---- Ctrl+C, on a fake cluster ----


class FakeCluster(RecordingCluster):
    """Its log raises KeyboardInterrupt once, as Ctrl+C would, before the files."""

    def __init__(self, block: list[str]) -> None:
        super().__init__()
        self.block = block
        self.interrupted = False

    def deployment(self, name: str) -> Any:
        return client.V1Deployment(spec=client.V1DeploymentSpec(
            replicas=0, selector=client.V1LabelSelector(), template=client.V1PodTemplateSpec()))  # fmt: skip

    def log(self, pod: str, since_seconds: int | None = None) -> Iterator[LogLine]:
        yield LogLine(("", ""), "[master] running")
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        self.calls.append(("log after Ctrl+C", None))
        for line in self.block:
            yield LogLine(("", ""), line)


def test_ctrl_c_stops_the_run_collects_its_files_and_scales_to_zero(tmp_path: Path, monkeypatch: Any) -> None:
    directory = tmp_path / "written"
    directory.mkdir()
    (directory / "run_stats.csv").write_text("stopped early\n")
    run = Run(FakeCluster([]), users=100, per_worker=50, timeout=5, output=tmp_path / "out")  # type: ignore[arg-type]
    run.cluster.block = list(transfer.block(run.id, directory, 0))  # type: ignore[attr-defined]
    assert run(["-f", "/locustfiles/quickstart.py"]) == 0
    assert run.cluster.calls == [  # type: ignore[attr-defined]
        ("set_run", True), ("scale", 2),
        ("set_run", False),  # Ctrl+C: the run's pod is told to stop, and its log read on
        ("log after Ctrl+C", None),
        ("scale", 0), ("set_run", False),
    ]  # fmt: skip
    assert (tmp_path / "out" / "run_stats.csv").read_text() == "stopped early\n"


def test_a_master_that_ends_without_files_is_said(monkeypatch: Any) -> None:
    class Ended(FakeCluster):
        def log(self, pod: str, since_seconds: int | None = None) -> Iterator[LogLine]:
            yield LogLine(("", ""), "Traceback (most recent call last):")

        def master_state(self, pod: str) -> MasterState:
            return MasterState(False, 0, "Error, exit code 1", final=True)

    run = Run(Ended([]), users=1, per_worker=1, timeout=5, output=None)  # type: ignore[arg-type]
    with pytest.raises(DeployError, match="the master pod master-pod ended without the run's files"):
        run([])
    assert run.cluster.calls[-2:] == [("scale", 0), ("set_run", False)]  # type: ignore[attr-defined]
