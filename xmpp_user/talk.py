"""Groupchat talk with message truth: marked messages out, latency and loss checked on the way in."""

from __future__ import annotations

import time
from typing import Any
from xml.etree.ElementTree import Element

from xmpp_user.client import Pending, XmppClient
from xmpp_user.core import ns
from xmpp_user.core.stanza import bare
from xmpp_user.requests import REQUEST_TYPE
from xmpp_user.rooms import Room, normalise_or_same
from xmpp_user.truth import TAG, TALLY, Receiver, Sender, Tally, member_element, member_of, new_member

DELIVERY = "message_delivery"
"""Request name of a delivery: latency from the sender's send to this receiver's receipt."""

_DELAY = ns.clark(ns.DELAY, "delay")


class Talker:
    """Joins rooms as a truth member, sends marked groupchat messages for one user and checks
    the marked ones it receives (see ``xmpp_user.truth``).

    Replayed messages (join history, anything stamped with a delay) are not live deliveries
    and are ignored; archive results never reach ``on_message``.
    """

    def __init__(self, client: XmppClient, sender_id: str, request_event: Any = None, tally: Tally = TALLY) -> None:
        self.client = client
        self.tally = tally
        self.sender = Sender(sender_id, tally)
        self.receivers: dict[str, Receiver] = {}
        """Our receiver in each room we joined through ``join``, by room JID."""
        self._fire = request_event.fire if request_event is not None else None
        client.on_message.append(self._on_message)
        client.on_room_exit.append(self._on_room_exit)
        client.rooms.tag_of = member_of

    def join(self, room: str, nick: str, *, extra: str = "", **kwargs: Any) -> Pending:
        """``client.muc_join`` as a truth member: other members expect our deliveries from now on."""
        member = new_member(self.sender.sender_id)
        key = normalise_or_same(room)
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
        pending = self.client.groupchat(room, body, extra=self.sender.next_marker(time.time() * 1000.0), wait=False)
        self.tally.sent += 1
        group = self.sender.group

        def settled(p: Pending) -> None:
            if p.ok:
                self.tally.confirm(state.members, group)
            else:
                self.tally.unconfirmed += 1

        pending.then = settled
        return self.client.wait(pending) if wait else pending

    def skip(self, count: int = 1) -> None:
        """Planned messages not sent because the user was not connected."""
        self.tally.skipped += count

    def _on_room_exit(self, room: Room, clean: bool) -> None:
        receiver = self.receivers.pop(room.jid, None)
        if receiver is not None and not clean:
            self.tally.broken.add(receiver.member)

    def _on_message(self, element: Element) -> None:
        marker = element.find(TAG)
        if marker is None or element.get("type") != "groupchat" or element.find(_DELAY) is not None:
            return
        receiver = self.receivers.get(bare(element.get("from", "")))
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
