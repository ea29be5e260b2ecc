"""``locust-xmpp fidelity record | compare | cost``: each starts its own lab server(s) on free loopback ports.

``record`` joins the scene's room with real Converse.js and writes the normalised sequences (one per lab
server) to the fixture that tests compare against, so a new Converse release is one command away:
``locust-xmpp fidelity record --converse 14.1.0``. ``compare`` joins it with a client profile and prints
how it differs from the fixture (or, with ``--live``, from real Converse recorded there and then). ``cost``
runs the moving scene (xmpp_user.fidelity.motion): the server's CPU per join of real pages and of a profile's
viewers.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import locust  # noqa: F401  (gevent's monkey patching, before any socket is made)

from xmpp_user.fidelity import converse, motion, scene
from xmpp_user.lab.lab import Lab, free_port


def _lab(server: str, root: str) -> Lab:
    lab = Lab(Path(root) / server, c2s_port=free_port(), http_port=free_port(), server=server, rooms="persistent")
    reason = lab.unavailable()
    if reason:
        raise converse.RecorderError(reason)
    lab.up()
    return lab


def record_real(lab: Lab, version: str = converse.VERSION) -> list[str]:
    """Real Converse's kinds in a new scene on ``lab``."""
    with scene.populated_room(lab.websocket_url, lab.domain, lab.muc_domain) as room:
        recording = converse.record(lab.websocket_url, room.room, scene.NICK, seconds=scene.SETTLE,
                                    domain=lab.domain, version=version)  # fmt: skip
        return room.reduce(recording.sent_frames(), recording.jid)


def record_emulated(lab: Lab, profile: str) -> list[str]:
    """The kinds of ``profile``'s viewer in a new scene on ``lab``."""
    with scene.populated_room(lab.websocket_url, lab.domain, lab.muc_domain) as room:
        emulated = scene.record_profile(room, profile)
        return room.reduce(emulated.sent, emulated.jid)


def record(servers: list[str], out: Path, version: str = converse.VERSION) -> dict[str, Any]:
    """Record real Converse on each server's fresh lab; write and return the fixture."""
    fixture: dict[str, Any] = {"converse": version, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="locust-xmpp-fidelity-") as root:
        for server in servers:
            lab = _lab(server, root)
            try:
                kinds = record_real(lab, version)
            finally:
                lab.down()
            fixture["servers"][server] = scene.fixture_entry(server, kinds, version)
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    return fixture


def compare(servers: list[str], profile: str, live: bool, fixture: Path = scene.FIXTURE) -> dict[str, list[str]]:
    """Per server, the differences between ``profile`` and real Converse (the fixture's, or recorded now)."""
    recorded = scene.load_fixture(fixture)["servers"] if not live else {}
    problems: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="locust-xmpp-fidelity-") as root:
        for server in servers:
            lab = _lab(server, root)
            try:
                real = record_real(lab) if live else recorded[server]["kinds"]
                problems[server] = scene.compare(real, record_emulated(lab, profile))
            finally:
                lab.down()
    return problems


def cost(server: str, profile: str, joins: int, interval: float, stay: float, runs: int,
         out: Callable[[str], None] = print) -> tuple[list[motion.CostRun], dict[str, Any]]:  # fmt: skip
    """``runs`` runs of the moving scene (real pages and, side by side, ``profile``'s viewers, each on a fresh
    lab: motion.Beside); prints a line per run as it ends and returns the runs and their summary."""
    done: list[motion.CostRun] = []
    labs = itertools.count()
    with tempfile.TemporaryDirectory(prefix="locust-xmpp-fidelity-") as root:
        for n in range(runs):
            run = motion.cost_run(lambda: _lab(server, f"{root}/{next(labs)}"), profile, joins, interval, stay)
            done.append(run)
            r, e = run.real, run.emulated
            out(f"run {n + 1}/{runs}: real {r.ms_per_join:.1f} ms/join, {profile} {e.ms_per_join:.1f} ms/join, "
                f"ratio {run.ratio:.2f}; frames per join sent {r.frames_per_join('sent'):.0f} / "
                f"{e.frames_per_join('sent'):.0f}, received {r.frames_per_join('received'):.0f} / "
                f"{e.frames_per_join('received'):.0f}; load average {r.load_average[0]:.2f} / "
                f"{e.load_average[0]:.2f}")  # fmt: skip
            if e.failures:
                out(f"  {len(e.failures)} request(s) of the {profile} viewers failed, the first: {e.failures[0]}")
    return done, motion.summary(done)


def record_motion(servers: list[str], out: Path, version: str = converse.VERSION) -> dict[str, Any]:
    """Record real Converse in the moving scene (motion.MOTION_*) on each server's fresh lab; write and return
    the fixture."""
    fixture: dict[str, Any] = {"converse": version, "servers": {}}
    view = motion.VIEWS["converse-14"]
    with tempfile.TemporaryDirectory(prefix="locust-xmpp-fidelity-") as root:
        for server in servers:
            lab = _lab(server, root)
            try:
                room = motion.seed_room(lab.websocket_url, lab.domain, lab.muc_domain)
                real = motion.real_motion(lab, room, motion.MOTION_JOINS, motion.MOTION_INTERVAL, motion.MOTION_STAY,
                                          view, version)  # fmt: skip
            finally:
                lab.down()
            fixture["servers"][server] = {**motion.normalise(real), "viewport": list(view.viewport)}
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    return fixture
