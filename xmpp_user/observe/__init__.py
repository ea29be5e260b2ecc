"""Observation: what the generator and the server under test do while a run goes on.

- ``names``: the Prometheus metric families both exporters publish, in one place (the dashboards,
  the report's Prometheus source and the tests read the names from here).
- ``metrics``: the generator's exporter (``--xmpp-metrics-port``), served by the master or a local
  runner with every worker's data in it.
- ``server``: ``locust-xmpp exporter``, the server process's CPU, memory and open files, and the
  server's own metrics passed on.
- ``webui``: the XMPP tab of Locust's web UI (phase, users and sessions, message truth, deviations, the
  server's CPU and memory as ``timeline`` last sampled them, the report), and its JSON at ``/xmpp/status``.
- ``timeline``: samples of the run and of the server process while it goes on; ``model``: those samples
  as plain data, and their files; ``analysis``: per-phase figures and conclusions; ``report``: the HTML
  report and its charts (``locust-xmpp report PREFIX``, and at the end of a headless run with ``--csv``).

Each part installs itself on a Locust environment through ``install`` below, which every
``XmppUser`` locustfile calls at ``init``. prometheus-client (the ``metrics`` extra) is imported only
when an exporter is asked for, and matplotlib only when a report is drawn. Observation registers its own
options: the metrics port and address here, ``--xmpp-server-pid`` in ``timeline``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from locust import events

from xmpp_user.observe.names import GENERATOR_PORT
from xmpp_user.run.options import non_negative, option_group

log = logging.getLogger(__name__)

@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = option_group(parser, "XMPP observation", "Prometheus metrics of the run, served by the master or a "
                         "local runner with every worker's data summed; workers serve nothing")  # fmt: skip
    group.add_argument(
        "--xmpp-metrics-port",
        type=non_negative(int),
        default=0,
        help=f"Serve the run's Prometheus metrics on this port (dashboards/prometheus.yml scrapes {GENERATOR_PORT}); "
        "0 for none (default %(default)s)",
    )
    group.add_argument(
        "--xmpp-metrics-host", default="127.0.0.1", help="Address to serve the metrics on (default %(default)s)"
    )


MISSING_CLIENT = "--xmpp-metrics-port needs prometheus-client: pip install 'locust-xmpp[metrics]'"


def install(environment: Any) -> None:
    """Wire every observation part into the run (master or local runner; workers only report).

    With ``--xmpp-metrics-port`` on the command line the exporter serves from the start (a port taken
    is one line and exit code 2); a port first set in the web UI form starts it with the run.
    """
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner):
        return
    from xmpp_user.observe import timeline, webui

    timeline.install(environment)
    webui.install(environment)
    recorder = timeline.recorder(environment)
    if recorder is not None:
        # The recorder samples the server five times a second for the report: the tab shows its latest sample.
        webui.last_server_sample = recorder.last_server_sample
    try:
        _serve_metrics(environment)
    except (OSError, ImportError) as exc:
        sys.stderr.write(f"locust-xmpp: error: {exc}\n")
        sys.exit(2)

    def on_test_start(**_kw: Any) -> None:
        try:
            _serve_metrics(environment)
        except (OSError, ImportError) as exc:
            log.error("locust-xmpp: no Prometheus metrics: %s", exc)

    environment.events.test_start.add_listener(on_test_start)


def _serve_metrics(environment: Any) -> None:
    options = environment.parsed_options
    port = int(getattr(options, "xmpp_metrics_port", 0) or 0)
    if not port:
        return
    host = getattr(options, "xmpp_metrics_host", "") or "127.0.0.1"
    try:
        from xmpp_user.observe import metrics
    except ImportError:
        raise ImportError(MISSING_CLIENT) from None
    try:
        metrics.start(environment, port, host)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
