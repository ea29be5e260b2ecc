"""The lab: a private Prosody on loopback for tests, benchmarks and demos (``locust-xmpp lab up``)."""

from __future__ import annotations

from xmpp_user.lab.lab import Lab, LabError, free_port, process_cpu_seconds, process_rss_bytes

__all__ = ["Lab", "LabError", "free_port", "process_cpu_seconds", "process_rss_bytes"]
