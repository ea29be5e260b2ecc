"""Message truth in a Locust run: worker counts flow to the master, which reports the totals.

Workers add their tally to every stats report (key ``xmpp_truth``) and zero it, because
Locust's worker reports are deltas; the master adds each report to its own tally. A local
runner simply owns the totals. The summary is logged and, with ``--csv PREFIX``, written to
``PREFIX_truth.json``: by a local runner when the test stops, by the master when it quits,
since a headless master fires ``test_stop`` before its workers have sent their final
report (they send it when told to quit; the master waits 0.5 s for it, then fires
``quitting``). Users still stopping after that are not counted; a load shape that ends
with a phase of zero users avoids the question. The web UI serves the running totals at
``/xmpp/truth``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any
from weakref import WeakKeyDictionary

from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from xmpp_user.truth import TALLY, Tally

log = logging.getLogger(__name__)

REPORT_KEY = "xmpp_truth"
"""Key of the tally's counters in a worker's report to the master."""
ROUTE = "/xmpp/truth"
"""Web UI route serving ``summary()`` as JSON."""

_installed: WeakKeyDictionary[Environment, _Glue] = WeakKeyDictionary()
_sender_ids = itertools.count(1)


class _Glue:
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.reported: dict[str, int] | None = None
        """Totals last logged, so a run that ends twice (test_stop, quitting) logs once."""


def sender_id(environment: Environment) -> str:
    """A sender id unique in the run: worker index (or ``l`` for a local run) and a counter."""
    runner = environment.runner
    prefix = f"w{runner.worker_index}" if isinstance(runner, WorkerRunner) else "l"
    return f"{prefix}.{next(_sender_ids)}"


def summary(environment: Environment) -> dict[str, int]:
    """The counters this process holds for the run, plus ``lost`` (totals on a master or local runner)."""
    glue = _installed.get(environment)
    return (glue.tally if glue else TALLY).summary()


def install(environment: Environment, tally: Tally = TALLY) -> None:
    """Wire ``tally`` into the run; call from an ``init`` listener. Repeated calls do nothing."""
    if environment in _installed:
        return
    glue = _installed[environment] = _Glue(tally)
    events = environment.events

    def on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
        # No greenlet switch between reading and zeroing, so no count falls between two reports.
        data[REPORT_KEY] = tally.as_dict()
        tally.reset()

    def on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
        tally.merge(data.get(REPORT_KEY) or {})

    def on_test_start(**_kw: Any) -> None:
        tally.reset()
        glue.reported = None

    def on_test_stop(**_kw: Any) -> None:
        if isinstance(environment.runner, LocalRunner):
            _report(environment, glue)

    def on_quitting(**_kw: Any) -> None:
        runner = environment.runner
        if isinstance(runner, MasterRunner) and len(runner.greenlet):
            # Quitting fires its listeners last-added first, so the master's own quit (which
            # collects the workers' final reports) has not run yet after a Ctrl+C or SIGTERM.
            runner.quit()
        if not isinstance(runner, WorkerRunner):
            _report(environment, glue)

    events.report_to_master.add_listener(on_report_to_master)
    events.worker_report.add_listener(on_worker_report)
    events.test_start.add_listener(on_test_start)
    events.test_stop.add_listener(on_test_stop)
    events.quitting.add_listener(on_quitting)

    web_ui = environment.web_ui
    if web_ui is not None:
        view = web_ui.auth_required_if_enabled(lambda: summary(environment))
        web_ui.app.add_url_rule(ROUTE, endpoint="xmpp_truth", view_func=view)


def _report(environment: Environment, glue: _Glue) -> None:
    totals = glue.tally.summary()
    if totals == glue.reported:
        return
    glue.reported = totals
    log.info("Message truth: %s", " ".join(f"{k}={v}" for k, v in totals.items()))
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if prefix:
        if directory := os.path.dirname(prefix):
            os.makedirs(directory, exist_ok=True)
        with open(f"{prefix}_truth.json", "w", encoding="utf-8") as f:
            json.dump(totals, f, indent=2)
            f.write("\n")
