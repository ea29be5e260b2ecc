"""The converse-14 viewer against real Converse.js 14, configured as the PeerTube livechat plugin runs it.

The scene (xmpp_user.fidelity.scene): a new lab room with 30 occupants that have avatars, 10 of whom
posted the 10 messages of its archive. A client joins it as ``Viewer-fidelity`` and what it sends is
reduced to request kinds (xmpp_user.fidelity.kinds), with the join's history and the archive query's
form in the kind. Real Converse.js is installed from npm into ``~/.cache/locust-xmpp`` on the first run
and runs in headless Chromium (Playwright); its recording is also checked in
(xmpp_user/fidelity/converse-14.json, written by ``locust-xmpp fidelity record``), so the emulation is
compared with it even where no browser runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from recorder import Recorder

from xmpp_user.fidelity import converse, kinds, scene
from xmpp_user.lab.lab import Lab


def _fail(problem: str) -> None:
    pytest.fail(problem, pytrace=False)


def _emulated(lab: Lab, profile: str) -> list[str]:
    rec = Recorder()
    with scene.populated_room(lab.websocket_url, lab.domain, lab.muc_domain, rec) as room:
        emulated = scene.record_profile(room, profile, request_event=rec)
        sequence = room.reduce(emulated.sent, emulated.jid)
    assert rec.failures == [], rec.failures
    return sequence


def test_the_converse_14_viewer_sends_what_real_converse_sent(lab: Lab) -> None:
    """Against the checked-in recording: no browser needed."""
    fixture = scene.load_fixture()
    assert fixture["converse"] == converse.VERSION
    recorded = fixture["servers"][lab.server]
    assert (recorded["occupants"], recorded["messages"]) == (scene.OCCUPANTS, scene.MESSAGES)
    ours = _emulated(lab, "converse-14")
    assert scene.compare(recorded["kinds"], ours) == []


def test_real_converse_still_sends_what_the_fixture_and_the_viewer_send(lab: Lab, tmp_path: Path) -> None:
    """Real Converse.js in headless Chromium, now: the fixture is still what it does, and the converse-14
    viewer still matches it. Its join and archive query are read in detail."""
    with scene.populated_room(lab.websocket_url, lab.domain, lab.muc_domain) as room:
        try:
            recording = converse.record(lab.websocket_url, room.room, scene.NICK, seconds=scene.SETTLE,
                                        domain=lab.domain, screenshot=tmp_path / "converse.png")  # fmt: skip
        except converse.RecorderError as exc:
            _fail(str(exc))
    (tmp_path / "recording.json").write_text(json.dumps(recording.to_json(), indent=1))
    real = room.reduce(recording.sent_frames(), recording.jid)
    print(f"\n{lab.server}: {len(recording.sent)} frames sent, {len(recording.received)} received, "
          f"joined at {recording.joined_ms} ms:\n" + "\n".join(real))  # fmt: skip

    # Login: anonymous SASL, the stream restarted, a resource bound, the legacy session, resumable SM.
    assert real[:6] == ["open", "auth:ANONYMOUS", "open", "bind", "session", "sm:enable resume"], real
    # Joins once, after its global presence and the reserved-nick answer, asking for no history, with caps.
    assert real.count("presence join (history maxstanzas=0, caps)") == 1, real
    join_at = real.index("presence join (history maxstanzas=0, caps)")
    for before in ("presence global", "iq-get disco#info room#x-roomuser-item", "iq-get disco#info room"):
        assert real.index(before) < join_at, (before, real)
    # Then the archive's last page without a data form, and every archived message arrives.
    assert real.index("iq-set mam room (no form, max 50, before '')") > join_at
    received = recording.received_frames()
    assert kinds.archived_count(received) >= scene.MESSAGES
    assert [fin.get("complete") for fin in kinds.mam_fin(received)] == ["true"]
    assert not any(k.startswith("message ") for k in real), real  # a viewer says nothing
    assert "unparsed" not in real

    recorded = scene.load_fixture()["servers"][lab.server]["kinds"]
    assert scene.compare(recorded, real) == [], "real Converse changed: run  locust-xmpp fidelity record"
    assert scene.compare(real, _emulated(lab, "converse-14")) == []
