"""The XMPP tab of the web UI, in process: Flask's test client against a real Locust web UI that is never
started (no socket). The tab served through a browser against a lab server is in
``tests/integration/test_xmpp_tab.py``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from locust import User, task
from locust.env import Environment

from xmpp_user import observe
from xmpp_user.observe import timeline, webui
from xmpp_user.run import outcome
from xmpp_user.run.deviations import Deviations
from xmpp_user.run.truth import Tally


class IdleUser(User):
    @task
    def idle(self) -> None:
        pass


def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Environment:
    monkeypatch.setattr("sys.argv", ["locust"])  # Locust's page parses the command line for its form
    monkeypatch.setattr(webui, "last_server_sample", None)  # whatever an earlier test installed
    options = argparse.Namespace(csv_prefix=str(tmp_path / "run"), num_users=None, spawn_rate=None,
                                 stats_history_enabled=False, run_time=None, xmpp_metrics_port=0)  # fmt: skip
    environment = Environment(user_classes=[IdleUser], parsed_options=options)
    environment.create_local_runner()
    environment.create_web_ui("127.0.0.1", 0, delayed_start=True)
    return environment


@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Environment, Any]]:
    environment = _environment(tmp_path, monkeypatch)
    webui.install(environment)
    assert environment.web_ui is not None
    yield environment, environment.web_ui.app.test_client()
    environment.runner.quit()


def _xmpp_rows(client: Any) -> dict[str, Any]:
    reply = client.get("/stats/requests").get_json()
    tables = [entry for entry in reply["extended_stats"] if entry["key"] == webui.TAB]
    assert len(tables) == 1, reply["extended_stats"]
    return {f"{row['section']}/{row['item']}": row["value"] for row in tables[0]["data"]}


def test_the_page_declares_the_tab_and_its_table(web: tuple[Environment, Any]) -> None:
    environment, client = web
    page = client.get("/")
    assert page.status_code == 200
    args = environment.web_ui.template_args
    assert args["extended_tabs"] == [{"key": "xmpp", "title": "XMPP"}]
    assert [c["key"] for c in args["extended_tables"][0]["structure"]] == ["section", "item", "value"]
    assert b'"extended_tabs"' in page.data


def test_status_and_rows_before_a_run(web: tuple[Environment, Any]) -> None:
    _, client = web
    state = json.loads(client.get(webui.ROUTE).data)
    assert state["phase"] == {"name": None, "planned_users": None, "state": "no phases"}
    assert state["server"] is None and state["report"] is None
    assert {"sent", "delivered", "lost", "unexpected", "unverified"} <= set(state["truth"])
    rows = _xmpp_rows(client)
    assert rows["server/server"] == webui.NOT_OBSERVED
    assert rows["phase/phase"] == "no phases"
    assert rows["truth/lost"] == state["truth"]["lost"]
    assert rows["report/report"] == "after the run"
    assert state["generator_lag"] == 0.0 and rows["run/generator lag"].startswith("0.00 s")
    # Locust hands out the same cached reply again: the tab's rows are replaced, not added twice.
    assert _xmpp_rows(client) == rows
    # Locust sorts by "name" with a stable sort: all rows share it, so sections stay in reading order.
    data = next(e["data"] for e in client.get("/stats/requests").get_json()["extended_stats"] if e["key"] == "xmpp")
    assert len({row["name"] for row in data}) == 1
    sections = [row["section"] for row in data]
    assert sections == sorted(sections, key=["run", "phase", "server", "truth", "deviations", "report"].index)


def test_the_generator_s_lag_is_shown(web: tuple[Environment, Any]) -> None:
    from xmpp_user.run.lag import lag

    environment, client = web
    lag(environment).measured(0.72, True, Deviations())
    assert json.loads(client.get(webui.ROUTE).data)["generator_lag"] == 0.72
    assert _xmpp_rows(client)["run/generator lag"] == "0.72 s (its event loop's largest delay, last 3 s)"


def test_the_server_sampler_hook_shows_cpu_and_memory(web: tuple[Environment, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _, client = web
    sample = {"cpu_percent": 42.34, "rss_bytes": 50 * 2**20, "unix_time": time.time() - 2}
    monkeypatch.setattr(webui, "last_server_sample", lambda: sample)
    state = json.loads(client.get(webui.ROUTE).data)
    assert state["server"]["cpu_percent"] == 42.34 and state["server"]["rss_bytes"] == 50 * 2**20
    assert 1.5 <= state["server"]["age_seconds"] < 10
    rows = _xmpp_rows(client)
    assert rows["server/CPU"].startswith("42.3 %") and rows["server/memory (RSS)"] == "50.0 MiB"
    monkeypatch.setattr(webui, "last_server_sample", lambda: None)  # the sampler has no sample yet
    assert json.loads(client.get(webui.ROUTE).data)["server"] is None


def test_the_timeline_recorder_is_the_tabs_server_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environment = _environment(tmp_path, monkeypatch)
    try:
        observe.install(environment)  # what every XmppUser locustfile does at init
        recorder = timeline.recorder(environment)
        assert recorder is not None and webui.last_server_sample == recorder.last_server_sample
        assert environment.web_ui is not None
        client = environment.web_ui.app.test_client()
        assert _xmpp_rows(client)["server/server"] == webui.NOT_OBSERVED  # no run yet
        # A run observing the lab's server: the recorder's first sample has no CPU % yet, the second has.
        now = time.time()
        recorder.server = {"pid": 4242, "name": "Prosody (pid 4242)", "note": "", "found": "the lab's Prosody"}
        recorder.server_rows = [(now - 0.2, 1.5, None, 20 * 2**20)]
        assert recorder.last_server_sample() is None
        assert _xmpp_rows(client)["server/server"] == webui.NOT_OBSERVED
        recorder.server_rows.append((now, 1.6, 50.0, 21 * 2**20))
        rows = _xmpp_rows(client)
        assert rows["server/process"] == "Prosody (pid 4242)"
        assert rows["server/CPU"].startswith("50.0 %") and rows["server/memory (RSS)"] == "21.0 MiB"
        server = json.loads(client.get(webui.ROUTE).data)["server"]
        assert (server["cpu_percent"], server["rss_bytes"], server["name"]) == (50.0, 21 * 2**20, "Prosody (pid 4242)")
        recorder.server = {"pid": None, "name": "the server", "note": "not observed", "found": ""}
        assert _xmpp_rows(client)["server/server"] == webui.NOT_OBSERVED  # a run that does not observe it
    finally:
        environment.runner.quit()


def test_the_tab_reads_the_final_truth_again_and_again(web: tuple[Environment, Any]) -> None:
    # Once a run is reported, outcome.summary hands out its record: the tab took the deviations out of the record
    # itself, and every later poll failed (HTTP 500) until the page was reloaded with a new run.
    environment, client = web
    tally, deviations = Tally(), Deviations()
    outcome.install(environment, tally, deviations)
    environment.events.test_start.fire(environment=environment)
    tally.sent, tally.confirmed, tally.expected["l.1.1|l"], tally.delivered["l.1.1|l"] = 1, 1, 2, 2
    deviations.note("no_room_vcard", "no vCard")
    environment.events.test_stop.fire(environment=environment)
    for _ in range(3):
        assert client.get(webui.ROUTE).status_code == 200
        rows = _xmpp_rows(client)
        assert (rows["truth/delivered"], rows["truth/in_flight"]) == (2, 0)
        assert rows["deviations/no_room_vcard"] == "1 × no vCard"


def test_the_report_is_served_and_linked_once_written(web: tuple[Environment, Any], tmp_path: Path) -> None:
    environment, client = web
    missing = client.get(webui.REPORT_ROUTE)
    assert missing.status_code == 404 and b"not written yet" in missing.data
    client.get("/")
    assert environment.web_ui.template_args["extended_csv_files"] == []
    (tmp_path / "run_report.html").write_text("<html><body>the report</body></html>")
    served = client.get(webui.REPORT_ROUTE)
    assert served.status_code == 200 and b"the report" in served.data
    assert served.mimetype == "text/html"
    assert json.loads(client.get(webui.ROUTE).data)["report"] == webui.REPORT_ROUTE
    client.get("/")
    client.get("/")
    links = environment.web_ui.template_args["extended_csv_files"]
    assert links == [{"href": "./xmpp/report", "title": "Download the XMPP run report"}]
