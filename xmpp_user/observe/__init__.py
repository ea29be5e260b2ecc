"""Observation: what the generator and the server under test do while a run goes on.

- ``names``: the Prometheus metric families both exporters publish, in one place (the dashboards,
  the report's Prometheus source and the tests read the names from here).
- ``webui``: the XMPP tab of Locust's web UI (phase, users and sessions, message truth, deviations, the
  server's CPU and memory, the report), and its JSON at ``/xmpp/status``.

Each part installs itself on a Locust environment through ``install`` below, which every
``XmppUser`` locustfile calls at ``init``.
"""

from __future__ import annotations

from typing import Any

from xmpp_user.observe import webui


def install(environment: Any) -> None:
    """Wire every observation part into the run (master or local runner; workers only report)."""
    webui.install(environment)
