"""Build ``dashboards/locust-xmpp.json``, the Grafana dashboard of a locust-xmpp run.

    python dashboards/build.py          # rewrite the JSON beside this file and its copy for Kubernetes
    python dashboards/build.py --check  # exit 1 if a committed JSON differs from what this script builds

Every metric name comes from ``xmpp_user.observe.names``: the generator's families from the Locust master,
the server's from ``locust-xmpp exporter`` beside the server process (Prosody's own families are Prosody
only; ejabberd has none). Panels are declared below in reading order, row by row; the helpers give every
panel the same datasource, legend, tooltip and layout. The datasource is a dashboard variable
(``$datasource``, any Prometheus), so the JSON imports by hand and provisions through Grafana's dashboard
sidecar alike. The phases of the run are annotation regions, drawn from the phase gauge.

Grafana macros in the queries (``$__rate_interval``) are expanded by Grafana; the tests replace them with a
duration before promtool parses the expressions.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, without installing the package

from xmpp_user.observe import names as n  # noqa: E402

OUTPUT = Path(__file__).with_name("locust-xmpp.json")
K8S_COPY = ROOT / "k8s" / "observability" / "locust-xmpp.json"
"""The copy the Kubernetes ConfigMap is generated from: kustomize reads no file outside its directory."""
UID = "locust-xmpp"
SCHEMA_VERSION = 39
"""Grafana 10.4's dashboard schema: newer Grafana versions migrate it on load."""
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
GRID_WIDTH = 24
QUANTILES = (0.5, 0.95, 0.99)
DELIVERY = "message_delivery"
"""The request name of a message's delivery latency (send to receipt), shown with message truth."""


@dataclass
class Query:
    expr: str
    legend: str = ""


def _target(index: int, query: Query, instant: bool = False) -> dict[str, Any]:
    """A panel query: a range query for graphs; an instant one (the value now) for stats."""
    return {
        "refId": chr(ord("A") + index),
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "range": not instant,
        "instant": instant,
    }


