"""The names and labels of the objects in ``k8s/base`` that the commands look for (the tests hold the manifests to
them) and the monitors of ``k8s/observability`` select."""

from __future__ import annotations

NAMESPACE = "locust-xmpp"
"""The overlays' namespace, and the commands' when neither --namespace nor the kubeconfig's context names one."""
MASTER = "locust-master"
"""The master's Deployment, Service and NetworkPolicy."""
WORKER = "locust-worker"
"""The workers' Deployment, the one scaled."""
MASTER_CONTAINER = "master"
RUN_ANNOTATION = "locust-xmpp/run"
"""Annotation of the master's pod template that holds the run (``master.RunSpec`` as JSON); absent between runs."""
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MASTER_LABELS = {NAME_LABEL: "locust-xmpp", COMPONENT_LABEL: "master"}
WORKER_LABELS = {NAME_LABEL: "locust-xmpp", COMPONENT_LABEL: "worker"}
SERVER_LABELS = {NAME_LABEL: "xmpp-server"}
"""The in-cluster XMPP server's pods (``k8s/prosody``), as the PodMonitor selects them."""
RBAC = "k8s/base/rbac.yaml"
"""The Role that grants what the commands use."""
