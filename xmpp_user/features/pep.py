"""Personal eventing (XEP-0163) reads: the items of one node of our own PEP service."""

from __future__ import annotations

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_attr

REACTIONS_POPULAR = "urn:xmpp:reactions:popular:0"
"""The node where Converse.js keeps the emoji reactions its user picks most often."""


def items(node: str, max_items: int = 1) -> str:
    return f"<pubsub xmlns='{ns.PUBSUB}'><items node='{escape_attr(node)}' max_items='{int(max_items)}'/></pubsub>"
