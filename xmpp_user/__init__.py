"""locust-xmpp: XMPP-over-WebSocket users for Locust.

Layers, from the bottom up:

- ``xmpp_user.core``: the protocol with no I/O (framing, stream negotiation, SASL, bind,
  IQ correlation). Feed it frames, read events and frames to send.
- ``xmpp_user.features``: one small module per XMPP feature (disco, roster, carbons, vcard,
  muc, mam, ping, register): stanza builders and reply parsers, still no I/O.
- ``xmpp_user.transport``: websocket-client under gevent.
- ``xmpp_user.client``: drives the core over the transport and fires one Locust request
  event per round trip.
- ``xmpp_user.user``: the abstract Locust ``XmppUser`` and its command-line options.
"""

from __future__ import annotations

from xmpp_user.client import Pending, Room, XmppClient, XmppRequestFailed
from xmpp_user.core.stream import Credentials

__all__ = ["Credentials", "Pending", "Room", "XmppClient", "XmppRequestFailed", "XmppUser"]


def __getattr__(name: str):
    # XmppUser is imported lazily: importing Locust's User registers options and monkey-patches.
    if name == "XmppUser":
        from xmpp_user.user import XmppUser

        return XmppUser
    raise AttributeError(name)
