"""The livechat scenario driven from Locust's web UI in a real browser, as a user would.

Locust serves its UI on loopback against the lab Prosody; headless Chromium (Debian's, driven
by Playwright) opens it, finds the scenario's options under "Custom parameters", fills small
values, starts the run and waits until the load shape ends it. The statistics table the UI
shows must then hold the scenario's requests, none failed, with counts that only the values
typed into the form produce; the message truth served at ``/xmpp/truth`` must show no loss.

Chromium and Playwright are installed by ``scripts/setup.sh``; without them this test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from xmpp_user.fidelity import converse
from xmpp_user.lab.lab import Lab, free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(converse.CHROMIUM)
CHROMIUM_FLAGS = converse.CHROMIUM_FLAGS
STARTUP_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0
"""Seconds the run may take from the click on Start until the UI shows it stopped (it needs about 17)."""

VIEWERS = 5
FORM = {
    "viewers": VIEWERS,
    "join_rate": 5,
    "talk_delay": 1,
    "talk_interval": 1,
    "talk_duration": 2,
    "pause": 1,
    "seed_messages": 10,
    "seed_interval": 0.05,
    "seed_wait": 1,
}
"""Values typed into the form, by option name; ``batches`` is chosen as 1 in its select."""
SHOWN_OPTIONS = ["viewers", "join_rate", "rooms", "pause", "batches", "xmpp_room", "xmpp_auth"]
"""Options of the scenario and of the XMPP users that the start form must offer."""
# Loopback only, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _field(name: str) -> str:
    """The form field's name: Locust's React UI sends snake_case options but names its inputs in camelCase."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _get(url: str, timeout: float = 5) -> bytes:
    with _OPENER.open(url, timeout=timeout) as response:
        return response.read()


def _sync_playwright() -> Any:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run  bash scripts/setup.sh  (apt-get install -y chromium)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = str(exc)
    else:
        return sync_playwright
    pytest.fail(f"Playwright is not installed ({problem}): run  bash scripts/setup.sh", pytrace=False)


def _wait_for_ui(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"locust exited with {proc.returncode} before its web UI answered:\n{log.read_text()}")
        try:
            _get(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"locust's web UI did not answer within {STARTUP_TIMEOUT:g} s:\n{log.read_text()}")
            time.sleep(0.2)


def _statistics(page: Any) -> dict[str, dict[str, str]]:
    """The rows of the UI's statistics table by request name, cells keyed by their column's sort key."""
    rows = page.locator("table").first.evaluate(
        """table => {
            const keys = [...table.querySelectorAll("thead th")].map(th => th.dataset.sortkey);
            return [...table.querySelectorAll("tbody tr")].map(tr =>
                Object.fromEntries([...tr.querySelectorAll("td")].map((td, i) => [keys[i], td.innerText.trim()])));
        }"""
    )
    return {row["name"]: row for row in rows}


def test_livechat_run_started_from_the_web_ui(lab: Lab, tmp_path: Path) -> None:
    sync_playwright = _sync_playwright()
    room = f"webui-{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "locust.log"
    cmd = [
        sys.executable, "-m", "locust", "-f", "locustfiles/livechat.py",
        "--web-host", "127.0.0.1", "--web-port", str(port),
        "--host", lab.websocket_url, "--xmpp-room", room,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_ui(proc, f"{base}/", log)
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            try:
                page = context.new_page()
                page.goto(f"{base}/")

                # The load shape sets the user count: Locust disables those fields.
                assert page.locator("input[name=userCount]").is_disabled()
                page.get_by_role("button", name="Custom parameters").click()
                for option in SHOWN_OPTIONS:
                    field = page.locator(f"form [name={_field(option)}]")
                    assert field.count() == 1, f"the start form shows no field for --{option.replace('_', '-')}"
                assert page.locator(f"input[name={_field('xmpp_room')}]").input_value() == room
                assert page.locator(f"select[name={_field('xmpp_auth')}]").input_value() == "anonymous"
                for option, value in FORM.items():
                    page.locator(f"input[name={_field(option)}]").fill(str(value))
                page.locator(f"select[name={_field('batches')}]").select_option("1")
                page.screenshot(path=str(tmp_path / "form.png"), full_page=True)

                with page.expect_response(re.compile(r"/swarm$")) as swarm:
                    page.get_by_role("button", name="Start", exact=True).click()
                reply = swarm.value.json()
                assert reply["success"], reply
                sent = dict(urllib.parse.parse_qsl(swarm.value.request.post_data or ""))
                assert {k: sent.get(k) for k in FORM} == {k: str(v) for k, v in FORM.items()}, sent

                status = page.locator("header").get_by_text(re.compile(r"^stopped$", re.IGNORECASE))
                try:
                    status.wait_for(timeout=RUN_TIMEOUT * 1000)
                except Exception:
                    page.screenshot(path=str(tmp_path / "timeout.png"), full_page=True)
                    pytest.fail(f"the run did not stop by itself within {RUN_TIMEOUT:g} s:\n{log.read_text()}")
                # The table refreshes every 2 s; once stopped, its counts no longer change.
                page.wait_for_timeout(2500)
                page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
                stats = _statistics(page)
            finally:
                context.close()

        for name in ("muc_join", "vcard_occupant", "message_delivery"):
            assert name in stats, f"no row {name!r} in the statistics table: {sorted(stats)}"
            assert stats[name]["numFailures"] == "0", stats[name]
        # Each viewer asks for the vCard of every other viewer: only the form's 5 viewers make 20.
        assert stats["vcard_occupant"]["numRequests"] == str(VIEWERS * (VIEWERS - 1)), stats["vcard_occupant"]
        assert stats["muc_join"]["numRequests"] == str(VIEWERS + 2), stats["muc_join"]  # and the 2 seeders

        truth = json.loads(_get(f"{base}/xmpp/truth"))
        assert truth["lost"] == 0, truth
        assert truth["delivered"] == truth["expected"] > 0, truth
        assert stats["message_delivery"]["numRequests"] == str(truth["delivered"]), (stats, truth)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
