"""The Grafana dashboard ``dashboards/locust-xmpp.json``.

- It is what ``dashboards/build.py`` builds, so the script and the JSON never drift apart.
- It satisfies Grafana's published dashboard schema (``@grafana/schema``, checked by tsc; see
  ``tests/tools/checked.ts``), every panel's options by its plugin's schema.
- Every panel has a title, a place on the grid and the dashboard's Prometheus datasource variable.
- Every metric it reads is a family of the contract (``xmpp_user.observe.names``), Prosody's included.
- promtool parses every PromQL expression, and evaluates each against series named and labelled as the
  exporters publish them: each must return data, and the server's CPU, memory and the phase their values.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from schema_tools import REPO, promtool, tsc_check

from xmpp_user.observe import names as n

JSON = REPO / "dashboards" / "locust-xmpp.json"
DASHBOARD = json.loads(JSON.read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "10m"}
"""Grafana's macros, replaced by durations before promtool sees an expression."""
HISTOGRAMS = {n.REQUEST_DURATION}
FAMILIES = {
    value
    for key, value in vars(n).items()
    if key.isupper() and isinstance(value, str) and value not in (n.GENERATOR, n.SERVER)
}
"""Every family the contract names: the generator's, the server exporter's and Prosody's."""
KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan"}


def _panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    """(an id for messages, expression) of every panel query and annotation query."""
    found = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]) for p in _panels() for t in p["targets"]]
    for annotation in DASHBOARD["annotations"]["list"]:
        if "target" in annotation and "expr" in annotation["target"]:
            found.append((f"annotation {annotation['name']!r}", annotation["target"]["expr"]))
    return found


def _promql(expr: str) -> str:
    for macro, duration in MACROS.items():
        expr = expr.replace(macro, duration)
    assert "$" not in expr, f"a Grafana macro or variable promtool cannot read: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if match.group() in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def _build() -> ModuleType:
    """``dashboards/build.py`` as a module: it writes the JSON with grafana-foundation-sdk (the dashboards extra)."""
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is missing: bash scripts/setup.sh")
    spec = importlib.util.spec_from_file_location("dashboard_build", REPO / "dashboards" / "build.py")
    assert spec is not None and spec.loader is not None
    build = sys.modules["dashboard_build"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_json_is_what_build_py_builds() -> None:
    build = _build()
    assert build.OUTPUT == JSON
    assert build.OUTPUT.read_text() == build.render(), "run  python dashboards/build.py  and commit the JSON"


def test_every_panel_has_a_title_a_datasource_and_its_own_place() -> None:
    panels = _panels()
    assert len(panels) >= 15
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), ids
    titles = [p["title"] for p in panels]
    assert all(title.strip() for title in titles) and len(titles) == len(set(titles)), titles
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target)
            assert target["expr"].strip(), (panel["title"], target)


def test_the_datasource_is_a_variable_any_prometheus_fills() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(DASHBOARD))) - {m.strip("$") for m in MACROS}
    assert used == {"datasource"}, f"variables used but not defined: {used - set(variables)}"


def test_phases_are_annotations_and_a_stat_from_the_phase_gauge() -> None:
    phases = [a for a in DASHBOARD["annotations"]["list"] if a.get("name") == "Phases"]
    assert len(phases) == 1
    assert phases[0]["datasource"] == DATASOURCE
    assert metric_names(phases[0]["target"]["expr"]) == {n.PHASE}
    assert phases[0]["titleFormat"] == "{{phase}}"
    stat = next(p for p in _panels() if p["title"] == "Phase")
    assert stat["type"] == "stat" and stat["options"]["textMode"] == "name"
    # Instant: a range query would show every phase that was in force somewhere in the time range.
    assert stat["targets"][0]["instant"] and not stat["targets"][0]["range"]
    assert metric_names(stat["targets"][0]["expr"]) == {n.PHASE}


