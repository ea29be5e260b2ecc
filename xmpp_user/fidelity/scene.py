"""The fidelity scene: a room with occupants and an archive, a client joining it, what it sent, compared.

``populated_room`` fills a new lab room: ``OCCUPANTS`` anonymous occupants, each with an avatar in its vCard
and its hash in its presence (as livechat viewers have), the first ``AUTHORS`` of them having posted
``MESSAGES`` messages to the archive. The real client (``converse.record``) or an emulated viewer
(``record_profile``, a client profile of xmpp_user.scenario.profiles driven outside Locust) then joins as ``NICK``,
and ``compare`` tells how the two sequences of request kinds differ beyond the tolerances:

- ``sm:r`` and ``sm:a`` are left out: how many depends on the timing of the answers;
- so is the answer to the server's caps query: a server asks once per caps version and remembers the
  answer, so the second client with Converse's caps in a server's life is not asked;
- requests sent together (pipelined) may come in any order; the steps that wait for an answer must not:
  of the ``MILESTONES``, an order one client always keeps (every A before every B) that the other
  inverts (every B before every A) is a difference;
- every other kind must be sent the same number of times.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent

from xmpp_user.features import vcard
from xmpp_user.fidelity import kinds
from xmpp_user.scenario.profiles import PROFILES
from xmpp_user.session.client import Pending, XmppClient

OCCUPANTS = 30
AUTHORS = 10
MESSAGES = 10
AVATAR_BYTES = 2048
NICK = "Viewer-fidelity"
SETTLE = 4.0
"""Seconds recorded after the join: Converse's last requests (the occupants' vCards) come within 1 s."""
IGNORED = frozenset({"sm:r", "sm:a"})
MILESTONES = (
    "open", "auth:", "bind", "session", "sm:enable", "iq-get disco#info room", "presence global",
    "presence join", "iq-set mam room", "iq-get vcard occupant",
)  # fmt: skip
"""Kinds (prefixes) whose order says how a client paces its login and join: each waits for answers."""
CAPS_ANSWER = "iq-result disco#info#caps"
"""The answer to a caps query, whoever asked (the server, or an occupant on ejabberd)."""
FIXTURE = Path(__file__).with_name("converse-14.json")
"""The normalised recording of real Converse.js 14 in this scene, per lab server (``locust-xmpp fidelity
record`` writes it again)."""


@dataclass
class Scene:
    websocket_url: str
    domain: str
    muc: str
    room: str

    def reduce(self, frames: list[str], own_jid: str | None) -> list[str]:
        out = []
        for frame in frames:
            k = kinds.kind(frame, self.domain, self.muc, self.room, NICK, own_jid)
            if k is None or k in IGNORED or k.startswith(CAPS_ANSWER):
                continue
            out.append(k + _details(k, frame))
        return out


def _details(k: str, frame: str) -> str:
    """What of a join or an archive query changes the server's work: the history it replays, caps (which
    the server may query), an avatar hash; the archive query's data form and page."""
    if k == "presence join":
        d = kinds.join_details(frame)
        history = "default" if d["history"] is None else ",".join(f"{a}={v}" for a, v in sorted(d["history"].items()))
        return f" (history {history}{', caps' if d['caps'] else ''}{', avatar' if d['vcard_update'] else ''})"
    if k == "iq-set mam room":
        d = kinds.mam_details(frame)
        before = "none" if d["before"] is None else repr(d["before"])
        return f" ({'form' if d['form'] else 'no form'}, max {d['max']}, before {before})"
    return ""


@contextmanager
def populated_room(websocket_url: str, domain: str, muc: str, request_event: Any = None) -> Iterator[Scene]:
    """A new room holding OCCUPANTS occupants with avatars and MESSAGES archived messages; gone afterwards."""
    room = f"fidelity-{uuid.uuid4().hex[:10]}@{muc}"
    clients = [XmppClient(websocket_url, domain, request_event=request_event) for _ in range(OCCUPANTS)]
    try:
        for n, client in enumerate(clients):
            client.connect()
            photo = os.urandom(AVATAR_BYTES)
            client.set_vcard(vcard.set_payload(nickname=f"occ{n}", photo=photo))
            client.muc_join(room, f"occ{n}", extra=vcard.update_element(vcard.avatar_hash(photo)))
        for m in range(MESSAGES):
            clients[m % AUTHORS].groupchat(room, f"archived message {m}")
        yield Scene(websocket_url, domain, muc, room)
    finally:
        for client in clients:
            client.abort()


