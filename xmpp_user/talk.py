"""Groupchat talk with message truth: marked messages out, latency and loss checked on the way in."""

from __future__ import annotations

import time
from typing import Any
from xml.etree.ElementTree import Element

from xmpp_user.client import REQUEST_TYPE, Pending, XmppClient
from xmpp_user.core import ns
from xmpp_user.truth import TAG, TALLY, Receiver, Sender, Tally

DELIVERY = "message_delivery"
"""Request name of a delivery: latency from the sender's send to this receiver's receipt."""

_DELAY = ns.clark(ns.DELAY, "delay")


class Talker:
    """Sends marked groupchat messages for one user and checks the marked ones it receives.

    Replayed messages (join history, anything stamped with a delay) are not live deliveries
    and are ignored; archive results never reach ``on_message``.
    """

    def __init__(self, client: XmppClient, sender_id: str, request_event: Any = None, tally: Tally = TALLY) -> None:
        self.client = client
        self.sender = Sender(sender_id, tally)
        self.receiver = Receiver(tally)
        self._fire = request_event.fire if request_event is not None else None
        client.on_message.append(self._on_message)

    def say(self, room: str, body: str, wait: bool = True) -> Pending:
        """Send to ``room``; every occupant we know of, ourselves included, should receive it."""
        state = self.client.rooms.get(room)
        expected = len(state.occupants) if state is not None else 1
        marker = self.sender.next_marker(time.time() * 1000.0, expected)
        return self.client.groupchat(room, body, extra=marker, wait=wait)

    def _on_message(self, element: Element) -> None:
        marker = element.find(TAG)
        if marker is None or element.get("type") != "groupchat" or element.find(_DELAY) is not None:
            return
        try:
            latency = self.receiver.receive(marker, time.time() * 1000.0)
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
