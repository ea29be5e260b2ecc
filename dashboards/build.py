"""Build ``dashboards/locust-xmpp.json``, the Grafana dashboard of a locust-xmpp run.

    python dashboards/build.py          # rewrite the JSON beside this file and its copy for Kubernetes
    python dashboards/build.py --check  # exit 1 if a committed JSON differs from what this script builds

The dashboard is written with Grafana's typed builders, ``grafana-foundation-sdk`` (the ``dashboards`` extra;
its Grafana 10.4 flavour, pinned in pyproject.toml), and serialised by its encoder. Every metric name comes
from ``xmpp_user.observe.names``: the generator's families from the Locust master, the server's from
``locust-xmpp exporter`` beside the server process (Prosody's own families are Prosody only; ejabberd has
none). Panels are declared below in reading order, row by row; the helpers give every panel the same
datasource, legend, tooltip and size, and the SDK places them left to right under their row. The datasource
is a dashboard variable (``$datasource``, any Prometheus), so the JSON imports by hand and provisions through
Grafana's dashboard sidecar alike. The phases of the run are annotation regions, drawn from the phase gauge.

What the SDK cannot say is said on its typed models, in ``PrometheusAnnotationQuery`` and at the end of
``dashboard()``: the Prometheus annotation (the SDK's ``AnnotationQuery`` knows only the target of Grafana's
built-in annotations), the schema version and the datasource variable's refresh (no builder sets them), and
the interval-variable fields the SDK writes on every variable, which Grafana's published schema rejects.

Grafana macros in the queries (``$__rate_interval``) are expanded by Grafana; the tests replace them with a
duration before promtool parses the expressions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

try:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models.prometheus import Dataquery, QueryEditorMode
except ModuleNotFoundError as error:
    sys.exit(f"{error}: install the dashboards extra,  pip install -e '.[dashboards]'  (or  bash scripts/setup.sh)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, without installing the package

from xmpp_user.observe import names as n  # noqa: E402

OUTPUT = Path(__file__).with_name("locust-xmpp.json")
K8S_COPY = ROOT / "k8s" / "observability" / "locust-xmpp.json"
"""The copy the Kubernetes ConfigMap is generated from: kustomize reads no file outside its directory."""
UID = "locust-xmpp"
SCHEMA_VERSION = 39
"""Grafana 10.4's dashboard schema: newer Grafana versions migrate it on load."""
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)
DELIVERY = "message_delivery"
"""The request name of a message's delivery latency (send to receipt), shown with message truth."""

Panel = timeseries.Panel | stat.Panel


@dataclass
class Query:
    expr: str
    legend: str = ""


def _target(index: int, query: Query, instant: bool = False) -> prometheus.Dataquery:
    """A panel query: a range query for graphs; an instant one (the value now) for stats."""
    target = (
        prometheus.Dataquery()
        .ref_id(chr(ord("A") + index))
        .datasource(DATASOURCE)
        .editor_mode(QueryEditorMode.CODE)
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
    )
    return target.instant() if instant else target.range()


def timeseries_panel(
    title: str,
    description: str,
    queries: list[Query],
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    stack: bool = False,
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([_target(i, q) for i, q in enumerate(queries)])
        .unit(unit)
        .min(0)
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(cm.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE).group("A"))
        .legend(
            cb.VizLegendOptions()
            .calcs(["lastNotNull", "max"])
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        .span(width)
        .height(height)
    )


def stat_panel(
    title: str,
    description: str,
    queries: list[Query],
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.VALUE_AND_NAME,
    unit: str = "short",
    red_from: float | None = None,
    width: int = 6,
    height: int = 4,
    words: dict[int, tuple[str, str]] | None = None,
) -> stat.Panel:
    """A stat panel showing each series' last value; ``red_from``: the value from which it turns red;
    ``words``: text and colour shown for given values."""
    steps = [dm.Threshold(value=None, color="green")]
    if red_from is not None:
        steps.append(dm.Threshold(value=red_from, color="red"))
    mappings: list[dm.ValueMapping] = []
    if words:
        results = {
            str(value): dm.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(words.items())
        }
        mappings.append(dm.ValueMap(options=results))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([_target(i, q, instant=True) for i, q in enumerate(queries)])
        .unit(unit)
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
        .mappings(mappings)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .orientation(cm.VizOrientation.AUTO)
        .text_mode(text_mode)
        .color_mode(cm.BigValueColorMode.VALUE if red_from is not None or words else cm.BigValueColorMode.NONE)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
        .span(width)
        .height(height)
    )


def _quantile_label(q: float) -> str:
    return f"p{q * 100:g}"


# The panels, row by row.