def test_every_metric_read_is_a_family_of_the_contract() -> None:
    allowed = FAMILIES | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    read = {}
    for where, expr in _queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr}"
        assert names <= allowed, f"{where}: {sorted(names - allowed)} not in xmpp_user/observe/names.py"
        for name in names:
            read.setdefault(name, where)
    # The families the dashboard exists for.
    wanted = {n.SERVER_CPU, n.SERVER_RSS, n.USERS, n.SESSIONS, n.REQUESTS, n.REQUEST_FAILURES,
              f"{n.REQUEST_DURATION}_bucket", n.DELIVERIES_IN_FLIGHT, n.DELIVERIES_LOST, n.DELIVERIES_UNEXPECTED,
              n.DELIVERIES_UNVERIFIED, n.PHASE, n.PROSODY_C2S_CONNECTIONS}  # fmt: skip
    assert wanted <= set(read), sorted(wanted - set(read))


def test_metric_names_finds_names_and_only_names() -> None:
    expr = 'histogram_quantile(0.5, sum by (name, le) (rate(a_bucket{name!="x y"}[$__rate_interval]))) * 100 + b'
    assert metric_names(expr) == {"a_bucket", "b"}
    assert metric_names("max by (phase) (p) == bool 1") == {"p"}


def test_the_dashboard_satisfies_grafanas_published_schema(tmp_path: Path) -> None:
    tsc_check(tmp_path, [("CheckedDashboard", DASHBOARD)])


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": _promql(expr)} for i, (_, expr) in enumerate(_queries())
    ]}]}  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules, indent=2))  # JSON is YAML
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# Series as the exporters publish them, scraped once a minute for 20 minutes: counters grow, gauges hold.
INTERVAL = "1m"
EVAL_TIME = "15m"
SERVER = {"instance": "xmpp-server:9105", "job": "xmpp-server"}
SERIES: dict[str, list[tuple[dict[str, str], str]]] = {
    n.USERS: [({}, "10x20")],
    n.SESSIONS: [({}, "9x20")],
    n.PHASE_PLANNED_USERS: [({}, "10x20")],
    n.PHASE: [({"phase": "seed"}, "1x20"), ({"phase": "talk"}, "0x20")],
    n.WORKERS: [({"state": "running"}, "2x20"), ({"state": "missing"}, "0x20")],
    n.DEVIATIONS: [({"kind": "no_room_vcard"}, "1x20")],
    n.EVENT_LOOP_LAG: [({}, "0.02x20")],
    n.REQUESTS: [({"name": "muc_join"}, "0+10x20"), ({"name": "message_delivery"}, "0+50x20")],
    n.REQUEST_FAILURES: [({"name": "muc_join"}, "0+1x20"), ({"name": "stream"}, "0+1x20")],
    n.MESSAGES_SENT: [({}, "0+10x20")],
    n.MESSAGES_CONFIRMED: [({}, "0+10x20")],
    n.MESSAGES_UNCONFIRMED: [({}, "0x20")],
    n.MESSAGES_SKIPPED: [({}, "0x20")],
    n.DELIVERIES_EXPECTED: [({}, "0+50x20")],
    n.DELIVERIES: [({}, "0+50x20")],
    n.DELIVERIES_IN_FLIGHT: [({}, "120x20")],
    n.DELIVERIES_LOST: [({}, "0x20")],
    n.DELIVERIES_UNEXPECTED: [({}, "0x20")],
    n.DELIVERIES_UNVERIFIED: [({}, "0x20")],
    n.SERVER_CPU: [(SERVER, "0+30x20")],
    n.SERVER_RSS: [(SERVER, "52428800x20")],
    n.SERVER_OPEN_FDS: [(SERVER, "120x20")],
    n.SERVER_THREADS: [(SERVER, "1x20")],
    n.SERVER_UP: [(SERVER, "1x20")],
    n.PROSODY_C2S_CONNECTIONS: [({**SERVER, "host": "localhost", "type": "c2s", "ip_family": "ipv4"}, "9x20")],
    n.PROSODY_MUC_LIVE_ROOMS: [({**SERVER, "host": "muc.localhost"}, "1x20")],
    n.PROSODY_SMACKS_QUEUED: [({**SERVER, "host": "localhost"}, "0+600x20")],
}
for _name in ("muc_join", "message_delivery"):
    for _le, _values in (("0.1", "0+3x20"), ("0.5", "0+4x20"), ("+Inf", "0+5x20")):
        SERIES.setdefault(f"{n.REQUEST_DURATION}_bucket", []).append(({"name": _name, "le": _le}, _values))
    SERIES.setdefault(f"{n.REQUEST_DURATION}_count", []).append(({"name": _name}, "0+5x20"))
    SERIES.setdefault(f"{n.REQUEST_DURATION}_sum", []).append(({"name": _name}, "0+1x20"))
