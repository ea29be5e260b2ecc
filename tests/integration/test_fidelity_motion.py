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
import re
import time
from collections import Counter
from pathlib import Path
from xml.etree.ElementTree import canonicalize

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest

from xmpp_user.fidelity import converse, motion
from xmpp_user.lab.lab import Lab

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_WS20, _WS24, _WS16 = "\n" + " " * 20, "\n" + " " * 24, "\n" + " " * 16
_DISCO = '<iq xmlns="jabber:client" from="FULL" id="UUID:sendIQ" to="{to}" type="get"><query xmlns="{ns}">{ws}</query>'
_CAPS = ('<c xmlns="http://jabber.org/protocol/caps" hash="sha-1" node="https://conversejs.org" '
         'ver="MarGFLKSS3ltZoL5//XHmrF42Wc="></c>')  # fmt: skip
CONVERSE_STANZAS = {
    '<iq xmlns="jabber:client" id="_bind_auth_2" type="set"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"></bind>'
    "</iq>",
    '<iq xmlns="jabber:client" id="_session_auth_2" type="set"><session xmlns="urn:ietf:params:xml:ns:xmpp-session">'
    "</session></iq>",
    '<iq xmlns="jabber:client" from="BARE" id="UUID:sendIQ" to="BARE" type="get"><pubsub xmlns="http://jabber.org/'
    'protocol/pubsub"><items max_items="1" node="urn:xmpp:reactions:popular:0"></items></pubsub></iq>',
    *(_DISCO.format(to=to, ns="http://jabber.org/protocol/disco#info", ws=_WS20) + "</iq>"
      for to in ("localhost", "ROOM", "muc.localhost", "reg.localhost", "scram.localhost")),
    *(_DISCO.format(to=to, ns="http://jabber.org/protocol/disco#items", ws=_WS24) + "</iq>"
      for to in ("localhost", "reg.localhost", "scram.localhost")),
    '<iq xmlns="jabber:client" from="FULL" id="UUID:sendIQ" type="set"><enable xmlns="urn:xmpp:carbons:2"></enable>'
    "</iq>",
    '<iq xmlns="jabber:client" id="UUID" to="ROOM" type="set"><query xmlns="urn:xmpp:mam:2" queryid="UUID"><set '
    'xmlns="http://jabber.org/protocol/rsm"><before></before><max>50</max></set></query></iq>',
    '<iq xmlns="jabber:client" id="UUID" type="get"><blocklist xmlns="urn:xmpp:blocking"></blocklist></iq>',
    '<iq xmlns="jabber:client" id="UUID:ping" to="localhost" type="get"><ping xmlns="urn:xmpp:ping"></ping></iq>',
    f'<iq xmlns="jabber:client" id="UUID:roster" type="get"><query xmlns="jabber:iq:roster">{_WS16}</query></iq>',
    '<iq xmlns="jabber:client" id="UUID:sendIQ" to="ROOM" type="get"><query xmlns="http://jabber.org/protocol/'
    'disco#info" node="x-roomuser-item"></query></iq>',
    '<iq xmlns="jabber:client" id="UUID:sendIQ" to="ROOM" type="get"><query xmlns="jabber:iq:register"></query></iq>',
    '<iq xmlns="jabber:client" id="UUID:sendIQ" to="ROOM" type="get"><vCard xmlns="vcard-temp"></vCard></iq>',
    '<iq xmlns="jabber:client" id="UUID:sendIQ" to="ROOM/NICK" type="get"><vCard xmlns="vcard-temp"></vCard></iq>',
    '<iq xmlns="jabber:client" id="UUID:sendIQ" type="get"><vCard xmlns="vcard-temp"></vCard></iq>',
    '<presence xmlns="jabber:client" from="FULL" id="UUID" to="ROOM/NICK"><x xmlns="http://jabber.org/protocol/muc">'
    f'<history maxstanzas="0"></history></x>{_CAPS}</presence>',
    f'<presence xmlns="jabber:client"><priority>0</priority><x xmlns="vcard-temp:x:update"></x>{_CAPS}</presence>',
}  # fmt: skip
"""Every stanza real Converse 14 pages sent in the moving scene on the lab Prosody (20 pages, 2 s apart), in
canonical XML (C14N 2.0: attributes sorted, double quotes, no empty-element tags), their UUIDs, JIDs, room and
nicknames masked; its whitespace kept. Left out: its one answer to the server's caps query."""


