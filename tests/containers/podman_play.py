"""The rendered manifests of ``k8s/`` played with ``podman kube play`` (podman 4.3), and ``locust-xmpp k8s run``'s
cluster steps (``xmpp_user/deploy/cluster.py``) done on the played pods.

podman is not Kubernetes. What it lacks, the play makes up for with stand-ins, each made here from the rendered
YAML (never a second copy of the manifests):

- no Service DNS: a pod is played on a network of the test's own with its Service's name as alias
  (``locust-master``, ``xmpp-server``);
- the downward API reads annotations from the Deployment's own metadata, not the pod template's: the run annotation
  goes there;
- an emptyDir is a named volume shared by every pod of every play: each Deployment's get the play's prefix, so
  that they are known and removed, and one play's do not meet another's;
- a Secret played with ``kind: Secret`` lands base64-encoded in its volume's files, and an optional secret volume
  is left out: the Secret is stored as podman 4.3 reads it (its data as plain text) and its volume is not optional;
- no registry: the lab Prosody's image is the one scripts/image.sh builds from Debian's package;
- probes do not run: the test runs them itself (``exec`` in the container, TCP and HTTP from the host);
- Services, NetworkPolicy, RBAC, scheduling and quotas are not played at all.

``PodmanCluster`` has the methods of ``Cluster`` that ``Run`` calls, so that ``Run`` itself (set the run, find its
master pod, scale the workers, wait for them to be ready, follow the master's log, see the master die, scale to zero,
take the run out) drives the played pods.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from xmpp_user.deploy.cluster import DeployError, LogLine, MasterState, exit_description
from xmpp_user.deploy.objects import MASTER, MASTER_CONTAINER, RUN_ANNOTATION, WORKER

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "k8s" / "podman" / "containers.conf"
PROSODY_IMAGE = "localhost/locust-xmpp-prosody:0.12"
"""scripts/image.sh's build of Debian's Prosody, in place of the manifest's prosody/prosody:0.12."""
ACCOUNTS_SECRET = "locust-xmpp-accounts"
PODMAN_TIMEOUT = 120


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT, input: str | None = None) -> str:
    """podman's output; AssertionError with its message if it fails and ``check``."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env(),
                            input=input)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def unavailable() -> str | None:
    """Why podman cannot play pods here, or None."""
    if os.geteuid() != 0:
        return "the container test needs root (rootful podman, debootstrap)"
    for command in ("podman", "debootstrap", "kubectl"):
        if shutil.which(command) is None:
            return f"{command} is missing: run  bash scripts/setup.sh"
    result = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True,
                            text=True, timeout=60, env=podman_env())  # fmt: skip
    if result.returncode != 0:
        return f"podman cannot run here: {result.stderr.strip()[:300]}"
    return None


def render(kustomization: str) -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / kustomization)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


class Play:
    """What the test plays, and everything it made, to be removed whatever happens."""

    def __init__(self, prefix: str, directory: Path) -> None:
        self.prefix = prefix
        self.directory = directory
        self.network = f"{prefix}-net"
        self.files: list[Path] = []
        self.volumes: set[str] = set()
        self.secrets: set[str] = set()
        self.network_made = False

    def create_network(self) -> None:
        podman("network", "create", self.network)
        self.network_made = True

    def _file(self, name: str, docs: list[dict[str, Any]]) -> Path:
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        if path not in self.files:
            self.files.append(path)
        return path

    def stand_in(self, deployment: dict[str, Any]) -> dict[str, Any]:
        """The Deployment as podman can play it (see the module's docstring)."""
        deployment = copy.deepcopy(deployment)
        spec = deployment["spec"]["template"]["spec"]
        renamed = {}
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                renamed[volume["name"]] = f"{self.prefix}-{deployment['metadata']['name']}-{volume['name']}"
                volume["name"] = renamed[volume["name"]]
                self.volumes.add(volume["name"])
            elif "configMap" in volume:
                self.volumes.add(volume["configMap"]["name"])  # podman 4.3 makes a named volume of each ConfigMap
            elif "secret" in volume:
                volume["secret"]["optional"] = False  # podman 4.3 leaves an optional secret volume out
                self.volumes.add(volume["secret"]["secretName"])
        for c in spec["containers"]:
            for mount in c.get("volumeMounts", []):
                mount["name"] = renamed.get(mount["name"], mount["name"])
            if c["image"].startswith("prosody/prosody:"):
                c["image"] = PROSODY_IMAGE
        return deployment

    def play(self, name: str, docs: list[dict[str, Any]], alias: str | None = None, replace: bool = False) -> None:
        """Play ConfigMaps and Deployments (stood in) on the test's network, with ``alias`` as the pods' DNS name."""
        played = [self.stand_in(d) if d["kind"] == "Deployment" else d for d in docs]
        path = self._file(name, played)
        network = f"{self.network}:alias={alias}" if alias else self.network
        podman("kube", "play", *(["--replace"] if replace else []), "--network", network, str(path))

    def secret(self, name: str, data: dict[str, str]) -> None:
        """Store a Secret as podman 4.3's secret volumes read it: its data as plain text (see the docstring)."""
        document = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}
        podman("secret", "rm", name, check=False)
        podman("secret", "create", name, "-", input=yaml.safe_dump(document))
        self.secrets.add(name)

    def down(self, name: str) -> None:
        path = self.directory / f"{name}.yaml"
        if path.exists():
            podman("kube", "down", str(path), check=False)

    def tear_down(self) -> list[str]:
        """Remove every pod, volume, secret and the network made; what could not be removed."""
        for path in reversed(self.files):
            podman("kube", "down", str(path), check=False)
        for path in self.files:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc["kind"] == "Deployment":
                    replicas = doc["spec"].get("replicas", 1) or 1
                    for n in range(max(replicas, 1)):
                        podman("pod", "rm", "-f", f"{doc['metadata']['name']}-pod-{n}", check=False)
        for volume in sorted(self.volumes):
            podman("volume", "rm", "-f", volume, check=False)
        for secret in sorted(self.secrets):
            podman("secret", "rm", secret, check=False)
        if self.network_made:
            podman("network", "rm", "-f", self.network, check=False)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        played = {doc["metadata"]["name"] for path in self.files for doc in yaml.safe_load_all(path.read_text())
                  if doc and doc["kind"] == "Deployment"}  # fmt: skip
        pods = podman("pod", "ps", "--format", "{{.Name}}", check=False).split()
        left = [f"pod {p}" for p in pods if any(p.startswith(f"{name}-pod-") for name in played)]
        volumes = set(podman("volume", "ls", "--format", "{{.Name}}", check=False).split())
        left += [f"volume {v}" for v in sorted(volumes & self.volumes)]
        secrets = set(podman("secret", "ls", "--format", "{{.Name}}", check=False).split())
        left += [f"secret {s}" for s in sorted(secrets & self.secrets)]
        networks = podman("network", "ls", "--format", "{{.Name}}", check=False).split()
        left += [f"network {n}" for n in networks if n == self.network]
        return left

    # ---- looking at the played pods ----

    def address(self, pod: str) -> str:
        infra = podman("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").strip()
        networks = json.loads(podman("inspect", infra, "--format", "{{json .NetworkSettings.Networks}}"))
        return networks[self.network]["IPAddress"]

    def running(self, name: str) -> bool:
        state = podman("container", "inspect", name, "--format", "{{.State.Running}}", check=False).strip()
        return state == "true"

    def exec(self, name: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", "exec", name, *command], capture_output=True, text=True, timeout=timeout,
                              env=podman_env())  # fmt: skip


