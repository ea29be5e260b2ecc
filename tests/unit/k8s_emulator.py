"""A Kubernetes API on loopback for the tests of ``locust-xmpp k8s``: kmock's in-memory emulator, in a process of
its own, and what the tests play around it: a controller and a kubelet.

kmock stores objects, applies patches and serves lists, but runs no controller: no pods come of a Deployment, no
status changes, no logs. ``Controller`` does what the tests need of that through the API, as a controller would:
it marks the worker Deployment's replicas ready (or leaves pending pods that say why not), and starts the master
pod of a run with the log it will have. The emulator serves a pod's log from its ``test/log`` annotation, and
answers 403 to everything in the namespace ``forbidden``.

    python tests/unit/k8s_emulator.py REQUEST_LOG   # prints its port; logs each request as a JSON line
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FORBIDDEN = "forbidden"
TEST_AGENT = "locust-xmpp-tests"
"""The User-Agent of the test's own requests (its controller, its fixtures), to tell them from the command's."""
LOG_ANNOTATION = "test/log"
START_TIMEOUT = 20.0


def _serve(request_log: str) -> None:
    import kmock

    async def main() -> None:
        async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s) as server:
            k8s.resources["apps/v1/deployments"] = kmock.ResourceInfo(
                kind="Deployment", namespaced=True, subresources={"scale", "status"})  # fmt: skip
            k8s.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, subresources={"log", "status"})
            k8s.resources["v1/resourcequotas"] = kmock.ResourceInfo(kind="ResourceQuota", namespaced=True)
            k8s.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False)
            stamps = itertools.count(1)

            with open(request_log, "a", buffering=1) as log:
                seen: set[int] = set()

                def record(request: Any) -> bool:
                    if request.id not in seen:  # kmock asks a criterion again for every reaction it tries
                        seen.add(request.id)
                        entry = {"method": request.method.value, "path": request.url.path,
                                 "query": request.url.query_string, "agent": request.headers.get("User-Agent", ""),
                                 "body": json.loads(request.text) if request.text else None}  # fmt: skip
                        log.write(json.dumps(entry) + "\n")
                    return False  # only seen: the request goes on to the reactions below

                def pod_log(request: Any) -> bytes:
                    pod = k8s.objects[kmock.resource("v1/pods"), request.namespace, request.name]
                    text = pod["metadata"]["annotations"][LOG_ANNOTATION]
                    if request.params.get("timestamps") == "true":  # as the kubelet: RFC 3339 with nanoseconds
                        lines = text.splitlines()
                        text = "".join(f"2030-01-01T00:00:00.{next(stamps):09d}Z {line}\n" for line in lines)
                    return text.encode()

                k8s[record] << b""
                k8s[kmock.namespace(FORBIDDEN)] << kmock.KubernetesError(
                    status=403, reason="Forbidden", message=f'deployments.apps "locust-worker" is forbidden: User '
                    f'"system:serviceaccount:ci:runner" cannot get resource "deployments" in API group "apps" in the '
                    f'namespace "{FORBIDDEN}"')  # fmt: skip
                k8s[kmock.subresource("log")] << kmock.headers({"Content-Type": "text/plain"}) << pod_log
                print(server.port, flush=True)
                await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def emulator(directory: Path) -> Iterator[tuple[int, Path]]:
    """Start the emulator; its port and request log. Stopped by its PID on the way out."""
    request_log = directory / "requests.log"
    request_log.touch()
    process = subprocess.Popen([sys.executable, __file__, str(request_log)], stdout=subprocess.PIPE, text=True)
    try:
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(process.stdout.readline() if process.stdout else ""))
        reader.start()
        reader.join(START_TIMEOUT)
        if not ready or not ready[0].strip().isdigit():
            raise RuntimeError(f"the kmock emulator did not start within {START_TIMEOUT:g} s")
        yield int(ready[0]), request_log
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def kubeconfig(directory: Path, port: int, namespace: str | None = None) -> Path:
    """A kubeconfig for the emulator, with ``namespace`` in its context if given."""
    context: dict[str, Any] = {"cluster": "kmock", "user": "tester"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": context}],
        "current-context": "kmock",
    }
    path = directory / f"kubeconfig-{namespace or 'none'}"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def container_status(name: str, running: bool = True, waiting: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": "2030-01-01T00:00:00Z"}} if running else {}
    if waiting:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} for the test"}}
    elif not running:
        state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    return {"name": name, "image": "locust-xmpp:0.1.0", "imageID": "", "ready": running and not waiting,
            "restartCount": 0, "state": state}  # fmt: skip


class Controller(threading.Thread):
    """What the cluster would do, through the API: worker replicas ready (or pods pending), the run's master pod.

    ``workers_ready``: mark the worker Deployment's replicas ready as they are asked for; else leave one pending pod
    per replica that is unschedulable. ``master_log``: the log of the run's master pod, from the run's spec.
    """

    def __init__(self, api: Any, namespace: str, workers_ready: bool = True,
                 master_log: Callable[[dict[str, Any]], str] | None = None) -> None:  # fmt: skip
        super().__init__(daemon=True)
        from kubernetes import client

        own = client.ApiClient(api.configuration)
        own.user_agent = TEST_AGENT
        self.apps, self.core = client.AppsV1Api(own), client.CoreV1Api(own)
        self.namespace = namespace
        self.workers_ready = workers_ready
        self.master_log = master_log
        self.runs: list[dict[str, Any]] = []
        """Every run written into the master's pod template, in order."""
        self.worker_replicas: list[int] = []
        """Every replica count the worker Deployment was given, in order."""
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def __enter__(self) -> Controller:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self._workers()
            self._master()

    def _workers(self) -> None:
        worker = self.apps.read_namespaced_deployment("locust-worker", self.namespace)
        wanted = worker.spec.replicas or 0
        if not self.worker_replicas or self.worker_replicas[-1] != wanted:
            self.worker_replicas.append(wanted)
        status = worker.status
        if status is not None and (status.replicas or 0) == wanted:
            return
        if self.workers_ready:
            ready = {"replicas": wanted, "readyReplicas": wanted, "updatedReplicas": wanted}
            self.apps.patch_namespaced_deployment_status("locust-worker", self.namespace, {"status": ready})
            return
        self.apps.patch_namespaced_deployment_status("locust-worker", self.namespace,
                                                     {"status": {"replicas": wanted, "readyReplicas": 0}})  # fmt: skip
        for index in range(wanted):
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"locust-worker-{index}", "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "locust-xmpp",
                                        "app.kubernetes.io/component": "worker"}},
                "spec": {"containers": [{"name": "worker", "image": "locust-xmpp:0.1.0"}]},
                "status": {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient cpu."}]},
            }  # fmt: skip
            try:
                self.core.create_namespaced_pod(self.namespace, pod)
            except Exception:  # noqa: BLE001 - already there from an earlier pass
                pass

    def _master(self) -> None:
        master = self.apps.read_namespaced_deployment("locust-master", self.namespace)
        annotations = (master.spec.template.metadata.annotations or {}) if master.spec.template.metadata else {}
        text = annotations.get("locust-xmpp/run")
        if not text or (self.runs and self.runs[-1]["json"] == text):
            return
        spec = json.loads(text)
        self.runs.append({"json": text, **spec})
        if self.master_log is None:
            return
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"locust-master-{spec['id']}", "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/name": "locust-xmpp", "app.kubernetes.io/component": "master"},
                         "annotations": {"locust-xmpp/run": text, LOG_ANNOTATION: self.master_log(spec)}},
            "spec": {"containers": [{"name": "master", "image": "locust-xmpp:0.1.0"}]},
            "status": {"phase": "Running", "containerStatuses": [container_status("master")]},
        }  # fmt: skip
        self.core.create_namespaced_pod(self.namespace, pod)


if __name__ == "__main__":
    _serve(sys.argv[1])
