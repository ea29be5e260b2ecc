"""The Kubernetes API as ``locust-xmpp k8s`` uses it, through the official client: the worker Deployment's scale
and readiness, whether the namespace has room for more workers, the master's run annotation, its pod (running,
started again, how it ended) and log.

Every failure is a DeployError of one line: a missing Deployment, a right the Role lacks, a timeout with what
became ready and why not, a cluster too small for the workers asked, a bad kubeconfig, an API out of reach.
The rights used are those of ``k8s/base/rbac.yaml``; label selectors are also checked here, so that a list the
server did not filter is read right.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils.quantity import parse_quantity

from xmpp_user.deploy.objects import MASTER, MASTER_CONTAINER, MASTER_LABELS, NAMESPACE, RBAC, RUN_ANNOTATION

POLL = 1.0
"""Seconds between two looks at the cluster while waiting."""
REQUEST_TIMEOUT = (10, 30)
"""Connect and read timeouts of an API request, in seconds."""
LOG_READ_TIMEOUT = 60
"""Seconds of silence after which the master's log is asked for again (a stream cut by a proxy ends so)."""
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MERGE_PATCH = "application/merge-patch+json"


class DeployError(Exception):
    """An expected failure, said in one line."""


@dataclass(frozen=True)
class MasterState:
    """The master container of a run's pod, as ``k8s run`` watches it while it follows the log."""

    running: bool
    restarts: int = 0
    """Times the kubelet started it again (killed, out of memory, its liveness probe): the run died each time."""
    ended: str = ""
    """How it last ended, if it did ("OOMKilled, exit code 137 (SIGKILL)"), or how its pod did ("pod Evicted: ...",
    "its pod is gone")."""
    final: bool = False
    """No container of the pod will run again: the pod is gone, being deleted, or has ended."""


def exit_description(reason: str | None, code: int | None) -> str:
    """How a container ended, in a few words: "OOMKilled, exit code 137 (SIGKILL)"."""
    text = f"exit code {code}"
    if code is not None and code > 128:
        try:
            text += f" ({signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"{reason}, {text}" if reason else text


@dataclass(frozen=True)
class LogLine:
    timestamp: tuple[str, str]
    """The kubelet's time of the line, as (seconds, nanoseconds) strings that sort in time order."""
    text: str


def _namespace_of_context(kubeconfig: str | None) -> str | None:
    try:
        _contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return ((active or {}).get("context") or {}).get("namespace")


def connect(kubeconfig: str | None = None, namespace: str | None = None) -> Cluster:
    """The cluster of ``kubeconfig``; without one, of the pod this runs in, else of $KUBECONFIG or ~/.kube/config.

    The namespace: ``namespace``, else the kubeconfig context's (in a pod, its own), else the overlays' (NAMESPACE).
    """
    in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
        else:
            # persist_config=False: a refreshed token is not written back into the user's kubeconfig.
            api = config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        source = "the pod's service account" if in_cluster else (kubeconfig or os.environ.get("KUBECONFIG")
                                                                   or "~/.kube/config")  # fmt: skip
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DeployError(f"cannot load the cluster's configuration from {source}: {reason}") from None
    if namespace is None:
        if in_cluster:
            try:
                with open(SERVICE_ACCOUNT_NAMESPACE) as f:
                    namespace = f.read().strip() or None
            except OSError:
                namespace = None
        else:
            namespace = _namespace_of_context(kubeconfig)
    return Cluster(api, namespace or NAMESPACE)


def _matches(labels: dict[str, str] | None, selector: dict[str, str]) -> bool:
    return all((labels or {}).get(key) == value for key, value in selector.items())


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _quantity(value: Decimal, resource: str) -> str:
    """A quantity for people: cores for CPU, MiB or GiB for memory, a count for pods."""
    if "memory" in resource or "storage" in resource:
        mib = value / 2**20
        return f"{mib / 1024:.1f}Gi" if mib >= 1024 else f"{mib:.0f}Mi"
    return f"{value.normalize():f}"


