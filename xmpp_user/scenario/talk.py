"""Groupchat talk with message truth: marked messages out, latency and loss checked on the way in."""

from __future__ import annotations

import time
from typing import Any
from xml.etree.ElementTree import Element

from gevent.event import AsyncResult

from xmpp_user.core import ns
from xmpp_user.core.stanza import bare
from xmpp_user.run.truth import TAG, TALLY, Receiver, Sender, Tally, member_element, member_of, new_member
from xmpp_user.session.client import Pending, XmppClient, XmppRequestFailed
from xmpp_user.session.requests import REQUEST_TYPE
from xmpp_user.session.rooms import Room, normalise_or_same

DELIVERY = "message_delivery"
"""Request name of a delivery: latency from the sender's send to this receiver's receipt."""

_DELAY = ns.clark(ns.DELAY, "delay")


class Talker:
    """Joins rooms as a truth member, sends marked groupchat messages for one user and checks
    the marked ones it receives, by the rules of ``xmpp_user.run.truth``.

    The truth follows the stanzas, not the requests: a message is confirmed by its reflection
    whenever it comes (a ``message`` request that timed out, or that ``cancel_all`` cancelled, still
    awaits it), and a member's time in a room ends with the room's answer to our leave (``leave``
    reads the stream up to it) or, without it, broken. Replayed messages (join history, anything
    stamped with a delay) are not live deliveries and are ignored; archive results never reach
    ``on_message``.
    """

    def __init__(self, client: XmppClient, sender_id: str, request_event: Any = None, tally: Tally = TALLY) -> None:
        self.client = client
        self.tally = tally
        self.sender = Sender(sender_id, tally)
        self.receivers: dict[str, Receiver] = {}
        """Our receiver in each room we joined through ``join``, by room JID, until our time there ends."""
        self._awaiting: dict[int, str] = {}
        """Our messages not reflected yet: room JID by sequence number."""
        self._exits: dict[str, AsyncResult] = {}
        """Set when our time in a room ends (True: our leave was confirmed), for ``leave`` to wait on."""
        self._fire = request_event.fire if request_event is not None else None
        client.on_message.append(self._on_message)
        client.on_room_exit.append(self._on_room_exit)
        client.rooms.tag_of = member_of

    def join(self, room: str, nick: str, *, extra: str = "", **kwargs: Any) -> Pending:
        """``client.muc_join`` as a truth member: other members expect our deliveries from now on."""
        member = new_member(self.sender.sender_id)
        key = normalise_or_same(room)
        old = self.receivers.pop(key, None)
        if old is not None:  # joined again without our time there having ended: nobody read the rest
            self.tally.ended(old.member, False, time.time())
        self.receivers[key] = Receiver(member, self.tally)
        try:
            return self.client.muc_join(room, nick, extra=extra + member_element(member), **kwargs)
        except BaseException:
            self.receivers.pop(key, None)
            raise

    def say(self, room: str, body: str, wait: bool = True) -> Pending:
        """Send a marked message to ``room``; raises XmppRequestFailed (nothing counted) if it
        cannot leave. Once the room reflects it, the members in the room then expect it."""
        state = self.client.room(room)
        marker = self.sender.next_marker(time.time() * 1000.0)
        pending = self.client.groupchat(state.jid, body, extra=marker, wait=False)
        self.tally.sent += 1
        seq = self.sender.seq
        self._awaiting[seq] = state.jid

        def settled(p: Pending) -> None:
            # Only a refusal settles the truth here; a timeout or a cancellation leaves it to the reflection.
            if p.refused and self._awaiting.pop(seq, None) is not None:
                self.tally.unconfirmed += 1

        pending.then = settled
        return self.client.wait(pending) if wait else pending

    def skip(self, count: int = 1) -> None:
        """Planned messages not sent because the user was not connected."""
        self.tally.skipped += count

    def leave(self, room: str, limit: float) -> bool:
        """Leave ``room`` and read our stream until the room confirms it, for up to ``limit`` seconds (the
        ``muc_leave`` request fails at the client's usual timeout all the same). True if our time there
        ended as a clean leave; False if it could not be asked or the answer did not come in time."""
        state = self.client.rooms.get(room)
        if state is None or state.jid not in self.receivers:
            return False
        ended = self._exits.setdefault(state.jid, AsyncResult())
        started = time.monotonic()
        try:
            self.client.requests.wait(self.client.muc_leave(state.jid, wait=False), self.client.timeout)
        except XmppRequestFailed:
            if not self.client.connected:
                return bool(ended.wait(0))
            # Recorded (no answer within the usual timeout): a slower answer is still read below.
        return bool(ended.wait(max(0.0, limit - (time.monotonic() - started))))

    def _on_room_exit(self, room: Room, left: bool) -> None:
        now = time.time()
        receiver = self.receivers.pop(room.jid, None)
        if receiver is not None:
            self.tally.ended(receiver.member, left, now)
        unreflected = [seq for seq, jid in self._awaiting.items() if jid == room.jid]
        for seq in unreflected:
            del self._awaiting[seq]
        if unreflected:
            self.tally.unconfirmed += len(unreflected)
            if not left:  # the room may have routed them before the session ended
                self.tally.uncertain[self.sender.group] += len(unreflected)
        exit_ = self._exits.pop(room.jid, None)
        if exit_ is not None:
            exit_.set(left)

    def _on_message(self, element: Element) -> None:
        marker = element.find(TAG)
        if marker is None or element.get("type") != "groupchat" or element.find(_DELAY) is not None:
            return
        room_jid = bare(element.get("from", ""))
        receiver = self.receivers.get(room_jid)
        if marker.get("s") == self.sender.sender_id:
            self._reflected(marker, room_jid)
        if receiver is None:
            return
        try:
            latency = receiver.receive(marker, time.time() * 1000.0)
        except ValueError:
            return
        if latency is not None and self._fire is not None:
            self._fire(
                request_type=REQUEST_TYPE,
                name=DELIVERY,
                response_time=latency,
                response_length=0,
                exception=None,
                context={},
            )

    def _reflected(self, marker: Element, room_jid: str) -> None:
        """Our own message came back from the room: the members we know now are its receivers."""
        try:
            seq = int(marker.get("n", ""))
        except ValueError:
            return
        jid = self._awaiting.get(seq)
        room = self.client.rooms.get(room_jid)
        if jid is None or room is None or room.jid != jid:
            return
        del self._awaiting[seq]
        self.tally.confirm(room.members, self.sender.group)