def run_row() -> list[Panel]:
    return [
        stat_panel(
            "Phase",
            "The phase of the plan in force (none before the first and after the last).",
            [Query(f"max by (phase) ({n.PHASE}) == 1", "{{phase}}")],
            text_mode=cm.BigValueTextMode.NAME,
        ),
        stat_panel(
            "Deviations from the plan",
            "How often the run differed from its plan, by kind (see the README).",
            [Query(f"sum by (kind) ({n.DEVIATIONS})", "{{kind}}")],
            red_from=1,
            width=18,
        ),
        timeseries_panel(
            "Users planned, running and sessions open",
            "The phase's planned users, the Locust users running, and the XMPP sessions really open.",
            [
                Query(f"sum({n.PHASE_PLANNED_USERS})", "planned"),
                Query(f"sum({n.USERS})", "users running"),
                Query(f"sum({n.SESSIONS})", "sessions open"),
            ],
        ),
        timeseries_panel(
            "Workers by state",
            "Workers connected to the master, by Locust state (missing: lost).",
            [Query(f"sum by (state) ({n.WORKERS})", "{{state}}")],
            stack=True,
        ),
    ]


def requests_row() -> list[Panel]:
    panels = [
        timeseries_panel(
            "Requests per second by name",
            "Requests ended (successes and failures), by request name.",
            [Query(f"sum by (name) (rate({n.REQUESTS}[{RATE}]))", "{{name}}")],
            unit="reqps",
        ),
        timeseries_panel(
            "Failures per second by name",
            "Failed requests by request name (stream: failures outside a request, such as a lost session).",
            [Query(f"sum by (name) (rate({n.REQUEST_FAILURES}[{RATE}]))", "{{name}}")],
            unit="reqps",
        ),
    ]
    for q in QUANTILES:
        buckets = f'{n.REQUEST_DURATION}_bucket{{name!="{DELIVERY}"}}'
        panels.append(
            timeseries_panel(
                f"Round-trip time {_quantile_label(q)} by name",
                f"The {_quantile_label(q)} of each request's round-trip time, from the duration histogram "
                "(message delivery is with message truth).",
                [Query(f"histogram_quantile({q}, sum by (name, le) (rate({buckets}[{RATE}])))", "{{name}}")],
                unit="s",
                width=8,
            )
        )
    panels.append(
        timeseries_panel(
            "Generator event loop lag",
            "The largest delay of the generator's own event loop over about the last 3 s (any worker's): the "
            "latencies above include up to this much of it. Over 0.5 s the run says the generator fell behind "
            "(deviation generator_behind): add workers, or give each fewer users.",
            [Query(f"max({n.EVENT_LOOP_LAG})", "largest delay")],
            unit="s",
            width=24,
            height=6,
        )
    )
    return panels