def _pod_requests(template: client.V1PodTemplateSpec) -> dict[str, Decimal]:
    """What one pod of the template counts against a quota: requests and limits of its containers, and itself."""
    totals = {"pods": Decimal(1)}
    for container in template.spec.containers if template.spec else []:
        resources = container.resources or client.V1ResourceRequirements()
        limits, requests = resources.limits or {}, resources.requests or {}
        for name in ("cpu", "memory"):
            # A container with a limit and no request requests its limit.
            request = requests.get(name, limits.get(name))
            if request is not None:
                for key in (f"requests.{name}", name):
                    totals[key] = totals.get(key, Decimal(0)) + parse_quantity(request)
            if name in limits:
                totals[f"limits.{name}"] = totals.get(f"limits.{name}", Decimal(0)) + parse_quantity(limits[name])
    return totals


class Cluster:
    poll = POLL
    """Seconds between two looks at the cluster while waiting."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    # ---- requests, each failure one line ----

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            return method(*args, **kwargs)
        except ApiException as exc:
            raise self._api_error(what, exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise DeployError(f"cannot reach the Kubernetes API at {self.api.configuration.host}: "
                              f"{_reason(exc)}") from None  # fmt: skip

    def _api_error(self, what: str, exc: ApiException) -> DeployError:
        message = _status_message(exc)
        if exc.status == 401:
            return DeployError(f"the Kubernetes API at {self.api.configuration.host} refused the credentials "
                               f"(401 Unauthorized): check the kubeconfig")  # fmt: skip
        if exc.status == 403:
            return DeployError(f"forbidden: {message} ({RBAC} grants what locust-xmpp k8s needs)")
        if exc.status == 404:
            hint = ": apply the manifests first (kubectl apply -k k8s/overlays/small)" if "deployment" in what else ""
            return DeployError(f"{what} not found in namespace {self.namespace}{hint}")
        return DeployError(f"{what}: {exc.status} {exc.reason}: {message}")

    # ---- Deployments ----

    def deployment(self, name: str) -> client.V1Deployment:
        return self._call(f"deployment {name}", self.apps.read_namespaced_deployment, name, self.namespace)

    def scale(self, name: str, replicas: int) -> None:
        """Set the Deployment's replicas through its scale subresource."""
        # The reply is not read: only the request's success matters (and kmock answers with the Deployment).
        response = self._call(f"deployment {name}", self.apps.patch_namespaced_deployment_scale, name,
                              self.namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH,
                              _preload_content=False)  # fmt: skip
        response.release_conn()

    def wait_ready(self, name: str, replicas: int, timeout: float, asked: str = "") -> float:
        """Wait until the Deployment has exactly ``replicas`` pods, all ready; the seconds it took."""
        start = time.monotonic()
        while True:
            deployment = self.deployment(name)
            status = deployment.status or client.V1DeploymentStatus()
            ready, current = status.ready_replicas or 0, status.replicas or 0
            observed = (
                status.observed_generation is None
                or deployment.metadata.generation is None
                or (status.observed_generation >= deployment.metadata.generation)
            )
            if observed and deployment.spec.replicas == replicas and current == replicas and ready >= replicas:
                return time.monotonic() - start
            waited = time.monotonic() - start
            if waited >= timeout:
                why = self._not_ready(deployment)
                raise DeployError(f"timeout: {min(ready, replicas)} of {replicas} {name} replicas ready after "
                                  f"{timeout:g} s{asked}{'; ' + why if why else ''}")  # fmt: skip
            time.sleep(min(self.poll, timeout - waited))

    def _not_ready(self, deployment: client.V1Deployment) -> str:
        """Why the Deployment's pods are not ready, from the first that is not: empty if that cannot be read."""
        selector = (deployment.spec.selector.match_labels or {}) if deployment.spec.selector else {}
        try:
            pods = self.pods(selector)
        except DeployError:
            return ""
        problems = [problem for pod in pods if (problem := _pod_problem(pod))]
        if not problems:
            return ""
        return f"{len(problems)} pod{'s' if len(problems) > 1 else ''} not ready, {problems[0]}"

    def check_capacity(self, deployment: client.V1Deployment, replicas: int, asked: str) -> None:
        """DeployError if the namespace's quotas, or all the nodes' allocatable CPU, cannot hold ``replicas``.

        What cannot be read (no quota, no right to list nodes) is not checked: then only the wait for readiness
        tells, with what became ready.
        """
        extra = replicas - (deployment.spec.replicas or 0)
        if extra <= 0:
            return
        per_pod = _pod_requests(deployment.spec.template)
        try:
            quotas = self.core.list_namespaced_resource_quota(self.namespace, _request_timeout=REQUEST_TIMEOUT).items
        except (ApiException, urllib3.exceptions.HTTPError):
            quotas = []
        for quota in quotas:
            status = quota.status or client.V1ResourceQuotaStatus()
            hard = status.hard or (quota.spec.hard if quota.spec else None) or {}
            used = status.used or {}
            for resource, limit in sorted(hard.items()):
                if resource not in per_pod:
                    continue
                need = per_pod[resource] * extra
                left = parse_quantity(limit) - parse_quantity(used.get(resource, "0"))
                if need > left:
                    raise DeployError(
                        f"cluster too small{asked}: {replicas} workers need {_quantity(need, resource)} more "
                        f"{resource}, and ResourceQuota {quota.metadata.name} leaves "
                        f"{_quantity(max(left, Decimal(0)), resource)} of {_quantity(parse_quantity(limit), resource)}"
                    )
        cpu = per_pod.get("requests.cpu")
        if not cpu:
            return
        try:
            nodes = self.core.list_node(_request_timeout=REQUEST_TIMEOUT).items
        except (ApiException, urllib3.exceptions.HTTPError):
            return  # nodes are cluster-wide: a namespaced Role cannot list them
        allocatable = sum((parse_quantity((node.status.allocatable or {}).get("cpu", "0")) for node in nodes
                           if _schedulable(node)), Decimal(0))  # fmt: skip
        if nodes and cpu * replicas > allocatable:
            raise DeployError(
                f"cluster too small{asked}: {replicas} workers request {_quantity(cpu * replicas, 'cpu')} "
                f"CPU, and all its schedulable nodes have {_quantity(allocatable, 'cpu')} allocatable"
            )

    # ---- the master's run ----

    def set_run(self, spec_json: str | None) -> None:
        """Write the run into the master's pod template (a new master pod starts for it), or take it out."""
        patch = {"spec": {"template": {"metadata": {"annotations": {RUN_ANNOTATION: spec_json}}}}}
        self._call(f"deployment {MASTER}", self.apps.patch_namespaced_deployment, MASTER, self.namespace, patch,
                   _content_type=MERGE_PATCH)  # fmt: skip

    def pods(self, labels: dict[str, str]) -> list[client.V1Pod]:
        items = self._call(
            "pods", self.core.list_namespaced_pod, self.namespace, label_selector=_selector(labels)
        ).items
        return [pod for pod in items if _matches(pod.metadata.labels, labels)]

    def run_pod(self, run_id: str, timeout: float) -> str:
        """The name of the master pod of run ``run_id`` once its container has started."""
        start = time.monotonic()
        while True:
            pods = [pod for pod in self.pods(MASTER_LABELS) if _run_id(pod) == run_id]
            for pod in pods:
                if (pod.status.phase if pod.status else None) in ("Running", "Succeeded", "Failed"):
                    return pod.metadata.name
            waited = time.monotonic() - start
            if waited >= timeout:
                why = next((problem for pod in pods if (problem := _pod_problem(pod))), "")
                raise DeployError(
                    f"timeout: the master pod of run {run_id} did not start within {timeout:g} s"
                    f"{': ' + why if why else ' (no pod was created for it)' if not pods else ''}"
                )
            time.sleep(min(self.poll, timeout - waited))

    def master_state(self, pod: str) -> MasterState:
        """The master container of ``pod``: running or not, started again or not, how it last ended."""
        try:
            found = self.core.read_namespaced_pod(pod, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return MasterState(False, ended="its pod is gone", final=True)
            raise self._api_error(f"pod {pod}", exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise DeployError(f"cannot reach the Kubernetes API at {self.api.configuration.host}: "
                              f"{_reason(exc)}") from None  # fmt: skip
        status = found.status or client.V1PodStatus()
        deleted = bool(found.metadata and found.metadata.deletion_timestamp)
        final = deleted or status.phase in ("Succeeded", "Failed")
        # The pod's own end (Evicted: the node ran short of memory or disk) says more than its container's.
        ended = f"pod {status.reason}: {status.message}" if status.reason and status.message else status.reason or ""
        for container in status.container_statuses or []:
            if container.name == MASTER_CONTAINER:
                state, last = container.state, container.last_state
                terminated = (state.terminated if state else None) or (last.terminated if last else None)
                if terminated and not ended:
                    ended = exit_description(terminated.reason, terminated.exit_code)
                return MasterState(bool(state and state.running), container.restart_count or 0, ended, final)
        return MasterState(status.phase == "Running", 0, ended, final)

    def log(self, pod: str, since_seconds: int | None = None) -> Iterator[LogLine]:
        """The master container's log, followed until it ends, breaks or is silent for LOG_READ_TIMEOUT seconds."""
        response = self._call(
            f"pod {pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            container=MASTER_CONTAINER,
            follow=True,
            timestamps=True,
            since_seconds=since_seconds,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], LOG_READ_TIMEOUT),
        )
        pending = b""
        try:
            for chunk in response.stream(65536, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield _log_line(line)
            if pending:
                yield _log_line(pending)
        except urllib3.exceptions.HTTPError:
            return  # the caller looks at the pod, and asks again from where the log stopped
        finally:
            response.release_conn()


def _log_line(raw: bytes) -> LogLine:
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    stamp, _, rest = text.partition(" ")
    if len(stamp) >= 20 and stamp[4] == "-" and stamp[10] == "T" and stamp.endswith("Z"):
        seconds, _, fraction = stamp[:-1].partition(".")
        return LogLine((seconds, fraction.ljust(9, "0")), rest)
    return LogLine(("", ""), text)


def _run_id(pod: client.V1Pod) -> str | None:
    text = ((pod.metadata.annotations or {}) if pod.metadata else {}).get(RUN_ANNOTATION)
    try:
        return str(json.loads(text)["id"]) if text else None
    except (ValueError, TypeError, KeyError):
        return None


def _schedulable(node: client.V1Node) -> bool:
    if node.spec and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions or []) if node.status else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions) or not conditions


def _pod_problem(pod: client.V1Pod) -> str:
    """Why a pod is not ready, in a few words; empty if it is."""
    name, status = pod.metadata.name, pod.status or client.V1PodStatus()
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{name} unschedulable: {condition.message or condition.reason}"
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
            return f"{name} {waiting.reason}" + (f": {waiting.message}" if waiting.message else "")
        if container.state and container.state.terminated:
            terminated = container.state.terminated
            return f"{name} container {container.name} ended ({terminated.reason}, exit code {terminated.exit_code})"
    if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
        return ""
    return f"{name} {status.phase or 'Pending'}, not ready"


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    # urllib3 nests its reasons: "<urllib3.connection.HTTPConnection object at 0x...>: Failed to establish ..."
    return text.split(">: ", 1)[-1] if ">: " in text else text
