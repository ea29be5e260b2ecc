"""What our WebSocket users did, checked from outside by an independent client: slixmpp over
TCP c2s, in its own process (tests/integration/observer.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import slixmpp

from xmpp_user.client import XmppClient
from xmpp_user.talk import Talker
from xmpp_user.truth import Tally

OBSERVER = Path(__file__).with_name("observer.py")


class Events:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.failures: list[str] = []

    def fire(self, name: str, exception=None, **_kw) -> None:
        self.names.append(name)
        if exception is not None:
            self.failures.append(f"{name}: {exception}")


def test_messages_reach_room_and_archive_seen_by_slixmpp(lab, tmp_path: Path) -> None:
    room = f"obs-{uuid.uuid4().hex[:8]}@{lab.muc_domain}"
    out = tmp_path / "observer.json"
    observer = subprocess.Popen(
        [sys.executable, str(OBSERVER), "127.0.0.1", str(lab.c2s_address[1]), lab.domain, room, "3", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert observer.stdout.readline().strip() == "joined", observer.stderr.read()[-2000:]
        events, tally = Events(), Tally()
        sender = XmppClient(lab.websocket_url, lab.domain, request_event=events)
        sender.connect()
        talker = Talker(sender, "obs-sender", events, tally)
        sender.muc_join(room, "sender")
        assert sender.rooms[room].occupants == {"sender", "observer"}
        bodies = [f"checked message {i}" for i in range(10)]
        for body in bodies:
            talker.say(room, body)
        sender.muc_leave(room)
        sender.close()
        observer.wait(timeout=30)
        seen = json.loads(out.read_text())
    finally:
        observer.kill()
    assert events.failures == []
    # Our counters: 10 sent, each expected at 2 occupants, delivered to us (the reflection) once.
    assert tally.summary() == {
        "sent": 10, "expected": 20, "delivered": 10, "duplicated": 0, "out_of_order": 0, "lost": 10,
    }  # fmt: skip
    # The observer is the other expected receiver: what it saw makes up the 10 "lost" above.
    assert [m["body"] for m in seen["live"]] == bodies
    assert {m["from"] for m in seen["live"]} == {f"{room}/sender"}
    assert seen["archived"][-10:] == bodies
    # Our bound JID is a valid JID to slixmpp too.
    jid = slixmpp.JID(sender.jid)
    assert (jid.domain, jid.full) == (lab.domain, sender.jid) and jid.resource
