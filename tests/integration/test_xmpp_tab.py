"""The XMPP tab of Locust's web UI in a real browser, during and after a small livechat run on the lab Prosody.

Locust starts the run at once (``--autostart``) and keeps its UI up afterwards; headless Chromium (Debian's,
driven by Playwright, as in ``test_web_ui.py``) opens the XMPP tab. The run observes the lab's Prosody (its
``LOCUST_XMPP_LAB_DIR`` is the lab's). While the run goes on the tab must show a phase of the plan with its
planned users, the server's process, CPU % and RSS as the run samples them, and the report as coming. Once
the run has stopped, a reload shows the final message truth, which must be the numbers of ``/xmpp/truth``, the
phases as ended, and, once the report exists, its route and its link under Download Data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_web_ui import CHROMIUM, CHROMIUM_FLAGS, REPO, _get, _sync_playwright, _wait_for_ui

from xmpp_user.lab.lab import Lab, free_port
from xmpp_user.observe import webui

SCENARIO = [
    "--viewers", "3", "--join-rate", "10", "--batches", "1", "--talk-delay", "1", "--talk-interval", "1",
    "--talk-duration", "2", "--pause", "1", "--seed-messages", "5", "--seed-interval", "0.05", "--seed-wait", "1",
]  # fmt: skip
PHASES = {"seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave"}
RUN_TIMEOUT = 40.0
"""Seconds the run may take until the UI says it stopped (it needs about 15)."""


def _tab_rows(page: Any) -> dict[str, str]:
    """The XMPP tab's table as {"section/name": value}, read from the page."""
    table = page.locator("table").filter(has=page.locator("th[data-sortkey=section]"))
    rows = table.evaluate(
        """table => [...table.querySelectorAll("tbody tr")].map(tr =>
            [...tr.querySelectorAll("td")].map(td => td.innerText.trim()))"""
    )
    return {f"{section}/{item}": value for section, item, value in rows}


def _wait_rows(page: Any, condition: Any, timeout: float, what: str) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    rows: dict[str, str] = {}
    while time.monotonic() < deadline:
        if page.locator("th[data-sortkey=section]").count():
            rows = _tab_rows(page)
            if condition(rows):
                return rows
        page.wait_for_timeout(250)
    pytest.fail(f"the XMPP tab never showed {what}; last rows: {rows}", pytrace=False)


@pytest.mark.parametrize("lab", ["prosody"], indirect=True)
def test_the_xmpp_tab_shows_phase_truth_server_and_report(lab: Lab, tmp_path: Path) -> None:
    sync_playwright = _sync_playwright()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    prefix = tmp_path / "run"
    log = tmp_path / "locust.log"
    cmd = [
        sys.executable, "-m", "locust", "-f", "locustfiles/livechat.py", "--autostart",
        "--web-host", "127.0.0.1", "--web-port", str(port), "--host", lab.websocket_url,
        "--xmpp-room", f"tab-{uuid.uuid4().hex[:8]}", "--csv", str(prefix), *SCENARIO,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOCUST_XMPP_LAB_DIR": str(lab.run_dir)}  # observe the lab
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_ui(proc, f"{base}/", log)
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000},
            )  # fmt: skip
            try:
                page = context.new_page()
                page.goto(f"{base}/")
                page.get_by_role("tab", name="XMPP").click()

                running = _wait_rows(page, lambda r: r.get("phase/phase") in PHASES and "server/CPU" in r, 20,
                                     "a phase of the plan and the server's CPU")  # fmt: skip
                page.screenshot(path=str(tmp_path / "running.png"), full_page=True)
                assert running["run/state"] in ("spawning", "running"), running
                assert re.fullmatch(r"\d+\.\d\d s \(its event loop's largest delay, last 3 s\)",
                                    running["run/generator lag"]), running  # fmt: skip
                assert running["phase/planned users"].isdigit(), running
                assert "server/server" not in running, running  # not "not observed"
                assert running["server/process"] == f"{lab.name} (pid {lab.pid})", running
                assert re.fullmatch(r"\d+\.\d %( \(\d+(\.\d)? s ago\))?", running["server/CPU"]), running
                rss = re.fullmatch(r"(\d+\.\d) MiB", running["server/memory (RSS)"])
                assert rss and 1 < float(rss[1]) < 4096, running
                assert running["report/report"] == "after the run", running
                assert {"truth/sent", "truth/delivered", "truth/lost"} <= set(running), running

                status = page.locator("header").get_by_text(re.compile(r"^stopped$", re.IGNORECASE))
                try:
                    status.wait_for(timeout=RUN_TIMEOUT * 1000)
                except Exception:
                    pytest.fail(f"the run did not stop within {RUN_TIMEOUT:g} s:\n{log.read_text()}", pytrace=False)
                # The report is another part's work: stand in for it, as the file it writes at the end.
                Path(f"{prefix}{webui.REPORT_SUFFIX}").write_text("<html><body>report of the run</body></html>")
                # Locust polls its stats only while a run is on: a reload shows the final numbers.
                page.reload()
                page.get_by_role("tab", name="XMPP").click()
                final = _wait_rows(page, lambda r: r.get("run/state") == "stopped", 10, "the stopped run")
                page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
                page.get_by_role("tab", name="Download Data").click()
                link = page.get_by_role("link", name="Download the XMPP run report")
                href = link.get_attribute("href")
            finally:
                context.close()

        truth = json.loads(_get(f"{base}/xmpp/truth"))
        assert truth["lost"] == 0 and truth["delivered"] == truth["expected"] > 0, truth
        for name in ("sent", "confirmed", "expected", "delivered", "lost", "unexpected", "unverified"):
            assert final[f"truth/{name}"] == str(truth[name]), (name, final, truth)
        assert final["phase/phase"] == "ended (last: batch1-leave)", final
        assert final["report/report"].startswith(webui.REPORT_ROUTE), final
        assert href == f".{webui.REPORT_ROUTE}"
        assert b"report of the run" in _get(f"{base}{webui.REPORT_ROUTE}")
        state = json.loads(_get(f"{base}{webui.ROUTE}"))
        assert state["truth"] == {k: v for k, v in truth.items() if k != "deviations"}, (state, truth)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