class _Joiner:
    """A ``Joiner``: ``Talker.join`` without the message truth, the scene counts no messages."""

    def __init__(self, client: XmppClient) -> None:
        self.client = client

    def join(self, room: str, nick: str, *, extra: str = "", **kwargs: Any) -> Pending:
        return self.client.muc_join(room, nick, extra=extra, **kwargs)


class EmulatedViewer:
    """A ``Viewer`` (xmpp_user.scenario.viewer) outside Locust: every feature on, no avatar of its own (as an
    anonymous Converse user), no deviations to report."""

    vcards = mam = carbons = disco = True
    mam_max = 50
    visible_occupants: int | None = None
    avatar = b""

    def __init__(self, scene: Scene, profile: str, request_event: Any = None, nick: str = NICK) -> None:
        self.xmpp = XmppClient(scene.websocket_url, scene.domain, request_event=request_event)
        self.domain, self.room, self.nick = scene.domain, scene.room, nick
        self.talker = _Joiner(self.xmpp)
        self.background: list[Pending] = []
        self.profile = PROFILES[profile](self)
        self.profile.configure()

    def avatar_update(self, empty: bool = False) -> str:
        return vcard.EMPTY_UPDATE if empty else ""

    def room_vcard_answered(self, answer: Pending) -> None:
        pass

    def carbons_answered(self, answer: Pending) -> None:
        pass

    def archive_read(self, archive: Pending) -> None:
        pass


@dataclass
class Emulated:
    sent: list[str]
    jid: str


def record_profile(scene: Scene, profile: str, settle: float = 1.0, request_event: Any = None) -> Emulated:
    """Join the scene's room with ``profile``'s viewer; every frame its WebSocket sent until ``settle``
    seconds after the join, then the connection is dropped (as a closed tab)."""
    viewer = EmulatedViewer(scene, profile, request_event)
    sent: list[str] = []
    viewer.xmpp.connection.on_frame_sent.append(sent.append)
    try:
        viewer.xmpp.connect()
        viewer.profile.join()
        gevent.sleep(settle)
        viewer.background = viewer.xmpp.expire(viewer.background)
        return Emulated(sent, viewer.xmpp.jid)
    finally:
        viewer.xmpp.abort()


def compare(real: list[str], ours: list[str]) -> list[str]:
    """The differences between two kind sequences beyond the tolerances, one line each; [] when none."""
    problems = []
    want, got = Counter(real), Counter(ours)
    for k in sorted(want.keys() | got.keys()):
        if want[k] != got[k]:
            problems.append(f"{k}: the real client sent {want[k]}, the emulation {got[k]}")
    span_real, span_ours = _spans(real), _spans(ours)
    common = sorted(k for k in span_real.keys() & span_ours.keys() if k.startswith(MILESTONES))
    for a in common:
        for b in common:
            if a != b and span_real[a][1] < span_real[b][0] and span_ours[b][1] < span_ours[a][0]:
                problems.append(f"order: the real client sends every {a} before any {b}, the emulation after")
    return problems


def _spans(sequence: list[str]) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    for i, k in enumerate(sequence):
        first, _ = spans.get(k, (i, i))
        spans[k] = (first, i)
    return spans


def load_fixture(path: Path = FIXTURE) -> dict[str, Any]:
    return json.loads(path.read_text())


def fixture_entry(server: str, sequence: list[str], version: str) -> dict[str, Any]:
    return {
        "server": server, "converse": version, "occupants": OCCUPANTS, "authors": AUTHORS, "messages": MESSAGES,
        "avatar_bytes": AVATAR_BYTES, "settle_seconds": SETTLE, "viewport": [1280, 800], "kinds": sequence,
    }  # fmt: skip
