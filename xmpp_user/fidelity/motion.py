"""The moving scene: clients join a room one after another and stay; the server's CPU per join, every frame.

The still scene (``scene.py``) sees one client join a full room. Here ``joins`` clients join a room whose
archive holds ``ARCHIVE`` messages (no avatars), one every ``interval`` seconds, and all stay ``stay``
seconds after the last one opened. Early clients see the later ones join (presences, their vCards, the
server's caps queries); over a minute, stream-management acks and keepalive pings flow. Two drivers:

- ``real_motion``: real Converse.js pages in ONE headless Chromium, one browser context per page (separate
  sessions), the viewport of the profile they stand for (``VIEWS``);
- ``emulated_motion``: viewers of a client profile (xmpp_user.scenario.profiles) outside Locust, each in its
  greenlet: the profile's join, then its idle behaviour twice a second, answering what the server asks.

Both record, per client, every frame sent and received with its time (seconds since the window opened)
and the server's CPU (utime+stime of its process) from the first join to the end of the stay.
``reduce`` turns a client's frames into kinds (xmpp_user.fidelity.kinds), ``kind_counts`` sums them over
pages. ``cost_run`` runs both at the same time, each on a fresh lab, the viewers in a child process started
by the pages (``Beside``), run after run (``locust-xmpp fidelity cost``): the ratio of two servers' CPU
measured under the same load, where one side after the other measured the host's load as much as the clients.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event

from xmpp_user.fidelity import converse, kinds, scene
from xmpp_user.session.client import XmppClient

ARCHIVE = 50
"""Messages in the room's archive before the first join: one page of the profiles' archive query."""
JOIN_TIMEOUT = 90.0
"""Seconds a client may take from opening until it is in the room (Chromium pages on a busy 2-core machine)."""
IDLE_EVERY = 0.5
"""Seconds between an emulated viewer's idle calls (as the livechat viewer's task loop)."""
SAMPLE = 0.5
"""Seconds between two samples of the server's CPU time."""
ROOM = "motion"
FIXTURE = Path(__file__).with_name("converse-14-motion.json")
"""Real Converse.js 14 in motion, per lab server, normalised (``locust-xmpp fidelity record --motion``)."""


@dataclass(frozen=True)
class View:
    """How a profile's real client is shown: its window and whether the occupant list is open."""

    viewport: tuple[int, int]
    occupants_shown: bool


VIEWS = {
    "converse-14": View((1280, 800), True),
    "peertube-livechat": View((400, 700), False),
}
"""The real page each profile stands for (a profile not named here has no real counterpart)."""


class MotionError(RuntimeError):
    """A client did not join, or the scene could not be set up; one line for the user."""


