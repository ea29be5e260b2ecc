"""Observation: what the generator and the server under test do while a run goes on.

- ``names``: the Prometheus metric families both exporters publish, in one place (the dashboards,
  the report's Prometheus source and the tests read the names from here).
- ``timeline``: samples of the run and of the server process while it goes on; ``model``: those samples
  as plain data, and their files; ``analysis``: per-phase figures and conclusions; ``report``: the HTML
  report and its charts (``locust-xmpp report PREFIX``, and at the end of a headless run with ``--csv``).

Each part installs itself on a Locust environment through ``install`` below, which every
``XmppUser`` locustfile calls at ``init``.
"""

from __future__ import annotations

from typing import Any

from xmpp_user.observe import timeline  # registers --xmpp-server-pid


def install(environment: Any) -> None:
    """Wire every observation part into the run (master or local runner; workers only report)."""
    timeline.install(environment)
