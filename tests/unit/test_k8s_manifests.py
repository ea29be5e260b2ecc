"""The manifests of ``k8s/base``, ``k8s/overlays/small|large`` and ``k8s/prosody``: kustomize renders them, every
object passes ``kubernetes-validate --strict`` for Kubernetes 1.32, and they hold what matters: non-root pods with
read-only root filesystems where they write only to volumes, requests and limits, probes that work, a
NetworkPolicy that lets only workers reach the master's 5557, labels and ports the monitors of
``k8s/observability`` select, overlays sized by the users-per-worker budget, the names and rights the commands use,
and command lines that our parsers and Locust accept.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from schema_tools import REPO

from xmpp_user import cli
from xmpp_user.deploy import master as master_module
from xmpp_user.deploy import objects, weblogin
from xmpp_user.deploy.master import RUN_ENV
from xmpp_user.distribute.budget import DEFAULT_USERS_PER_PROCESS, workers_needed

KUBERNETES_VERSION = "1.32.0"
KUSTOMIZATIONS = ("base", "overlays/small", "overlays/large", "overlays/web-ui", "prosody")
OBSERVABILITY = REPO / "k8s" / "observability"
IMAGE_USER = 10001
"""The Dockerfile's USER."""
OUR_IMAGE = "locust-xmpp:0.1.0"


