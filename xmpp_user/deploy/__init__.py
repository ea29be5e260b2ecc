"""locust-xmpp on Kubernetes: ``locust-xmpp k8s scale | run`` and the master's entry point in its pod.

A run: ``run.py`` writes the run (its id, worker count and Locust arguments) into an annotation of the master
Deployment's pod template; the new master pod reads it through the downward API and runs a headless master
(``master.py``); workers are scaled by ``cluster.py``; the master prints the run's files into its log as one
block (``transfer.py``), which the command reads back. The manifests are in ``k8s/``.
"""