class PodmanCluster:
    """``Cluster`` as ``Run`` uses it, on pods played by ``play``: the master's Deployment played again for a run
    (its annotation on the Deployment, as podman reads it), the workers played with as many replicas as asked,
    readiness by the worker's own readiness probe run in each worker, the master's log by ``podman logs``.
    """

    namespace = "podman"
    poll = 1.0

    def __init__(self, play: Play, base: list[dict[str, Any]]) -> None:
        self.play = play
        self.base = base
        self.configmaps = [d for d in base if d["kind"] == "ConfigMap"]
        self.replicas = 0

    def deployment(self, name: str) -> dict[str, Any]:
        try:
            return one(self.base, "Deployment", name)
        except ValueError:
            raise DeployError(f"deployment {name} not found in the rendered manifests") from None

    def check_capacity(self, deployment: dict[str, Any], replicas: int, asked: str) -> None:
        """podman has no quotas and one node: nothing to check."""

    def set_run(self, spec_json: str | None) -> None:
        master = copy.deepcopy(self.deployment(MASTER))
        annotations = master["metadata"].setdefault("annotations", {})
        if spec_json is None:
            annotations.pop(RUN_ANNOTATION, None)
        else:
            annotations[RUN_ANNOTATION] = spec_json
        self.play.play(MASTER, [*self.configmaps, master], alias=MASTER, replace=True)

    def master_container(self) -> str:
        return f"{MASTER}-pod-0-{MASTER_CONTAINER}"

    def run_pod(self, run_id: str, timeout: float) -> str:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            env = podman("container", "inspect", self.master_container(), "--format", "{{json .Config.Env}}",
                         check=False)  # fmt: skip
            if self.play.running(self.master_container()) and run_id in env:
                return f"{MASTER}-pod-0"
            time.sleep(self.poll)
        raise DeployError(f"timeout: the master pod of run {run_id} did not start within {timeout:g} s")

    def scale(self, name: str, replicas: int) -> None:
        assert name == WORKER
        if replicas == 0:
            self.play.down(WORKER)
        else:
            worker = copy.deepcopy(self.deployment(WORKER))
            worker["spec"]["replicas"] = replicas
            self.play.play(WORKER, [worker], replace=True)
        self.replicas = replicas

    def worker_containers(self) -> list[str]:
        return [f"{WORKER}-pod-{n}-worker" for n in range(self.replicas)]

    def ready(self, name: str) -> bool:
        """The worker's readiness probe, run in it as the kubelet would."""
        probe = container(self.deployment(WORKER), "worker")["readinessProbe"]["exec"]["command"]
        return self.play.running(name) and self.play.exec(name, *probe).returncode == 0

    def wait_ready(self, name: str, replicas: int, timeout: float, asked: str = "") -> float:
        start = time.monotonic()
        while True:
            ready = sum(self.ready(c) for c in self.worker_containers())
            if ready == replicas == self.replicas:
                return time.monotonic() - start
            if time.monotonic() - start >= timeout:
                raise DeployError(f"timeout: {ready} of {replicas} {name} replicas ready after {timeout:g} s{asked}")
            time.sleep(self.poll)

    def master_state(self, pod: str) -> MasterState:
        """The master container as ``podman inspect`` has it. podman starts no container again that ``podman kill``
        ended, as the kubelet would: an ended master is final here."""
        found = podman("container", "inspect", f"{pod}-{MASTER_CONTAINER}", "--format",
                       "{{json .State}} {{.RestartCount}}", check=False).strip()  # fmt: skip
        if not found:
            return MasterState(False, ended="its pod is gone", final=True)
        state_json, _, restarts = found.rpartition(" ")
        state = json.loads(state_json)
        if state["Running"]:
            return MasterState(True, int(restarts))
        ended = exit_description("OOMKilled" if state.get("OOMKilled") else None, state.get("ExitCode"))
        return MasterState(False, int(restarts), ended, final=True)

    def log(self, pod: str, since_seconds: int | None = None) -> Iterator[LogLine]:
        """The master's output, followed until its container ends. Without podman's timestamps: with them, a line
        that conmon wrote in two parts carries the second part's timestamp in its middle."""
        since = ["--since", f"{since_seconds}s"] if since_seconds is not None else []
        command = ["podman", "logs", "-f", *since, f"{pod}-{MASTER_CONTAINER}"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=podman_env())  # fmt: skip
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                yield LogLine(("", ""), raw.rstrip("\n"))
        finally:
            process.kill()
            process.wait(timeout=10)