@dataclass
class Page:
    """One client of the scene: what it sent and received, times in seconds since the window opened."""

    position: int
    nick: str
    opened: float
    joined: float | None = None
    jid: str | None = None
    sent: list[tuple[float, str]] = field(default_factory=list)
    received: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Motion:
    """One side of one run: who joined, the server's CPU over the window, every page."""

    server: str
    client: str
    """``converse <version>`` for real pages, else the profile's name."""
    room: str
    joins: int
    interval: float
    stay: float
    cpu_seconds: float
    window_seconds: float
    load_average: tuple[float, float, float]
    pages: list[Page]
    server_switches: dict[str, int] = field(default_factory=dict)
    """The server's context switches over the window (/proc/PID/status): ``voluntary`` counts its waits for
    input (event loop wake-ups), ``nonvoluntary`` the times the kernel took the CPU from it."""
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Requests of emulated viewers that failed (name: reason); real pages record none."""
    """(seconds since the window opened, the server's CPU-seconds since then), about every ``SAMPLE`` s."""

    @property
    def ms_per_join(self) -> float:
        return self.cpu_seconds * 1000 / self.joins

    def frames_per_join(self, way: str) -> float:
        return sum(len(getattr(p, way)) for p in self.pages) / self.joins

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Motion:
        pages = [Page(**{**p, "sent": [tuple(f) for f in p["sent"]], "received": [tuple(f) for f in p["received"]]})
                 for p in data["pages"]]  # fmt: skip
        rest = {k: v for k, v in data.items() if k != "pages"}
        rest["load_average"] = tuple(rest["load_average"])
        rest["cpu_samples"] = [tuple(x) for x in rest.get("cpu_samples", [])]
        return cls(**rest, pages=pages)


# -- the room ------------------------------------------------------------------------------------


def seed_room(websocket_url: str, domain: str, muc: str, messages: int = ARCHIVE) -> str:
    """A new room whose archive holds ``messages`` messages, written by a seeder who then leaves."""
    room = f"{ROOM}-{int(time.time() * 1000) % 10**8}@{muc}"
    seeder = XmppClient(websocket_url, domain)
    try:
        seeder.connect()
        seeder.muc_join(room, "seeder")
        for m in range(messages):
            seeder.groupchat(room, f"archived message {m}")
        seeder.muc_leave(room)
        seeder.close()
    except Exception as exc:  # noqa: BLE001  (any failure of the seeder is the scene's)
        seeder.abort()
        raise MotionError(f"could not seed the room {room}: {exc}") from None
    return room


def nick(position: int) -> str:
    return f"Viewer-{position:02d}"


# -- real Converse pages -------------------------------------------------------------------------


def page_options(websocket_url: str, room: str, domain: str, view: View) -> dict[str, Any]:
    """Converse's options for a page of the scene (the nickname comes from the page's query string)."""
    opts = converse.options(websocket_url, room, "", domain)
    opts["hide_muc_participants"] = not view.occupants_shown
    del opts["nickname"]
    return opts


PAGE = converse.PAGE.replace(
    "converse.initialize(%s);",
    'const options = %s; options.nickname = new URLSearchParams(location.search).get("nick");\n'
    "converse.initialize(options);",
)


def real_motion(lab: Any, room: str, joins: int, interval: float, stay: float, view: View,
                version: str = converse.VERSION, join_timeout: float = JOIN_TIMEOUT,
                signal: Callable[[str], None] | None = None) -> Motion:  # fmt: skip
    """``joins`` real Converse pages join ``room`` one every ``interval`` s and stay ``stay`` s after the
    last opened; MotionError when a page is not in the room ``join_timeout`` s after it opened.

    ``signal`` hears ``"go"`` when the window opens and a page's position when it sends its first frame
    (``Beside`` starts the viewers that way)."""
    sync_playwright = converse._sync_playwright()
    dist = converse.install(version)
    html = PAGE % json.dumps(page_options(lab.websocket_url, room, lab.domain, view))
    pages: list[Page] = []
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    def hooks(page: Page) -> Callable[[Any], None]:
        def on_received(payload: str | bytes) -> None:
            text = payload if isinstance(payload, str) else payload.decode()
            now = round(time.monotonic() - t0, 3)
            page.received.append((now, text))
            if page.jid is None and "urn:ietf:params:xml:ns:xmpp-bind" in text:
                page.jid = kinds.bound_jid(text)
            if page.joined is None and kinds.self_presence(text, room):
                page.joined = now

        def on_sent(payload: str | bytes) -> None:
            text = payload if isinstance(payload, str) else payload.decode()
            if not page.sent and signal is not None:
                signal(str(page.position))
            page.sent.append((round(time.monotonic() - t0, 3), text))

        def on_websocket(ws: Any) -> None:
            if ws.url.rstrip("/") == lab.websocket_url.rstrip("/"):
                ws.on("framesent", on_sent)
                ws.on("framereceived", on_received)

        return on_websocket

    with converse.PageServer(dist, html) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=converse.CHROMIUM, headless=True, args=converse.CHROMIUM_FLAGS)
        try:
            tabs: list[Any] = []
            cpu0, io0 = lab.cpu_seconds(), _io(lab)
            t0 = time.monotonic()
            if signal is not None:
                signal("go")
            end = t0 + (joins - 1) * interval + stay
            while True:
                now = time.monotonic() - t0
                if not samples or now - samples[-1][0] >= SAMPLE:
                    samples.append((round(now, 3), round(lab.cpu_seconds() - cpu0, 3)))
                if len(tabs) < joins and now >= len(tabs) * interval:
                    page = Page(len(tabs), nick(len(tabs)), round(now, 3))
                    context = browser.new_context(viewport={"width": view.viewport[0], "height": view.viewport[1]})
                    tab = context.new_page()
                    tab.on("websocket", hooks(page))
                    tab.goto(f"{server.url}?nick={page.nick}", wait_until="commit")
                    pages.append(page)
                    tabs.append(tab)
                late = [pg for pg in pages if pg.joined is None and now - pg.opened > join_timeout]
                if late:
                    pg = late[0]
                    raise MotionError(f"Converse page {pg.position} ({pg.nick}) did not join {room} within "
                                      f"{join_timeout:g} s ({len(pg.sent)} frames sent)")  # fmt: skip
                if time.monotonic() >= end and len(tabs) == joins and all(pg.joined is not None for pg in pages):
                    break
                if tabs:
                    tabs[-1].wait_for_timeout(50)  # Playwright delivers the frames while it waits
                else:
                    time.sleep(0.05)
            cpu, io = lab.cpu_seconds() - cpu0, _since(io0, _io(lab))
            window = time.monotonic() - t0
        finally:
            browser.close()
    return Motion(lab.server, f"converse {version}", room, joins, interval, stay, round(cpu, 3), round(window, 3),
                  _load(), pages, io, samples)  # fmt: skip