def truth_row() -> list[Panel]:
    buckets = f'{n.REQUEST_DURATION}_bucket{{name="{DELIVERY}"}}'
    return [
        stat_panel(
            "Deliveries lost",
            "Expected and never delivered to receivers that read their stream to their own leave: judged once a "
            "receiver has left (final at the run's end).",
            [Query(f"sum({n.DELIVERIES_LOST})", "lost")],
            text_mode=cm.BigValueTextMode.VALUE,
            red_from=1,
        ),
        stat_panel(
            "Deliveries in flight",
            "Expected and not delivered yet to receivers still in the room (or that left moments ago): not judged "
            "yet, so not lost. Many for long: the server has a backlog.",
            [Query(f"sum({n.DELIVERIES_IN_FLIGHT})", "in flight")],
            text_mode=cm.BigValueTextMode.VALUE,
        ),
        stat_panel(
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
        timeseries_panel(
            "Message delivery latency",
            "From send to receipt by each receiver of ours, from the duration histogram.",
            [
                Query(f"histogram_quantile({q}, sum by (le) (rate({buckets}[{RATE}])))", _quantile_label(q))
                for q in QUANTILES
            ],
            unit="s",
        ),
        timeseries_panel(
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
        timeseries_panel(
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
        timeseries_panel(
            "Deliveries per second",
            "Deliveries due to our receivers, and the first live deliveries they got.",
            [
                Query(f"sum(rate({n.DELIVERIES_EXPECTED}[{RATE}]))", "expected"),
                Query(f"sum(rate({n.DELIVERIES}[{RATE}]))", "delivered"),
            ],
            unit="ops",
        ),
    ]


def server_row() -> list[Panel]:
    return [
        timeseries_panel(
            "Server CPU",
            "CPU time of the server process (100 % is one core; Prosody uses one).",
            [Query(f"rate({n.SERVER_CPU}[{RATE}]) * 100", "{{instance}}")],
            unit="percent",
            width=8,
        ),
        timeseries_panel(
            "Server memory (RSS)",
            "Resident memory of the server process.",
            [Query(n.SERVER_RSS, "{{instance}}")],
            unit="bytes",
            width=8,
        ),
        timeseries_panel(
            "Server open files",
            "File descriptors the server process holds (sockets included).",
            [Query(n.SERVER_OPEN_FDS, "{{instance}}")],
            width=8,
        ),
        timeseries_panel(
            "Client connections (Prosody)",
            "Prosody's c2s connections, WebSocket ones included, by session type (c2s: authenticated).",
            [Query(f"sum by (type) ({n.PROSODY_C2S_CONNECTIONS})", "{{type}}")],
            width=8,
        ),
        timeseries_panel(
            "MUC rooms live (Prosody)",
            "Rooms in memory on Prosody's MUC component. Prosody 0.12 publishes no occupant count.",
            [Query(f"sum by (host) ({n.PROSODY_MUC_LIVE_ROOMS})", "{{host}}")],
            width=8,
        ),
        timeseries_panel(
            "Stanzas to stream-managed sessions (Prosody)",
            "Stanzas Prosody queued for stream-managed sessions: what it delivered to clients using XEP-0198.",
            [Query(f"sum(rate({n.PROSODY_SMACKS_QUEUED}[{RATE}]))", "stanzas")],
            unit="ops",
            width=8,
        ),
        stat_panel(
            "Server process",
            "1 while the watched server process exists, 0 once it is gone.",
            [Query(n.SERVER_UP, "{{instance}}")],
            width=24,
            height=3,
            words={1: ("up", "green"), 0: ("gone", "red")},
        ),
    ]


ROWS: tuple[tuple[str, Callable[[], list[Panel]]], ...] = (
    ("Run", run_row),
    ("Requests", requests_row),
    ("Message truth", truth_row),
    ("Server", server_row),
)


class PrometheusAnnotationQuery(dm.AnnotationQuery):
    """An annotation drawn from a Prometheus query. The SDK's ``AnnotationQuery`` (grafana-foundation-sdk
    10.4.0, and its Grafana 11 and "next" flavours alike) has a ``target`` only for Grafana's built-in
    annotations (limit, matchAny, tags, type) and none of the fields Grafana's Prometheus data source reads
    beside it: this model adds them to what the SDK writes."""

    def __init__(self) -> None:
        super().__init__()
        self.query: Dataquery | None = None
        self.title_format = ""
        self.text_format = ""
        self.tag_keys = ""

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "target": self.query,
            "titleFormat": self.title_format,
            "textFormat": self.text_format,
            "tagKeys": self.tag_keys,
            "useValueForTime": False,
        }


class PrometheusAnnotation(db.AnnotationQuery):
    """The SDK's annotation builder, for a :class:`PrometheusAnnotationQuery`."""

    _internal: PrometheusAnnotationQuery

    def __init__(self) -> None:
        self._internal = PrometheusAnnotationQuery()

    def query(self, query: prometheus.Dataquery) -> Self:
        self._internal.query = query.build()
        return self

    def title_format(self, title_format: str) -> Self:
        self._internal.title_format = title_format
        return self

    def text_format(self, text_format: str) -> Self:
        self._internal.text_format = text_format
        return self

    def tag_keys(self, tag_keys: str) -> Self:
        self._internal.tag_keys = tag_keys
        return self


def dashboard() -> dm.Dashboard:
    board = (
        db.Dashboard("locust-xmpp")
        .uid(UID)
        .description(
            "A locust-xmpp load test: the generator's requests and message truth beside the XMPP server's CPU, "
            "memory and connections, with the phases of the run as annotations."
        )
        .tags(["locust-xmpp", "xmpp", "load-test"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .time("now-30m", "now")
        .timezone(cm.TimeZoneBrowser)
        .version(1)
        .links([])
        .with_variable(
            db.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .regex("")
            .hide(dm.VariableHide.DONT_HIDE)
            .include_all(False)
            .multi(False)
        )
        .annotation(
            db.AnnotationQuery()
            .built_in(1)
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .name("Annotations & Alerts")
            .type("dashboard")
        )
        .annotation(
            # Grafana's Prometheus annotations draw a region for each series while its value is above 0:
            # one region per phase, titled with its name.
            PrometheusAnnotation()
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("rgba(255, 152, 48, 1)")
            .name("Phases")
            .query(prometheus.Dataquery().ref_id("Anno").expr(f"max by (phase) ({n.PHASE})").interval("5s"))
            .title_format("{{phase}}")
            .text_format("phase {{phase}}")
            .tag_keys("phase")
        )
    )
    ids = itertools.count(1)
    for title, make in ROWS:
        board.with_row(db.Row(title).id(next(ids)))
        for panel in make():
            # The SDK places a panel right of the previous one and starts a new line once one is full (24 wide):
            # each line's widths sum to 24, else a panel would leave the grid (the tests check it does not).
            board.with_panel(panel.id(next(ids)))
    model = board.build()
    # What no builder sets, set on the SDK's typed model.
    model.schema_version = SCHEMA_VERSION  # the model's own default is 36
    for variable in model.templating.list_val or []:
        variable.refresh = dm.VariableRefresh.ON_DASHBOARD_LOAD  # DatasourceVariable has no refresh()
        # An interval variable's fields, which the SDK writes on every variable: Grafana's published schema
        # (@grafana/schema, tests/tools) knows no such fields on a variable and rejects the dashboard.
        variable.auto = variable.auto_min = variable.auto_count = None
    return model


def render() -> str:
    return json.dumps(dashboard(), cls=JSONEncoder, indent=2) + "\n"


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
