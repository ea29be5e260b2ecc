"""The XMPP tab of Locust's web UI: what the run is doing in XMPP terms, beside Locust's own tabs.

It shows the phase in force with its planned users, the Locust users running and the sessions really open,
the generator's own event loop lag (``xmpp_user.run.lag``: how much of the latencies may be its own), the
message truth counters, what differed from the plan, the server's CPU and memory when the run observes
the server, and, once the run has written it, where its report is.

Locust's own extension points carry it; its frontend is not forked. The web UI's template arguments
declare the tab (``extended_tabs``) and its table (``extended_tables``); the rows ride on Locust's
``/stats/requests`` reply, which the UI polls every two seconds while a run is on, under
``extended_stats``. The same status is served as JSON at ``ROUTE``. The report, ``PREFIX_report.html``
of ``--csv PREFIX``, is served at ``REPORT_ROUTE`` and, once it exists when the page loads, linked from
Locust's "Download Data" tab.

The server's figures are the timeline recorder's (``xmpp_user.observe.timeline``), which samples the
observed server five times a second while a run goes on: ``xmpp_user.observe.install`` points
``last_server_sample`` at it. Until it has a sample (no run yet, or a server it does not observe) the tab
says the server is not observed; after the run the tab keeps the last sample, with its age.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, request, send_file
from locust.env import Environment

from xmpp_user.run import outcome, phases

ROUTE = "/xmpp/status"
"""Web UI route serving ``status()`` as JSON."""
REPORT_ROUTE = "/xmpp/report"
"""Web UI route serving the run's HTML report, once written."""
TAB = "xmpp"
"""Key of the tab, its table and its rows in Locust's web UI."""
TAB_TITLE = "XMPP"
REPORT_SUFFIX = "_report.html"
"""The report of ``--csv PREFIX`` is ``PREFIX_report.html``."""
NOT_OBSERVED = "not observed"

last_server_sample: Callable[[], Mapping[str, Any] | None] | None = None
"""Set to the server sampler's (``timeline.Recorder.last_server_sample``): returns its latest sample, or None
before the first. A sample maps ``cpu_percent`` (CPU time over the last interval, 100 is one core) and
``rss_bytes`` (resident memory), and may give ``unix_time`` (when it was taken) and ``name`` (the process)."""

_STRUCTURE = [
    {"key": "section", "title": "Section"},
    {"key": "item", "title": "Item"},
    {"key": "value", "title": "Value"},
]
_ROW_ORDER = "name"
"""Locust's tables sort rows by their ``name`` until a column is clicked, with a stable sort: every row has the
same ``name``, not shown, so the rows keep the order ``rows`` gives them."""