# -- emulated viewers ----------------------------------------------------------------------------


class _Failures:
    """Locust's request hook for viewers outside Locust: keeps the failed requests."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def fire(self, **kwargs: Any) -> None:
        if kwargs.get("exception") is not None:
            self.failed.append(f"{kwargs.get('name')}: {kwargs['exception']}")


def emulated_motion(lab: Any, room: str, joins: int, interval: float, stay: float, profile: str,
                    join_timeout: float = JOIN_TIMEOUT,
                    start: Callable[[int], None] | None = None) -> Motion:  # fmt: skip
    """The same scene with ``profile``'s viewers (scene.EmulatedViewer), each staying until the window closes.

    Viewer ``i`` starts ``i * interval`` s after the window opened, or, with ``start``, once ``start(i)``
    returns (``Beside``: when page ``i`` sent its first frame). The window closes ``stay`` s after the last
    start was due and once every viewer is in the room; the server's CPU is read then, before the viewers
    leave, as ``real_motion`` reads it before the browser closes."""
    if profile not in scene.PROFILES:
        raise MotionError(f"no client profile {profile!r} (choose from {', '.join(sorted(scene.PROFILES))})")
    where = scene.Scene(lab.websocket_url, lab.domain, lab.muc_domain, room)
    failures = _Failures()
    pages: list[Page] = []
    cpu0, io0 = lab.cpu_seconds(), _io(lab)
    t0 = time.monotonic()
    end = t0 + (joins - 1) * interval + stay
    errors: list[str] = []
    closed = gevent.event.Event()

    def live(page: Page) -> None:
        viewer = None
        try:
            viewer = scene.EmulatedViewer(where, profile, failures, nick=page.nick)
            connection = viewer.xmpp.connection
            connection.on_frame_sent.append(lambda f: page.sent.append((round(time.monotonic() - t0, 3), f)))
            connection.on_frame_received.append(lambda f: page.received.append((round(time.monotonic() - t0, 3), f)))
            with gevent.Timeout(join_timeout, MotionError(f"not in the room within {join_timeout:g} s")):
                viewer.xmpp.connect()
                page.jid = viewer.xmpp.jid
                viewer.profile.join()
            page.joined = round(time.monotonic() - t0, 3)
            while not closed.is_set():
                viewer.background = viewer.xmpp.expire(viewer.background)
                viewer.profile.idle()
                closed.wait(IDLE_EVERY)
        except Exception as exc:  # noqa: BLE001  (reported as the scene's one-line error)
            errors.append(f"{profile} viewer {page.position} ({page.nick}): {exc}")
        finally:
            if viewer is not None:
                viewer.xmpp.abort()

    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while not closed.is_set():
            samples.append((round(time.monotonic() - t0, 3), round(lab.cpu_seconds() - cpu0, 3)))
            closed.wait(SAMPLE)

    greenlets = [gevent.spawn(sample)]
    for i in range(joins):
        if start is not None:
            start(i)
        else:
            gevent.sleep(max(0.0, t0 + i * interval - time.monotonic()))
        page = Page(i, nick(i), round(time.monotonic() - t0, 3))
        pages.append(page)
        greenlets.append(gevent.spawn(live, page))
    deadline = max(end, time.monotonic()) + join_timeout
    while time.monotonic() < deadline and not errors:
        if time.monotonic() >= end and all(p.joined is not None for p in pages):
            break
        gevent.sleep(0.05)
    cpu, io = lab.cpu_seconds() - cpu0, _since(io0, _io(lab))
    window = time.monotonic() - t0
    closed.set()
    gevent.joinall(greenlets, timeout=10)
    gevent.killall(greenlets, timeout=5)
    if errors:
        raise MotionError(errors[0])
    return Motion(lab.server, profile, room, joins, interval, stay, round(cpu, 3), round(window, 3), _load(), pages,
                  io, samples, failures.failed)  # fmt: skip


def _io(lab: Any) -> dict[str, int]:
    """The server process's context switches (empty where /proc/PID/status cannot be read)."""
    try:
        lines = Path(f"/proc/{lab.pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    names = {k: f"{k}_ctxt_switches" for k in ("voluntary", "nonvoluntary")}
    return {k: int(fields[name]) for k, name in names.items() if name in fields}


def _since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before.keys() & after.keys()}


