"""Record what real Converse.js sends and receives when it joins a room, configured as PeerTube's livechat.

``record(websocket_url, room_jid, nickname)`` installs ``converse.js`` from npm once into a cache
directory (``~/.cache/locust-xmpp/converse-<version>``, or under ``$LOCUST_XMPP_CACHE``), serves a small
page and Converse's ``dist/`` from a loopback HTTP server in a thread, opens the page in headless
Chromium (Debian's ``/usr/bin/chromium`` driven by Python Playwright) and records every WebSocket frame
sent and received, with the time (ms since the first frame). It returns once the room is joined (our
own presence, status 110, came back) and a fixed settle time has passed, then closes the tab (which
drops the connection without ``<close/>``) or, with ``leave="logout"``, logs out first.

Converse's options are those the PeerTube livechat plugin passes an anonymous viewer
(conversejs/lib/converse-params.ts in JohnXLivingston/peertube-plugin-livechat): anonymous login on
the server's anonymous domain, ``auto_join_rooms`` with the video's room, ``ping_interval`` 25,
``send_chat_state_notifications`` false, ``send_chat_markers`` [], fullscreen view, no logout and
``sessionStorage``; plus a ``nickname`` (as the plugin gives readonly viewers, ``randomNick('Viewer')``)
so that Converse joins without asking for one. ``locust-xmpp fidelity record | compare`` run it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from xmpp_user.fidelity import kinds

VERSION = "14.0.0"
"""The converse.js release recorded (``npm view converse.js versions`` lists 14.0.0 as the only 14)."""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
"""Headless Chromium as it runs here (Debian's, no download; the web UI tests use the same)."""
JOIN_TIMEOUT = 20.0
"""Seconds Converse may take from opening the page until the room is joined."""


class RecorderError(RuntimeError):
    """Something the recorder needs is missing or failed; one line for the user."""


@dataclass
class Frame:
    ms: float
    """Milliseconds since the first frame of the recording (sent or received)."""
    data: str


@dataclass
class Recording:
    websocket_url: str
    room: str
    nickname: str
    version: str
    sent: list[Frame] = field(default_factory=list)
    received: list[Frame] = field(default_factory=list)
    joined_ms: float | None = None
    """When our own presence in the room came back, ms since the first frame; None if it never did."""
    jid: str | None = None
    """The full JID the server bound (from the bind result)."""
    console: list[str] = field(default_factory=list)
    """The page's console errors and uncaught exceptions."""

    def sent_frames(self) -> list[str]:
        return [f.data for f in self.sent]

    def received_frames(self) -> list[str]:
        return [f.data for f in self.received]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- installing Converse ---------------------------------------------------------------------


def cache_dir(version: str = VERSION) -> Path:
    root = os.environ.get("LOCUST_XMPP_CACHE") or Path.home() / ".cache" / "locust-xmpp"
    return Path(root) / f"converse-{version}"


def installed(version: str = VERSION) -> bool:
    """Whether converse.js ``version`` is in the cache already (no npm needed)."""
    return (cache_dir(version) / "node_modules" / "converse.js" / "dist" / "converse.min.js").is_file()


def install(version: str = VERSION) -> Path:
    """The ``dist`` directory of converse.js ``version``, installed with npm on first use."""
    prefix = cache_dir(version)
    dist = prefix / "node_modules" / "converse.js" / "dist"
    if installed(version):
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise RecorderError("npm is not installed: run  apt-get install -y npm  (needed to fetch converse.js)")
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--ignore-scripts", "--no-save",
           f"converse.js@{version}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not (dist / "converse.min.js").is_file():
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RecorderError(f"npm install converse.js@{version} failed ({done.returncode}): {last[0]}")
    return dist


# -- serving the page ------------------------------------------------------------------------


def anonymous_domain(room_jid: str) -> str:
    """The domain a room's MUC service belongs to (``muc.localhost`` -> ``localhost``): where PeerTube's
    anonymous viewers log in."""
    service = room_jid.split("@", 1)[-1].split("/", 1)[0]
    return service.split(".", 1)[1] if "." in service else service


def options(websocket_url: str, room_jid: str, nickname: str, domain: str | None = None) -> dict[str, Any]:
    """Converse's settings as the PeerTube livechat plugin passes them to an anonymous viewer on ``domain``."""
    domain = domain or anonymous_domain(room_jid)
    return {
        "assets_path": "/dist/",
        "authentication": "anonymous",
        "jid": domain,
        "websocket_url": websocket_url,
        "auto_login": True,
        "auto_join_rooms": [room_jid],
        "nickname": nickname,
        "ping_interval": 25,
        "keepalive": True,
        "discover_connection_methods": False,
        "notify_all_room_messages": [room_jid],
        "show_desktop_notifications": False,
        "show_tab_notifications": False,
        "singleton": True,
        "auto_focus": False,
        "hide_muc_participants": False,
        "play_sounds": False,
        "muc_instant_rooms": True,
        "show_client_info": False,
        "allow_adhoc_commands": False,
        "allow_contact_requests": False,
        "allow_logout": False,
        "show_controlbox_by_default": False,
        "view_mode": "fullscreen",
        "allow_message_corrections": "all",
        "allow_message_retraction": "all",
        "persistent_store": "sessionStorage",
        "show_images_inline": False,
        "render_media": False,
        "show_retraction_warning": False,
        "send_chat_state_notifications": False,
        "prune_messages_above": 100,
        "pruning_behavior": "unscrolled",
        "send_chat_markers": [],
        "clear_cache_on_logout": True,
        "allow_user_trust_override": False,
        "whitelisted_plugins": ["fidelityRecorder"],
        "loglevel": "warn",
    }


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>converse fidelity</title>
<link rel="stylesheet" href="/dist/converse.min.css">
<script type="module" src="/dist/converse.min.js"></script></head>
<body class="converse-fullscreen"><div id="conversejs-bg"></div>
<script type="module">
// converse.min.js is an ES module (it sets window.converse); module scripts run in order.
// Hands Converse's API to the recorder (to log out); registers no handler of its own.
converse.plugins.add("fidelityRecorder", {initialize() { window.fidelityApi = this._converse.api; }});
converse.initialize(%s);
</script></body></html>
"""


class _Handler(SimpleHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if self.path.split("?", 1)[0] in ("/", "/index.html"):  # a query string may carry page options
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.page)))
            self.end_headers()
            self.wfile.write(self.page)
            return
        if self.path.startswith("/dist/"):
            self.path = self.path[len("/dist") :]
            super().do_GET()
            return
        self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class PageServer:
    """The page and ``dist/`` on 127.0.0.1, served by a thread; a context manager."""

    def __init__(self, dist: Path, page: str) -> None:
        handler = type("Handler", (_Handler,), {"page": page.encode()})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(dist)))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="converse-page", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# -- recording -------------------------------------------------------------------------------


def _sync_playwright() -> Any:
    if not Path(CHROMIUM).exists():
        raise RecorderError(f"{CHROMIUM} is missing: run  apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RecorderError(f"Playwright is not installed ({exc}): run  pip install playwright") from None
    return sync_playwright


def record(
    websocket_url: str,
    room_jid: str,
    nickname: str,
    seconds: float = 5.0,
    viewport: tuple[int, int] = (1280, 800),
    leave: str = "tab",
    version: str = VERSION,
    join_timeout: float = JOIN_TIMEOUT,
    domain: str | None = None,
    screenshot: str | Path | None = None,
) -> Recording:
    """Open Converse on ``room_jid`` and record its WebSocket frames until ``seconds`` after the join.

    ``leave``: ``"tab"`` closes the tab (the connection drops), ``"logout"`` asks Converse to log out
    first and records its last frames. Raises RecorderError when the room is not joined in time.
    """
    if leave not in ("tab", "logout"):
        raise ValueError(f"leave must be 'tab' or 'logout', not {leave!r}")
    sync_playwright = _sync_playwright()
    dist = install(version)
    rec = Recording(websocket_url, room_jid, nickname, version)
    page_html = PAGE % json.dumps(options(websocket_url, room_jid, nickname, domain))
    start: list[float] = []

    def stamp() -> float:
        now = time.monotonic()
        if not start:
            start.append(now)
        return round((now - start[0]) * 1000, 1)

    def on_sent(payload: str | bytes) -> None:
        rec.sent.append(Frame(stamp(), payload if isinstance(payload, str) else payload.decode()))

    def on_received(payload: str | bytes) -> None:
        text = payload if isinstance(payload, str) else payload.decode()
        ms = stamp()
        rec.received.append(Frame(ms, text))
        if rec.jid is None and "urn:ietf:params:xml:ns:xmpp-bind" in text:
            rec.jid = kinds.bound_jid(text)
        if rec.joined_ms is None and kinds.self_presence(text, room_jid):
            rec.joined_ms = ms

    def on_websocket(ws: Any) -> None:
        if ws.url.rstrip("/") != websocket_url.rstrip("/"):
            return
        ws.on("framesent", on_sent)
        ws.on("framereceived", on_received)

    with PageServer(dist, page_html) as server, tempfile.TemporaryDirectory(prefix="converse-profile-") as profile:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            try:
                page = context.new_page()
                page.on("websocket", on_websocket)
                page.on("console", lambda m: m.type == "error" and rec.console.append(m.text))
                page.on("pageerror", lambda e: rec.console.append(f"uncaught: {e}"))
                page.goto(server.url)
                deadline = time.monotonic() + join_timeout
                while rec.joined_ms is None:
                    if time.monotonic() > deadline:
                        if screenshot:
                            page.screenshot(path=str(screenshot))
                        problems = "; ".join(rec.console[-3:]) or "no console errors"
                        raise RecorderError(f"Converse did not join {room_jid} within {join_timeout:g} s "
                                            f"({len(rec.sent)} frames sent; {problems})")  # fmt: skip
                    page.wait_for_timeout(50)
                page.wait_for_timeout(seconds * 1000)
                if screenshot:
                    page.screenshot(path=str(screenshot))
                if leave == "logout":
                    page.evaluate("() => window.fidelityApi.user.logout()")
                    page.wait_for_timeout(500)
                page.close()
            finally:
                context.close()
    return rec
