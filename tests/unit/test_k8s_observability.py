"""The Kubernetes manifests of ``k8s/observability``: kustomize renders them; the ConfigMap passes
``kubernetes-validate --strict`` against the official schemas; the ServiceMonitor and PodMonitor, custom
resources those schemas lack, pass the prometheus-operator CRD schemas (the models' validators, and their
types under tsc, which rejects unknown fields); and the objects hold what Grafana's sidecar, the
Prometheus operator and ``k8s/base`` expect of each other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from schema_tools import REPO, tsc_check, validate_monitors

DIRECTORY = REPO / "k8s" / "observability"
DASHBOARD = REPO / "dashboards" / "locust-xmpp.json"
MASTER_LABELS = {"app.kubernetes.io/name": "locust-xmpp", "app.kubernetes.io/component": "master"}
SERVER_LABELS = {"app.kubernetes.io/name": "xmpp-server"}
PORT = "metrics"
KUBERNETES_VERSION = "1.32.0"
"""The Kubernetes schemas the core objects are validated against (kubectl's version here)."""


def _render() -> dict[str, dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is missing: it renders the kustomization")
    result = subprocess.run([kubectl, "kustomize", str(DIRECTORY)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout)}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return _render()


def test_kustomize_renders_the_dashboard_and_both_monitors(rendered: dict[str, dict[str, Any]]) -> None:
    assert set(rendered) == {"ConfigMap", "ServiceMonitor", "PodMonitor"}
    for doc in rendered.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "locust-xmpp"


def test_the_configmap_holds_the_dashboard_for_grafanas_sidecar(rendered: dict[str, dict[str, Any]]) -> None:
    config_map = rendered["ConfigMap"]
    assert config_map["metadata"]["name"] == "locust-xmpp-dashboard"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {"locust-xmpp.json": DASHBOARD.read_text()}


def test_the_monitors_scrape_the_master_and_the_server_exporter(rendered: dict[str, dict[str, Any]]) -> None:
    service_monitor = rendered["ServiceMonitor"]
    assert service_monitor["metadata"]["name"] == "locust-master"
    assert service_monitor["spec"]["selector"] == {"matchLabels": MASTER_LABELS}
    assert [e["port"] for e in service_monitor["spec"]["endpoints"]] == [PORT]
    pod_monitor = rendered["PodMonitor"]
    assert pod_monitor["spec"]["selector"] == {"matchLabels": SERVER_LABELS}
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == [PORT]
    # The README names every label a cluster has to adapt.
    readme = (DIRECTORY / "README.md").read_text()
    for label in [*MASTER_LABELS, *SERVER_LABELS, "release: prometheus", 'grafana_dashboard: "1"']:
        assert label in readme, label


def test_the_configmap_passes_the_official_schemas_strictly(
    rendered: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    validate = Path(sys.executable).with_name("kubernetes-validate")
    if not validate.exists():
        pytest.skip("kubernetes-validate is missing: run  bash scripts/setup.sh")
    path = tmp_path / "configmap.yaml"
    path.write_text(yaml.safe_dump(rendered["ConfigMap"]))
    result = subprocess.run([str(validate), "--strict", "-k", KUBERNETES_VERSION, str(path)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource configmap/locust-xmpp-dashboard" in result.stdout, result.stdout


def test_the_monitors_pass_the_prometheus_operator_schemas(
    rendered: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    monitors = [rendered["ServiceMonitor"], rendered["PodMonitor"]]
    assert validate_monitors(monitors) == ["", ""]
    broken = {**rendered["ServiceMonitor"], "spec": {**rendered["ServiceMonitor"]["spec"], "endpoints": [
        {"port": PORT, "interval": "every 15 seconds"}]}}  # fmt: skip
    assert "interval" in validate_monitors([broken])[0], "the validators must reject a bad interval"
    tsc_check(tmp_path, [("CheckedServiceMonitor", monitors[0]), ("CheckedPodMonitor", monitors[1])])