def _load() -> tuple[float, float, float]:
    try:
        return tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])  # type: ignore[return-value]
    except OSError:
        return (0.0, 0.0, 0.0)


# -- kinds ---------------------------------------------------------------------------------------


def reduce(motion: Motion, page: Page, way: str) -> list[str]:
    """The kinds of what ``page`` sent (``way="sent"``) or received (``"received"``), in order."""
    domain, muc = motion.room.split("@")[1].split(".", 1)[1], motion.room.split("@")[1]
    name = kinds.kind if way == "sent" else kinds.received_kind
    out = []
    for _, frame in getattr(page, way):
        k = name(frame, domain, muc, motion.room, page.nick, page.jid)
        if k is not None:
            out.append(k)
    return out


def kind_counts(motion: Motion, way: str, positions: range | None = None) -> Counter[str]:
    """How many frames of each kind the pages at ``positions`` (default: all) sent or received."""
    total: Counter[str] = Counter()
    for page in motion.pages:
        if positions is None or page.position in positions:
            total.update(reduce(motion, page, way))
    return total


def kind_table(real: Motion, emulated: Motion, way: str) -> list[tuple[str, int, int]]:
    """(kind, real count, emulated count) of every kind where the two differ, biggest difference first."""
    a, b = kind_counts(real, way), kind_counts(emulated, way)
    rows = [(k, a[k], b[k]) for k in a.keys() | b.keys() if a[k] != b[k]]
    return sorted(rows, key=lambda r: (-abs(r[1] - r[2]), r[0]))


# -- the cost command ----------------------------------------------------------------------------


class Beside:
    """A profile's viewers in a child process, on their own lab, at the same time as real pages on another.

    The host's other work moves a server's CPU per join by a third between runs minutes apart (see the
    README), so the two sides run side by side, each on its own fresh lab: the child opens its window when
    the pages' opens (``"go"`` on its standard input) and starts viewer ``k`` when page ``k`` sends its first
    frame (``"k"``), so both servers do the same work at the same moments, under the same load, Chromium's
    included. The child writes its Motion as JSON (or ``{"error": ...}``) to a file. A child: Playwright's
    synchronous API holds the thread while it waits, so gevent's viewers cannot run beside it in one process.
    """

    def __init__(self, lab: Any, room: str, joins: int, interval: float, stay: float, profile: str,
                 join_timeout: float = JOIN_TIMEOUT) -> None:  # fmt: skip
        self.out = Path(tempfile.mkstemp(prefix="locust-xmpp-beside-", suffix=".json")[1])
        spec = {"run_dir": str(lab.run_dir), "room": room, "joins": joins, "interval": interval, "stay": stay,
                "profile": profile, "join_timeout": join_timeout, "out": str(self.out)}  # fmt: skip
        code = "from xmpp_user.fidelity import motion; motion.beside_main()"
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin.fileno()
        with gevent.Timeout(60, False):  # its imports and its lab: ready before the pages open
            self.proc.stdout.readline()

    def signal(self, what: str) -> None:
        try:
            os.write(self._stdin, f"{what}\n".encode())
        except OSError:
            pass  # the child is gone: result() says why

    def result(self, timeout: float) -> Motion:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MotionError(f"the viewers beside the pages did not finish within {timeout:g} s") from None
        try:
            data = json.loads(self.out.read_text())
        except (OSError, ValueError):
            raise MotionError(f"the viewers beside the pages ended ({self.proc.returncode}) without a result") from None
        if "error" in data:
            raise MotionError(data["error"])
        return Motion.from_json(data)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.unlink(missing_ok=True)


