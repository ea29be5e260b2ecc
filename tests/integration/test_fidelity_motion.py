"""The converse-14 viewers in motion against real Converse.js 14 in motion (xmpp_user.fidelity.motion).

The moving scene: a room with a 50-message archive; 10 clients join it one every 2 s and stay a minute after
the last one opened. Early clients see the later ones join; over the minute, stream-management acks and
keepalive pings flow. Real Converse.js 14 was recorded in it on each lab server
(xmpp_user/fidelity/converse-14-motion.json, written by ``locust-xmpp fidelity record --motion``); the test
runs the emulated viewers in the same motion and compares what each page sent and received, by kind, the
first page apart from the later ones, with the tolerances motion.compare_motion writes down (acks within a
factor 2.5, pings within one per page, the server's caps queries at most as often, pipelined requests in any
order).
"""

from __future__ import annotations

import json
from pathlib import Path

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest

from xmpp_user.fidelity import converse, motion
from xmpp_user.lab.lab import Lab


def _scene(recorded: dict) -> tuple[int, float, float]:
    return recorded["joins"], recorded["interval"], recorded["stay"]


def test_converse_14_viewers_in_motion_send_and_receive_what_real_converse_did(lab: Lab) -> None:
    recorded = motion.load_motion_fixture()["servers"][lab.server]
    assert _scene(recorded) == (motion.MOTION_JOINS, motion.MOTION_INTERVAL, motion.MOTION_STAY)
    room = motion.seed_room(lab.websocket_url, lab.domain, lab.muc_domain)
    ours = motion.emulated_motion(lab, room, *_scene(recorded), "converse-14")
    assert ours.failures == []
    assert all(page.joined is not None for page in ours.pages)
    problems = motion.compare_motion(recorded, motion.normalise(ours))
    assert problems == [], "\n".join(problems)


def test_real_converse_in_motion_still_does_what_the_recording_says(lab: Lab, tmp_path: Path) -> None:
    """Real Converse.js 14 pages in headless Chromium, now, on Prosody: the recording still holds."""
    if lab.server != "prosody":
        pytest.skip("one server is enough for the live check (the recording covers both)")
    recorded = motion.load_motion_fixture()["servers"][lab.server]
    room = motion.seed_room(lab.websocket_url, lab.domain, lab.muc_domain)
    try:
        real = motion.real_motion(lab, room, *_scene(recorded), motion.VIEWS["converse-14"])
    except (converse.RecorderError, motion.MotionError) as exc:
        pytest.fail(str(exc), pytrace=False)
    (tmp_path / "motion.json").write_text(json.dumps(real.to_json()))
    problems = motion.compare_motion(recorded, motion.normalise(real))
    assert problems == [], "real Converse changed: run  locust-xmpp fidelity record --motion\n" + "\n".join(problems)