def _masked(frame: str, jid: str, room: str) -> str:
    text = _UUID.sub("UUID", canonicalize(frame)).replace(jid, "FULL").replace(jid.split("/")[0], "BARE")
    return re.sub(r'"ROOM/[^"]+"', '"ROOM/NICK"', text.replace(room, "ROOM"))


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


def test_converse_14_viewers_write_their_stanzas_as_converse_does(lab: Lab) -> None:
    """Byte for byte but for UUIDs and JIDs: Converse's ids (a UUID4, with ':sendIQ', ':roster' or ':ping' or
    none), its 'from' where it writes one, its fixed login ids, the indentation inside its queries. The server
    parses, checks and echoes all of it, so it is part of what a page costs (xmpp_user.fidelity.motion)."""
    if lab.server != "prosody":
        pytest.skip("the stanzas were recorded on Prosody (its domain has the items Converse queries)")
    room = motion.seed_room(lab.websocket_url, lab.domain, lab.muc_domain)
    ours = motion.emulated_motion(lab, room, 2, 1.0, 2.0, "converse-14")
    assert ours.failures == []
    shapes: set[str] = set()
    for page in ours.pages:
        for _, frame in page.sent:
            if frame.startswith(("<iq", "<presence")) and "type='result'" not in frame:
                shapes.add(_masked(frame, page.jid, room))
    assert shapes - CONVERSE_STANZAS == set()
    assert len(shapes) >= 20  # every kind of its join, an occupant's vCard and the room's on their presence


def test_viewers_beside_the_pages_start_when_each_page_sends_its_first_frame(lab: Lab) -> None:
    """``Beside``: viewer k starts when told page k sent its first frame, not by the clock (an interval of 0
    would start both at once)."""
    if lab.server != "prosody":
        pytest.skip("the child process does the same on either server")
    room = motion.seed_room(lab.websocket_url, lab.domain, lab.muc_domain)
    beside = motion.Beside(lab, room, 2, 0.0, 1.0, "converse-14", join_timeout=30)
    try:
        beside.signal("go")
        beside.signal("0")
        time.sleep(2.0)
        beside.signal("1")
        ours = beside.result(timeout=60)
    finally:
        beside.stop()
    assert [page.nick for page in ours.pages] == ["Viewer-00", "Viewer-01"]
    assert all(page.joined is not None for page in ours.pages)
    assert ours.pages[0].opened < ours.pages[1].opened  # in the order told (no bound on how fast: not timed)
    assert ours.pages[1].opened >= 1.5  # the signal came 2 s after "go"; its delivery may lag "go"'s a little


def test_viewers_beside_the_pages_say_in_one_line_why_they_could_not_start(lab: Lab) -> None:
    if lab.server != "prosody":
        pytest.skip("the child process does the same on either server")
    beside = motion.Beside(lab, f"nowhere@{lab.muc_domain}", 1, 0.0, 1.0, "no-such-profile", join_timeout=5)
    try:
        beside.signal("go")
        beside.signal("0")
        with pytest.raises(motion.MotionError) as error:
            beside.result(timeout=60)
    finally:
        beside.stop()
    assert "\n" not in str(error.value) and "no-such-profile" in str(error.value)


def test_converse_14_viewers_fetch_the_occupant_avatars_twenty_real_pages_fetched(lab: Lab) -> None:
    """20 joining one by one (1280x800): real Converse 14 pages fetched, page by page, 17 occupant vCards (those
    in the room then fetch each joiner but the one landing on the 18th row), 18 for the 18th page and 19 for the
    last two (18 rows of others on screen, and the archive's author), on both lab servers, in every one of
    five runs of ``fidelity cost``. The 10-page recording cannot see the 18th row."""
    room = motion.seed_room(lab.websocket_url, lab.domain, lab.muc_domain)
    ours = motion.emulated_motion(lab, room, 20, 1.0, 1.0, "converse-14")  # each in before the next
    assert ours.failures == []
    fetched = [Counter(motion.reduce(ours, page, "sent"))["iq-get vcard occupant"] for page in ours.pages]
    assert fetched == [17] * 17 + [18, 19, 19]