def beside_main() -> None:
    """The child of ``Beside``: the viewers on the lab in ``run_dir``, started by the lines on standard input."""
    import locust  # noqa: F401  (gevent's monkey patching, before any socket is made)
    from gevent.fileobject import FileObject

    from xmpp_user.lab.lab import Lab

    spec = json.loads(sys.argv[1])
    started: dict[str, gevent.event.Event] = {w: gevent.event.Event() for w in ["go", *map(str, range(spec["joins"]))]}

    def listen() -> None:
        for line in FileObject(sys.stdin.fileno(), "r"):
            if line.strip() in started:
                started[line.strip()].set()
        for event in started.values():  # the pages ended: nothing more will start
            event.set()

    def start(i: int) -> None:
        if not started[str(i)].wait(spec["join_timeout"]):
            raise MotionError(f"page {i} sent nothing within {spec['join_timeout']:g} s")

    gevent.spawn(listen)
    lab = Lab.from_record(spec["run_dir"])
    print("ready", flush=True)
    try:
        started["go"].wait()
        result = emulated_motion(lab, spec["room"], spec["joins"], spec["interval"], spec["stay"], spec["profile"],
                                 spec["join_timeout"], start).to_json()  # fmt: skip
    except Exception as exc:  # noqa: BLE001  (one line for the parent)
        result = {"error": str(exc) or type(exc).__name__}
    Path(spec["out"]).write_text(json.dumps(result))


@contextmanager
def side_by_side(lab_factory: Callable[[], Any], profile: str, joins: int, interval: float, stay: float,
                 join_timeout: float = JOIN_TIMEOUT) -> Iterator[tuple[Any, str, Beside]]:  # fmt: skip
    """Two fresh labs from ``lab_factory``, each with a seeded room, and ``profile``'s viewers ready on the second
    (``Beside``): yields the first lab, its room and the viewers, whose ``signal`` the first lab's clients give.
    Stops the viewers' child and every lab it started (one by one: a second that fails to start leaves the
    first to stop), however the block ends."""
    labs: list[Any] = []
    try:
        for _ in range(2):
            labs.append(lab_factory())
        rooms = [seed_room(lab.websocket_url, lab.domain, lab.muc_domain) for lab in labs]
        gevent.sleep(1.0)  # the archives' writes settle before the window opens
        beside = Beside(labs[1], rooms[1], joins, interval, stay, profile, join_timeout)
        try:
            yield labs[0], rooms[0], beside
        finally:
            beside.stop()
    finally:
        for lab in labs:
            lab.down()


@dataclass
class CostRun:
    real: Motion
    emulated: Motion

    @property
    def ratio(self) -> float:
        return self.real.ms_per_join / self.emulated.ms_per_join if self.emulated.cpu_seconds else float("inf")


def cost_run(lab_factory: Callable[[], Any], profile: str, joins: int, interval: float, stay: float,
             version: str = converse.VERSION, join_timeout: float = JOIN_TIMEOUT) -> CostRun:  # fmt: skip
    """One run: real pages on a fresh lab and, side by side (``Beside``), the profile's viewers on another."""
    view = VIEWS.get(profile)
    if view is None:
        raise MotionError(f"profile {profile!r} has no real page to compare with (choose from {', '.join(VIEWS)})")
    with side_by_side(lab_factory, profile, joins, interval, stay, join_timeout) as (lab, room, beside):
        real = real_motion(lab, room, joins, interval, stay, view, version, join_timeout, beside.signal)
        emulated = beside.result(timeout=join_timeout + 30)
    return CostRun(real, emulated)