def report_path(environment: Environment) -> str | None:
    """Where the run's report is written (``PREFIX_report.html``), or None without ``--csv``."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None) if environment.parsed_options else None
    return f"{prefix}{REPORT_SUFFIX}" if prefix else None


def _phase(environment: Environment) -> dict[str, Any]:
    current = phases.current_phase()
    if current is not None:
        return {"name": current.name, "planned_users": current.users, "state": "on"}
    log = phases.phase_log()
    if not isinstance(environment.shape_class, phases.PhasedShape):
        return {"name": None, "planned_users": None, "state": "no phases"}
    if log and log[-1]["end_unix"] is not None:
        return {"name": log[-1]["phase"], "planned_users": None, "state": "ended"}
    return {"name": None, "planned_users": None, "state": "not started"}


def _server() -> dict[str, Any] | None:
    sample = last_server_sample() if last_server_sample is not None else None
    if not sample:
        return None
    server: dict[str, Any] = {"cpu_percent": float(sample["cpu_percent"]), "rss_bytes": int(sample["rss_bytes"])}
    if sample.get("name"):
        server["name"] = str(sample["name"])
    if "unix_time" in sample:
        server["age_seconds"] = round(max(0.0, time.time() - float(sample["unix_time"])), 1)
    return server


def status(environment: Environment) -> dict[str, Any]:
    """What the tab shows, as JSON: run state, generator lag, phase, users and sessions, truth, deviations, server,
    report."""
    runner = environment.runner
    totals = outcome.summary(environment)
    deviations = totals.pop("deviations")
    sessions = phases.connected_sessions() if phases.connected_sessions is not None else None
    path = report_path(environment)
    return {
        "state": runner.state if runner is not None else None,
        "generator_lag": outcome.recent_lag(environment),
        "phase": _phase(environment),
        "users": runner.user_count if runner is not None else 0,
        "sessions": sessions,
        "truth": totals,
        "deviations": deviations,
        "server": _server(),
        "report": REPORT_ROUTE if path and os.path.isfile(path) else None,
    }


def rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The tab's table: one row per value, grouped by section, in reading order."""
    phase = state["phase"]
    if phase["state"] == "on":
        phase_text = phase["name"]
    elif phase["state"] == "ended":
        phase_text = f"ended (last: {phase['name']})"
    else:
        phase_text = phase["state"]
    table = [
        ("run", "state", state["state"]),
        ("run", "generator lag", f"{state['generator_lag']:.2f} s (its event loop's largest delay, last 3 s)"),
        ("phase", "phase", phase_text),
        ("phase", "planned users", "" if phase["planned_users"] is None else phase["planned_users"]),
        ("phase", "users running", state["users"]),
        ("phase", "sessions open", "" if state["sessions"] is None else state["sessions"]),
    ]
    server = state["server"]
    if server is None:
        table.append(("server", "server", NOT_OBSERVED))
    else:
        age = f" ({server['age_seconds']:g} s ago)" if "age_seconds" in server else ""
        if "name" in server:
            table.append(("server", "process", server["name"]))
        table.append(("server", "CPU", f"{server['cpu_percent']:.1f} %{age}"))
        table.append(("server", "memory (RSS)", f"{server['rss_bytes'] / 2**20:.1f} MiB"))
    table += [("truth", name, value) for name, value in state["truth"].items()]
    if state["deviations"]:
        table += [("deviations", kind, f"{entry['count']} × {entry['message']}")
                  for kind, entry in state["deviations"].items()]  # fmt: skip
    else:
        table.append(("deviations", "none", ""))
    if state["report"]:
        report = f"{state['report']} (also under Download Data)"
    elif state["state"] == "stopped":
        report = "none"
    else:
        report = "after the run"
    table.append(("report", "report", report))
    return [{_ROW_ORDER: TAB, "section": section, "item": item, "value": value} for section, item, value in table]


def _add_once(entries: list[dict[str, Any]], entry: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get(key) != entry[key]] + [entry]


def install(environment: Environment) -> None:
    """Add the XMPP tab and its routes to the web UI of a master or local runner; nothing without a web UI."""
    web_ui = environment.web_ui
    if web_ui is None:
        return
    # Locust replaces template_args by an updated copy on every page load: always go through web_ui.
    args = web_ui.template_args
    args["extended_tabs"] = _add_once(args.get("extended_tabs") or [], {"key": TAB, "title": TAB_TITLE}, "key")
    table = {"key": TAB, "structure": _STRUCTURE}
    args["extended_tables"] = _add_once(args.get("extended_tables") or [], table, "key")
    report_link = {"href": f".{REPORT_ROUTE}", "title": "Download the XMPP run report"}

    def status_view() -> Response:
        return Response(json.dumps(status(environment)), mimetype="application/json")

    def report_view() -> Response:
        path = report_path(environment)
        if path is None or not os.path.isfile(path):
            reason = "the run has no --csv prefix" if path is None else f"{path} is not written yet"
            return Response(f"No report: {reason}.\n", status=404, mimetype="text/plain")
        return send_file(os.path.abspath(path), mimetype="text/html")

    app = web_ui.app
    app.add_url_rule(ROUTE, endpoint="xmpp_status", view_func=web_ui.auth_required_if_enabled(status_view))
    app.add_url_rule(REPORT_ROUTE, endpoint="xmpp_report", view_func=web_ui.auth_required_if_enabled(report_view))

    @app.before_request
    def link_report() -> None:
        # The page is rendered from the template arguments on each load: the link shows once the report exists.
        if request.endpoint != "locust.index":
            return
        args = web_ui.template_args
        path = report_path(environment)
        files = [f for f in args.get("extended_csv_files") or [] if f.get("href") != report_link["href"]]
        if path and os.path.isfile(path):
            files.append(report_link)
        args["extended_csv_files"] = files

    @app.after_request
    def add_rows(response: Response) -> Response:
        # Locust caches this reply for a moment and hands the same object out again: replace our entry.
        if request.endpoint != "locust.request_stats" or response.status_code != 200:
            return response
        data = response.get_json(silent=True)
        if not isinstance(data, dict):
            return response
        entry = {"key": TAB, "data": rows(status(environment))}
        data["extended_stats"] = _add_once(data.get("extended_stats") or [], entry, "key")
        response.set_data(json.dumps(data))
        return response