def timeseries(
    title: str,
    description: str,
    queries: list[Query],
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    stack: bool = False,
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [_target(i, q) for i, q in enumerate(queries)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "calcs": ["lastNotNull", "max"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "gridPos": {"w": width, "h": height},
    }


def stat(
    title: str,
    description: str,
    queries: list[Query],
    text_mode: str = "value_and_name",
    unit: str = "short",
    red_from: float | None = None,
    width: int = 6,
    height: int = 4,
    words: dict[int, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A stat panel showing each series' last value; ``red_from``: the value from which it turns red;
    ``words``: text and colour shown for given values."""
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_from is not None:
        steps.append({"color": "red", "value": red_from})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [_target(i, q, instant=True) for i, q in enumerate(queries)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            str(value): {"text": text, "color": color, "index": i}
                            for i, (value, (text, color)) in enumerate(words.items())
                        },
                    }
                ]
                if words
                else [],
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": text_mode,
            "colorMode": "value" if red_from is not None or words else "none",
            "graphMode": "none",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
        "gridPos": {"w": width, "h": height},
    }


def _quantile_label(q: float) -> str:
    return f"p{q * 100:g}"


# The panels, row by row.


def run_row() -> list[dict[str, Any]]:
    return [
        stat(
            "Phase",
            "The phase of the plan in force (none before the first and after the last).",
            [Query(f"max by (phase) ({n.PHASE}) == 1", "{{phase}}")],
            text_mode="name",
        ),
        stat(
            "Deviations from the plan",
            "How often the run differed from its plan, by kind (see the README).",
            [Query(f"sum by (kind) ({n.DEVIATIONS})", "{{kind}}")],
            red_from=1,
            width=18,
        ),
        timeseries(
            "Users planned, running and sessions open",
            "The phase's planned users, the Locust users running, and the XMPP sessions really open.",
            [
                Query(f"sum({n.PHASE_PLANNED_USERS})", "planned"),
                Query(f"sum({n.USERS})", "users running"),
                Query(f"sum({n.SESSIONS})", "sessions open"),
            ],
        ),
        timeseries(
            "Workers by state",
            "Workers connected to the master, by Locust state (missing: lost).",
            [Query(f"sum by (state) ({n.WORKERS})", "{{state}}")],
            stack=True,
        ),
    ]


def requests_row() -> list[dict[str, Any]]:
    panels = [
        timeseries(
            "Requests per second by name",
            "Requests ended (successes and failures), by request name.",
            [Query(f"sum by (name) (rate({n.REQUESTS}[{RATE}]))", "{{name}}")],
            unit="reqps",
        ),
        timeseries(
            "Failures per second by name",
            "Failed requests by request name (stream: failures outside a request, such as a lost session).",
            [Query(f"sum by (name) (rate({n.REQUEST_FAILURES}[{RATE}]))", "{{name}}")],
            unit="reqps",
        ),
    ]
    for q in QUANTILES:
        buckets = f'{n.REQUEST_DURATION}_bucket{{name!="{DELIVERY}"}}'
        panels.append(
            timeseries(
                f"Round-trip time {_quantile_label(q)} by name",
                f"The {_quantile_label(q)} of each request's round-trip time, from the duration histogram "
                "(message delivery is with message truth).",
                [Query(f"histogram_quantile({q}, sum by (name, le) (rate({buckets}[{RATE}])))", "{{name}}")],
                unit="s",
                width=8,
            )
        )
    return panels


def truth_row() -> list[dict[str, Any]]:
    buckets = f'{n.REQUEST_DURATION}_bucket{{name="{DELIVERY}"}}'
    return [
        stat(
            "Deliveries lost",
            "Expected and never delivered to receivers that read their stream to their own leave: judged once a "
            "receiver has left (final at the run's end).",
            [Query(f"sum({n.DELIVERIES_LOST})", "lost")],
            text_mode="value",
            red_from=1,
        ),
        stat(
            "Deliveries in flight",
            "Expected and not delivered yet to receivers still in the room (or that left moments ago): not judged "
            "yet, so not lost. Many for long: the server has a backlog.",
            [Query(f"sum({n.DELIVERIES_IN_FLIGHT})", "in flight")],
            text_mode="value",
        ),
        stat(
            "Unexpected and unverified deliveries",
            "Unexpected: delivered beyond what was due. Unverified: due to a receiver whose connection broke "
            "or on a worker that went missing.",
            [
                Query(f"sum({n.DELIVERIES_UNEXPECTED})", "unexpected"),
                Query(f"sum({n.DELIVERIES_UNVERIFIED})", "unverified"),
            ],
            red_from=1,
            width=12,
        ),
        timeseries(
            "Message delivery latency",
            "From send to receipt by each receiver of ours, from the duration histogram.",
            [
                Query(f"histogram_quantile({q}, sum by (le) (rate({buckets}[{RATE}])))", _quantile_label(q))
                for q in QUANTILES
            ],
            unit="s",
        ),
        timeseries(
            "In flight, lost, unexpected and unverified deliveries",
            "In flight: expected and not delivered yet, to receivers not judged yet. Lost: expected and never "
            "delivered, to receivers that have left.",
            [
                Query(f"sum({n.DELIVERIES_IN_FLIGHT})", "in flight"),
                Query(f"sum({n.DELIVERIES_LOST})", "lost"),
                Query(f"sum({n.DELIVERIES_UNEXPECTED})", "unexpected"),
                Query(f"sum({n.DELIVERIES_UNVERIFIED})", "unverified"),
            ],
        ),
        timeseries(
            "Messages per second",
            "Sent; confirmed or not by the room's reflection; skipped because the user was not connected.",
            [
                Query(f"sum(rate({name}[{RATE}]))", legend)
                for name, legend in (
                    (n.MESSAGES_SENT, "sent"),
                    (n.MESSAGES_CONFIRMED, "confirmed"),
                    (n.MESSAGES_UNCONFIRMED, "unconfirmed"),
                    (n.MESSAGES_SKIPPED, "skipped"),
                )
            ],
            unit="ops",
        ),
        timeseries(
            "Deliveries per second",
            "Deliveries due to our receivers, and the first live deliveries they got.",
            [
                Query(f"sum(rate({n.DELIVERIES_EXPECTED}[{RATE}]))", "expected"),
                Query(f"sum(rate({n.DELIVERIES}[{RATE}]))", "delivered"),
            ],
            unit="ops",
        ),
    ]


def server_row() -> list[dict[str, Any]]:
    return [
        timeseries(
            "Server CPU",
            "CPU time of the server process (100 % is one core; Prosody uses one).",
            [Query(f"rate({n.SERVER_CPU}[{RATE}]) * 100", "{{instance}}")],
            unit="percent",
            width=8,
        ),
        timeseries(
            "Server memory (RSS)",
            "Resident memory of the server process.",
            [Query(n.SERVER_RSS, "{{instance}}")],
            unit="bytes",
            width=8,
        ),
        timeseries(
            "Server open files",
            "File descriptors the server process holds (sockets included).",
            [Query(n.SERVER_OPEN_FDS, "{{instance}}")],
            width=8,
        ),
        timeseries(
            "Client connections (Prosody)",
            "Prosody's c2s connections, WebSocket ones included, by session type (c2s: authenticated).",
            [Query(f"sum by (type) ({n.PROSODY_C2S_CONNECTIONS})", "{{type}}")],
            width=8,
        ),
        timeseries(
            "MUC rooms live (Prosody)",
            "Rooms in memory on Prosody's MUC component. Prosody 0.12 publishes no occupant count.",
            [Query(f"sum by (host) ({n.PROSODY_MUC_LIVE_ROOMS})", "{{host}}")],
            width=8,
        ),
        timeseries(
            "Stanzas to stream-managed sessions (Prosody)",
            "Stanzas Prosody queued for stream-managed sessions: what it delivered to clients using XEP-0198.",
            [Query(f"sum(rate({n.PROSODY_SMACKS_QUEUED}[{RATE}]))", "stanzas")],
            unit="ops",
            width=8,
        ),
        stat(
            "Server process",
            "1 while the watched server process exists, 0 once it is gone.",
            [Query(n.SERVER_UP, "{{instance}}")],
            width=24,
            height=3,
            words={1: ("up", "green"), 0: ("gone", "red")},
        ),
    ]


ROWS = (("Run", run_row), ("Requests", requests_row), ("Message truth", truth_row), ("Server", server_row))


def _layout(rows: tuple[tuple[str, Any], ...]) -> list[dict[str, Any]]:
    """Rows and their panels placed left to right, wrapping at the grid's width, with unique ids."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, make in rows:
        panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            }
        )
        y += 1
        x = 0
        line_height = 0
        for panel in make():
            pos = panel["gridPos"]
            if x + pos["w"] > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            pos.update(x=x, y=y)
            x += pos["w"]
            line_height = max(line_height, pos["h"])
            panels.append(panel)
        y += line_height
    for index, panel in enumerate(panels, start=1):
        panel["id"] = index
    return panels


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "locust-xmpp",
        "description": "A locust-xmpp load test: the generator's requests and message truth beside the XMPP "
        "server's CPU, memory and connections, with the phases of the run as annotations.",
        "tags": ["locust-xmpp", "xmpp", "load-test"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [],
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Prometheus",
                    "query": "prometheus",
                    "refresh": 1,
                    "regex": "",
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                }
            ]
        },
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    # Grafana's Prometheus annotations draw a region for each series while its value is above 0:
                    # one region per phase, titled with its name.
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "rgba(255, 152, 48, 1)",
                    "name": "Phases",
                    "target": {"refId": "Anno", "expr": f"max by (phase) ({n.PHASE})", "interval": "5s"},
                    "titleFormat": "{{phase}}",
                    "textFormat": "phase {{phase}}",
                    "tagKeys": "phase",
                    "useValueForTime": False,
                },
            ]
        },
        "panels": _layout(ROWS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed JSON is not up to date")
    args = parser.parse_args(argv)
    text = render()
    for path in (OUTPUT, K8S_COPY):
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(
                    f"{path} is not what {Path(__file__).name} builds: run  python dashboards/build.py", file=sys.stderr
                )
                return 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