def _render(name: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is missing: it renders the kustomizations")
    result = subprocess.run([kubectl, "kustomize", str(REPO / "k8s" / name)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: _render(name) for name in KUSTOMIZATIONS}


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of that kind and name (for a generated ConfigMap, the name before kustomize's hash)."""
    found = [doc for doc in docs if doc["kind"] == kind and (doc["metadata"]["name"] == name or (
        kind == "ConfigMap" and doc["metadata"]["name"].rsplit("-", 1)[0] == name))]  # fmt: skip
    assert len(found) == 1, (kind, name)
    return found[0]


def _pods(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] == "Deployment":
                yield f"{name}:{doc['metadata']['name']}", doc["spec"]["template"]


def _container(template: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in template["spec"]["containers"] if c["name"] == name]
    return found


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_every_object_passes_the_official_schemas_strictly(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    validate = Path(sys.executable).with_name("kubernetes-validate")
    if not validate.exists():
        pytest.skip("kubernetes-validate is missing: run  bash scripts/setup.sh")
    paths = []
    for name, docs in rendered.items():
        path = tmp_path / f"{name.replace('/', '-')}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        paths.append((path, docs))
    broken = tmp_path / "broken.yaml"  # --strict must reject a field the schema lacks
    deployment = _one(rendered["base"], "Deployment", objects.WORKER)
    broken.write_text(yaml.safe_dump({**deployment, "spec": {**deployment["spec"], "replica": 2}}))
    result = subprocess.run([str(validate), "--strict", "-k", KUBERNETES_VERSION, *(str(p) for p, _ in paths),
                             str(broken)], capture_output=True, text=True, timeout=120)  # fmt: skip
    output = result.stdout + result.stderr
    for path, docs in paths:
        for doc in docs:
            resource = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            assert f"{path} passed for resource {resource} against version 1.32" in output, output
    assert f"{broken} did not validate" in output and "'replica' was unexpected" in output, output


def test_the_copies_kustomize_reads_are_up_to_date(rendered: dict[str, list[dict[str, Any]]]) -> None:
    result = subprocess.run([sys.executable, str(REPO / "k8s" / "build.py"), "--check"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    locustfiles = _one(rendered["base"], "ConfigMap", "locust-xmpp-locustfiles")
    assert locustfiles["data"] == {p.name: p.read_text() for p in sorted((REPO / "locustfiles").glob("*.py"))}, (
        "every scenario of locustfiles/ is in k8s/base/kustomization.yaml's locustfiles ConfigMap"
    )
    config = _one(rendered["prosody"], "ConfigMap", "xmpp-server-config")
    assert config["data"] == {"prosody.cfg.lua": (REPO / "k8s" / "prosody" / "prosody.cfg.lua").read_text()}


def test_pods_run_as_non_root_with_read_only_root_filesystems_and_limits(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for where, template in _pods(rendered):
        spec = template["spec"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security["runAsUser"] == IMAGE_USER, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["readOnlyRootFilesystem"] is True, where
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) == {"cpu", "memory"}, (where, container["name"], kind)
    # A worker is one Locust process: about one core, what the users-per-worker budget is for.
    worker = _container(_one(rendered["base"], "Deployment", objects.WORKER)["spec"]["template"], "worker")
    assert worker["resources"]["requests"]["cpu"] == "1"


def _writable(template: dict[str, Any], container: dict[str, Any]) -> set[str]:
    """Mount paths of the container's writable volumes (emptyDirs)."""
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    return {m["mountPath"] for m in container.get("volumeMounts", [])
            if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")}  # fmt: skip


def test_what_the_containers_write_goes_to_volumes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    master_template = _one(rendered["base"], "Deployment", objects.MASTER)["spec"]["template"]
    master = _container(master_template, objects.MASTER_CONTAINER)
    assert _writable(master_template, master) == {"/results", "/tmp"}  # runs' files; HOME and temporary files
    assert master["command"][master["command"].index("--results") + 1] == "/results"
    worker_template = _one(rendered["base"], "Deployment", objects.WORKER)["spec"]["template"]
    assert _writable(worker_template, _container(worker_template, "worker")) == {"/tmp"}  # the master's locustfile
    server = _one(rendered["prosody"], "Deployment", "xmpp-server")["spec"]["template"]
    config = (REPO / "k8s" / "prosody" / "prosody.cfg.lua").read_text()
    writable = _writable(server, _container(server, "prosody"))
    for setting in ("pidfile", "data_path", "admin_socket"):
        [line] = [line for line in config.splitlines() if line.startswith(f"{setting} = ")]
        path = line.split('"')[1]
        assert any(path.startswith(directory + "/") for directory in writable), (setting, path, writable)
    assert _writable(server, _container(server, "exporter")) == set()  # reads /proc, serves from memory


def test_the_monitors_select_the_master_service_and_the_servers_pods(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    service_monitor = yaml.safe_load((OBSERVABILITY / "servicemonitor-locust-master.yaml").read_text())
    pod_monitor = yaml.safe_load((OBSERVABILITY / "podmonitor-xmpp-server.yaml").read_text())
    service = _one(rendered["base"], "Service", objects.MASTER)
    assert _matches(service_monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [metrics] = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert (metrics["port"], metrics["targetPort"]) == (9646, "metrics")
    master_template = _one(rendered["base"], "Deployment", objects.MASTER)["spec"]["template"]
    assert service["spec"]["selector"] == objects.MASTER_LABELS
    assert _matches(service["spec"]["selector"], master_template["metadata"]["labels"])
    worker_template = _one(rendered["base"], "Deployment", objects.WORKER)["spec"]["template"]
    assert not _matches(service["spec"]["selector"], worker_template["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in _container(master_template, "master")["ports"]}
    assert ports == {"workers": 5557, "web": 8089, "metrics": 9646}
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == set(ports.items())
    server = _one(rendered["prosody"], "Deployment", "xmpp-server")["spec"]["template"]
    assert _matches(pod_monitor["spec"]["selector"]["matchLabels"], server["metadata"]["labels"])
    assert objects.SERVER_LABELS == pod_monitor["spec"]["selector"]["matchLabels"]
    assert {p["name"]: p["containerPort"] for p in _container(server, "exporter")["ports"]} == {"metrics": 9647}
    assert server["spec"]["shareProcessNamespace"] is True  # the exporter reads Prosody's /proc entries


PROMETHEUS_NAMESPACE = "monitoring"
"""The namespace the overlays name for Prometheus."""
INGRESS_NAMESPACE = "ingress-nginx"
"""The namespace overlays/web-ui opens the web UI to."""
MASTER_PORTS = (5557, 8089, 9646)


def _reaches(policy: dict[str, Any], port: int, labels: dict[str, str], namespace: str, own: str) -> bool:
    """Whether a pod with ``labels`` in ``namespace`` may open ``port`` on the pods ``policy`` selects (in
    namespace ``own``), by NetworkPolicy's rules: the rules add up; a rule's ``from`` peers add up, and a peer with
    both selectors needs both; no ``from`` is every source, no ``ports`` every port."""
    spec = policy["spec"]
    if "Ingress" not in spec["policyTypes"]:
        return True
    namespace_labels = {"kubernetes.io/metadata.name": namespace}

    def peer(p: dict[str, Any]) -> bool:
        assert set(p) <= {"podSelector", "namespaceSelector"}, p  # no ipBlock: nothing is open by address
        if "namespaceSelector" in p:
            in_namespace = _matches(p["namespaceSelector"].get("matchLabels", {}), namespace_labels)
        else:
            in_namespace = namespace == own
        pod = _matches(p["podSelector"].get("matchLabels", {}), labels) if "podSelector" in p else True
        return in_namespace and pod

    for rule in spec.get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        if "from" not in rule or any(peer(p) for p in rule["from"]):
            return True
    return False


def _who_reaches(docs: list[dict[str, Any]]) -> dict[int, set[str]]:
    """For each of the master's ports, which of a set of typical pods reach it."""
    policy = _one(docs, "NetworkPolicy", objects.MASTER)
    own = policy["metadata"].get("namespace", objects.NAMESPACE)
    master = _one(docs, "Deployment", objects.MASTER)["spec"]["template"]["metadata"]["labels"]
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], master)
    worker = _one(docs, "Deployment", objects.WORKER)["spec"]["template"]["metadata"]["labels"]
    pods = {
        "worker": (worker, own),
        "other pod": ({"app": "anything"}, own),
        "master": (master, own),
        "worker-labelled pod elsewhere": (worker, "elsewhere"),
        "prometheus": ({"app.kubernetes.io/name": "prometheus"}, PROMETHEUS_NAMESPACE),
        "ingress controller": ({"app.kubernetes.io/name": "ingress-nginx"}, INGRESS_NAMESPACE),
        "pod elsewhere": ({"app": "anything"}, "elsewhere"),
    }
    return {port: {name for name, (labels, namespace) in pods.items() if _reaches(policy, port, labels, namespace,
                                                                                 own)}
            for port in MASTER_PORTS}  # fmt: skip


def test_by_default_only_worker_pods_reach_the_master(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policy = _one(rendered["base"], "NetworkPolicy", objects.MASTER)["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert _who_reaches(rendered["base"]) == {5557: {"worker"}, 8089: set(), 9646: set()}


@pytest.mark.parametrize("overlay", ["overlays/small", "overlays/large"])
def test_the_overlays_open_the_metrics_to_their_prometheus_namespace_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    assert _who_reaches(rendered[overlay]) == {5557: {"worker"}, 8089: set(), 9646: {"prometheus"}}
    assert f"kubernetes.io/metadata.name: {PROMETHEUS_NAMESPACE}" in (REPO / "k8s" / overlay /
                                                                      "kustomization.yaml").read_text()  # fmt: skip


def test_the_web_ui_is_open_only_with_its_login_and_a_password_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["overlays/web-ui"]
    assert _who_reaches(docs) == {5557: {"worker"}, 8089: {"ingress controller"}, 9646: {"prometheus"}}
    master = _container(_one(docs, "Deployment", objects.MASTER)["spec"]["template"], objects.MASTER_CONTAINER)
    args = cli.build_parser().parse_args(master["command"][1:] + master["args"])
    assert "--web-login" in args.locust_args
    [password] = [e for e in master["env"] if e["name"] == weblogin.PASSWORD_ENV]
    assert password["valueFrom"] == {"secretKeyRef": {"name": "locust-xmpp-web", "key": "password"}}, (
        "from a Secret, and not optional: without it the master does not start"
    )
    assert master_module.interactive_command(args.locust_args[1:])[1:3] == ["-m", "xmpp_user.deploy.weblogin"]
    for name in ("overlays/small", "overlays/large", "base"):
        base_master = _container(_one(rendered[name], "Deployment", objects.MASTER)["spec"]["template"],
                                 objects.MASTER_CONTAINER)  # fmt: skip
        assert "--web-login" not in base_master["args"]
        assert not master_module.interactive_command(base_master["args"])[0].endswith("python"), name


def test_registered_accounts_passwords_come_from_a_secret_both_master_and_workers_read(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("base", "overlays/small", "overlays/large"):
        docs = rendered[name]
        for deployment, container_name in ((objects.MASTER, objects.MASTER_CONTAINER), (objects.WORKER, "worker")):
            template = _one(docs, "Deployment", deployment)["spec"]["template"]
            container = _container(template, container_name)
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/locust-xmpp-accounts"]
            assert mount["readOnly"] is True
            [volume] = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
            assert volume["secret"] == {"secretName": "locust-xmpp-accounts", "optional": True,
                                        "defaultMode": 0o440}, "anonymous runs need no Secret"  # fmt: skip
            for env in container.get("env", []):
                assert "PASSWORD" not in env["name"] or "secretKeyRef" in env.get("valueFrom", {}), env
        for config in (d for d in docs if d["kind"] == "ConfigMap"):
            for key, value in config["data"].items():
                if key.endswith(".conf"):
                    assert "xmpp-password" not in value and "xmpp-credentials" not in value, key


@pytest.mark.parametrize("overlay", ["overlays/small", "overlays/large"])
def test_the_overlays_are_sized_by_the_users_per_worker_budget(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    users = int(_one(docs, "ConfigMap", "locust-xmpp-env")["data"]["LOCUST_USERS"])
    replicas = _one(docs, "Deployment", objects.WORKER)["spec"]["replicas"]
    needed = workers_needed(users, DEFAULT_USERS_PER_PROCESS)
    assert replicas == needed, f"{overlay}: {users} users need {needed} workers"
    comment, figure = (REPO / "k8s" / overlay / "kustomization.yaml").read_text(), f"{DEFAULT_USERS_PER_PROCESS:,}"
    assert f"{users:,} users: {replicas} worker" in comment and f"{figure} users per worker" in comment
    assert f"{figure} users per worker" in (REPO / "k8s" / "README.md").read_text()
    assert {doc["metadata"].get("namespace") for doc in docs} == {objects.NAMESPACE}
    binding = _one(docs, "RoleBinding", "locust-xmpp-runner")
    assert [s["namespace"] for s in binding["subjects"]] == [objects.NAMESPACE]
    assert _one(rendered["base"], "Deployment", objects.WORKER)["spec"]["replicas"] == 0


def test_the_runner_role_grants_what_the_commands_use_and_no_more(rendered: dict[str, list[dict[str, Any]]]) -> None:
    role = _one(rendered["base"], "Role", "locust-xmpp-runner")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())), tuple(r["verbs"]))
             for r in role["rules"]}  # fmt: skip
    assert rules == {
        (("apps",), ("deployments",), (objects.MASTER, objects.WORKER), ("get", "patch")),
        (("apps",), ("deployments/scale",), (objects.WORKER,), ("patch",)),
        (("",), ("pods",), (), ("get", "list")),
        (("",), ("pods/log",), (), ("get",)),
        (("",), ("resourcequotas",), (), ("list",)),
    }
    pods_account = _one(rendered["base"], "ServiceAccount", "locust-xmpp")
    assert pods_account["automountServiceAccountToken"] is False
    binding = _one(rendered["base"], "RoleBinding", "locust-xmpp-runner")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert [s["name"] for s in binding["subjects"]] == ["locust-xmpp-runner"]
    for _where, template in _pods(rendered):
        assert template["spec"].get("serviceAccountName", "default") != "locust-xmpp-runner"


def test_the_master_reads_its_run_from_the_annotation_the_command_writes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = _one(rendered["base"], "Deployment", objects.MASTER)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "never two masters"
    template = deployment["spec"]["template"]
    master = _container(template, objects.MASTER_CONTAINER)
    [run] = [e for e in master["env"] if e["name"] == RUN_ENV]
    assert run["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{objects.RUN_ANNOTATION}']"
    assert template["spec"]["enableServiceLinks"] is False, "no LOCUST_MASTER_* variables from the Service"
    args = cli.build_parser().parse_args(master["command"][1:] + master["args"])
    assert (args.command, args.results) == ("k8s master", "/results")
    assert args.locust_args == ["--", "--config", "/etc/locust-xmpp/locust.conf"]
    [mount] = [m for m in master["volumeMounts"] if m["mountPath"] == "/etc/locust-xmpp"]
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    config = _one(rendered["base"], "ConfigMap", volume["configMap"]["name"])
    assert "locust.conf" in config["data"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert master[probe]["tcpSocket"] == {"port": "workers"}, "a headless master has no web UI"
    worker = _container(_one(rendered["base"], "Deployment", objects.WORKER)["spec"]["template"], "worker")
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env == {"LOCUST_MASTER_NODE_HOST": objects.MASTER, "LOCUST_MASTER_NODE_PORT": "5557"}
    assert worker["command"] + worker["args"] == ["locust", "--worker", "--locustfile", "-"]
    for template_name, template in _pods(rendered):
        for container in template["spec"]["containers"]:
            if container["name"] != "prosody":
                assert container["image"] == OUR_IMAGE, template_name


def test_the_master_config_is_one_locust_accepts(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    config = _one(rendered["base"], "ConfigMap", "locust-xmpp-conf")["data"]["locust.conf"]
    settings = dict(line.split(" = ", 1) for line in config.splitlines() if line and not line.startswith("#"))
    assert settings["host"] == "ws://xmpp-server:5280/xmpp-websocket"
    assert (settings["xmpp-metrics-port"], settings["xmpp-metrics-host"]) == ("9646", "0.0.0.0")
    assert settings["locustfile"] == "/locustfiles/livechat.py"
    path = tmp_path / "locust.conf"
    path.write_text(config.replace("/locustfiles/", f"{REPO}/locustfiles/"))
    locust = Path(sys.executable).with_name("locust")
    result = subprocess.run([str(locust), "--config", str(path), "--list"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Viewer" in result.stdout


def _probe(container: dict[str, Any], probe: str, files: dict[str, str], tmp_path: Path) -> int:
    """Run a probe's command with the /proc files it reads replaced by ``files``; its exit status."""
    command = container[probe]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    for original, content in sorted(files.items(), key=lambda item: -len(item[0])):  # tcp6 before tcp
        fake = tmp_path / original.strip("/").replace("/", "-")
        fake.write_text(content)
        assert original in script
        script = script.replace(original, str(fake))
    return subprocess.run(["sh", "-c", script], timeout=10).returncode


TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_a_worker_is_ready_once_connected_to_the_master_and_alive_unless_stopped(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    worker = _container(_one(rendered["base"], "Deployment", objects.WORKER)["spec"]["template"], "worker")
    port = f"{5557:04X}"
    assert f":{port} 01 " in worker["readinessProbe"]["exec"]["command"][2]
    connected = TCP_HEADER + f"   0: 0A2A0005:9C40 0A60000A:{port} 01 00000000:00000000 00:00000000 00000000 10001\n"
    listening = TCP_HEADER + f"   0: 00000000:{port} 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001\n"
    elsewhere = TCP_HEADER + "   0: 0A2A0005:9C40 0A60000A:1F90 01 00000000:00000000 00:00000000 00000000 10001\n"
    tcp6 = "/proc/net/tcp6"
    ready = {"/proc/net/tcp": connected, tcp6: TCP_HEADER}
    assert _probe(worker, "readinessProbe", ready, tmp_path) == 0
    assert _probe(worker, "readinessProbe", {"/proc/net/tcp": TCP_HEADER, tcp6: connected}, tmp_path) == 0
    assert _probe(worker, "readinessProbe", {"/proc/net/tcp": listening, tcp6: TCP_HEADER}, tmp_path) != 0
    assert _probe(worker, "readinessProbe", {"/proc/net/tcp": elsewhere, tcp6: TCP_HEADER}, tmp_path) != 0
    for state, alive in (("S (sleeping)", True), ("R (running)", True), ("Z (zombie)", False), ("T (stopped)", False)):
        status = f"Name:\tlocust\nUmask:\t0022\nState:\t{state}\nPid:\t1\n"
        assert (_probe(worker, "livenessProbe", {"/proc/1/status": status}, tmp_path) == 0) is alive, state


def test_the_prosody_pod_serves_the_lab_config_and_its_exporter_watches_it(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["prosody"]
    template = _one(docs, "Deployment", "xmpp-server")["spec"]["template"]
    prosody = _container(template, "prosody")
    assert prosody["command"] == ["prosody", "-F", "--config", "/etc/prosody-lab/prosody.cfg.lua"]
    ports = {p["name"]: p["containerPort"] for p in prosody["ports"]}
    assert ports == {"c2s": 5222, "http": 5280}
    config = _one(docs, "ConfigMap", "xmpp-server-config")["data"]["prosody.cfg.lua"]
    for line in ('interfaces = { "*" }', 'http_interfaces = { "*" }', "c2s_ports = { 5222 }", "http_ports = { 5280 }",
                 'to = "console"', 'muc_room_default_persistent = true'):  # fmt: skip
        assert line in config, line
    assert "127.0.0.1" not in config.split("openmetrics_allow_ips")[0], "listens beyond loopback"
    assert prosody["readinessProbe"]["httpGet"] == {"path": "/xmpp-websocket", "port": "http"}
    exporter = _container(template, "exporter")
    args = cli.build_parser().parse_args(exporter["command"][1:])
    assert (args.command, args.process_name, args.port, args.host) == ("exporter", "prosody", 9647, "0.0.0.0")
    assert args.server_metrics == f"http://127.0.0.1:{ports['http']}/metrics"
    service = _one(docs, "Service", "xmpp-server")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == set(ports.items())
    assert _matches(service["spec"]["selector"], template["metadata"]["labels"])