def summary(runs: list[CostRun]) -> dict[str, Any]:
    ratios = [r.ratio for r in runs]
    return {
        "runs": len(runs),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "real_ms_per_join_median": round(statistics.median(r.real.ms_per_join for r in runs), 1),
        "emulated_ms_per_join_median": round(statistics.median(r.emulated.ms_per_join for r in runs), 1),
    }


# -- the recording of real Converse in motion, and the comparison ---------------------------------

MOTION_JOINS, MOTION_INTERVAL, MOTION_STAY = 10, 2.0, 60.0
"""The recorded scene: 10 pages, one every 2 s, staying a minute (two keepalive pings' worth of quiet)."""
TIMING = ("sm:r", "sm:a")
"""Kinds whose count depends on when answers arrive: compared within ``TIMING_FACTOR``."""
TIMING_FACTOR = 2.5
"""How far the stream-management acks may differ: within this factor of the recorded count (and one per page).
The server asks for an ack after a burst of its output when none is outstanding, so the count follows how the
client's requests and the server's answers interleave: close on Prosody, while on ejabberd the emulated
viewer's fast join (60 ms where the page takes 0.5-1 s) draws about 1.9 times the page's requests."""
PINGS = ("iq-get ping domain", "iq-result domain")
"""A keepalive ping and its answer (the only empty result from the domain): within one per page."""
CAPS = ("iq-get disco#info own#caps", "iq-get disco#info domain#caps", "iq-result disco#info#caps")
"""The server's caps queries and their answers: a server asks once per caps hash in its life, so a lab that
met Converse's hash before (another test) asks fewer: at most the recorded number."""


def groups(joins: int) -> dict[str, range]:
    """Page positions compared together: the first page sees every later join; the later ones fewer."""
    return {"first": range(0, 1), "later": range(1, joins)}


def normalise(motion: Motion) -> dict[str, Any]:
    """What the fixture keeps of a run of real pages: per page, the kinds sent (in order) and received
    (counted), without addresses, ids or times."""
    pages = []
    for page in motion.pages:
        pages.append({"position": page.position, "sent": reduce(motion, page, "sent"),
                      "received": dict(sorted(Counter(reduce(motion, page, "received")).items()))})  # fmt: skip
    return {"server": motion.server, "client": motion.client, "joins": motion.joins, "interval": motion.interval,
            "stay": motion.stay, "archive": ARCHIVE, "pages": pages}  # fmt: skip


def compare_motion(recorded: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """How ``ours`` (normalised) differs from the recording beyond the tolerances, one line each."""
    problems = []
    for group, positions in groups(recorded["joins"]).items():
        for way in ("sent", "received"):
            want = _counts(recorded, way, positions)
            got = _counts(ours, way, positions)
            for k in sorted(want.keys() | got.keys()):
                a, b = want[k], got[k]
                if k in TIMING:
                    more, fewer = round(a * (TIMING_FACTOR - 1)), round(a - a / TIMING_FACTOR)
                    slack = max(len(positions), more if b > a else fewer)
                elif k in PINGS:
                    slack = len(positions)
                elif k.startswith(CAPS):
                    slack = a if b <= a else 0
                else:
                    slack = 0
                if abs(a - b) > slack:
                    problems.append(f"{group} page(s) {way} {k}: real Converse {a}, the emulation {b}")
        for r_page, o_page in zip(recorded["pages"], ours["pages"], strict=False):
            if r_page["position"] in positions:
                problems += [f"{group} page {r_page['position']}: {p}" for p in _order(r_page["sent"], o_page["sent"])]
    return problems


def _counts(normalised: dict[str, Any], way: str, positions: range) -> Counter[str]:
    total: Counter[str] = Counter()
    for page in normalised["pages"]:
        if page["position"] in positions:
            total.update(page[way])  # a list of kinds (sent) or a {kind: count} (received)
    return total


def _order(real: list[str], ours: list[str]) -> list[str]:
    """scene.compare's order check alone (pings and acks left out): the milestones one client keeps in order
    and the other inverts. Requests sent together may come in any order."""
    keep = [k for k in real if k not in TIMING and k not in PINGS]
    mine = [k for k in ours if k not in TIMING and k not in PINGS]
    return [p for p in scene.compare(keep, mine) if p.startswith("order:")]


def load_motion_fixture(path: Path = FIXTURE) -> dict[str, Any]:
    return json.loads(path.read_text())