VALUES = [
    # CPU: 30 s of CPU a minute is half a core.
    (f"rate({n.SERVER_CPU}[$__rate_interval]) * 100", {**SERVER}, 50),
    (n.SERVER_RSS, {"__name__": n.SERVER_RSS, **SERVER}, 52428800),
    (f"max by (phase) ({n.PHASE}) == 1", {"phase": "seed"}, 1),
    (f"sum({n.DELIVERIES_IN_FLIGHT})", {}, 120),
    (f"max({n.EVENT_LOOP_LAG})", {}, 0.02),
]
"""Expressions of the dashboard whose values the series above fix: (expression, labels, value)."""


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_every_expression_returns_data_from_the_exporters_series(tmp_path: Path) -> None:
    queries = _queries()
    exprs = {expr for _, expr in queries}
    for expr, _, _ in VALUES:
        assert expr in exprs, f"no longer on the dashboard: {expr}"
    # A query that returns nothing makes its absent() alert fire, which the test expects not to.
    alerts = [(f"NoData{i}", where, expr) for i, (where, expr) in enumerate(queries)]
    rules = [{"alert": alert, "expr": f"absent({_promql(expr)})"} for alert, _, expr in alerts]
    (tmp_path / "rules.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=2))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": INTERVAL,
        "tests": [{
            "interval": INTERVAL,
            "input_series": [{"series": _series(name, labels), "values": values}
                             for name, series in SERIES.items() for labels, values in series],
            "alert_rule_test": [{"eval_time": EVAL_TIME, "alertname": alert, "exp_alerts": []}
                                for alert, _, _ in alerts],
            "promql_expr_test": [{"expr": _promql(expr), "eval_time": EVAL_TIME,
                                  "exp_samples": [{"labels": _series("", labels), "value": value}]}
                                 for expr, labels, value in VALUES],
        }],
    }  # fmt: skip
    (tmp_path / "tests.yml").write_text(json.dumps(tests, indent=2))
    result = subprocess.run([promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    names = {f"{alert}": f"{where}: {expr}" for alert, where, expr in alerts}
    output = result.stdout + result.stderr
    returned_nothing = [names[a] for a in re.findall(r"alertname: (NoData\d+)", output)]
    assert result.returncode == 0, "\n".join(["promtool test rules failed", *returned_nothing, output])


def test_in_flight_is_shown_beside_lost() -> None:
    """Deliveries in flight are not lost: the dashboard shows both, side by side, as stats and over time."""
    panels = _panels()
    stats = [p["title"] for p in panels if p["type"] == "stat"]
    assert stats.index("Deliveries in flight") == stats.index("Deliveries lost") + 1
    lost = next(p for p in panels if p["title"] == "Deliveries lost")
    in_flight = next(p for p in panels if p["title"] == "Deliveries in flight")
    assert in_flight["gridPos"]["y"] == lost["gridPos"]["y"] and in_flight["gridPos"]["x"] == lost["gridPos"]["x"] + 6
    assert [metric_names(t["expr"]) for t in in_flight["targets"]] == [{n.DELIVERIES_IN_FLIGHT}]
    graph = next(p for p in panels if p["type"] == "timeseries" and any(
        metric_names(t["expr"]) == {n.DELIVERIES_LOST} for t in p["targets"]))  # fmt: skip
    assert [t["legendFormat"] for t in graph["targets"]][:2] == ["in flight", "lost"]


def test_counters_are_read_as_rates_and_the_histogram_by_its_buckets() -> None:
    for where, expr in _queries():
        for name in metric_names(expr):
            if name.endswith("_total") and name != n.DEVIATIONS:  # deviations: the run's count so far, by kind
                assert re.search(rf"(rate|increase)\({re.escape(name)}\b", expr), f"{where}: {expr}"
            if name.startswith(n.REQUEST_DURATION):
                assert name.endswith("_bucket") and "histogram_quantile" in expr, f"{where}: {expr}"
