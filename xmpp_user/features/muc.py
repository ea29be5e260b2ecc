"""Multi-user chat (XEP-0045): join, leave, nick change, groupchat, occupant presence."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_attr, escape_text

SELF_PRESENCE = "110"
"""Status code of the presence that tells a joining occupant it is in the room."""
ROOM_CREATED = "201"
"""Status code telling the occupant that its join created the room."""
NICK_CHANGED = "303"
"""Status code of the unavailable presence that announces a nickname change."""
INSTANT_ROOM = f"<query xmlns='{ns.MUC_OWNER}'><x xmlns='{ns.DATA_FORMS}' type='submit'/></query>"
"""The owner's answer that accepts a new room's default configuration (XEP-0045 section 10.1.2)."""

_X_USER = ns.clark(ns.MUC_USER, "x")
_STATUS = ns.clark(ns.MUC_USER, "status")
_ITEM = ns.clark(ns.MUC_USER, "item")


def join(room: str, nick: str, history_max: int | None = None, extra: str = "", id_: str = "", frm: str = "") -> str:
    """Join presence to ``room/nick``; without ``history_max`` the room's default history is sent. ``frm``: our
    JID as the presence's 'from' (some clients write it; the server checks it)."""
    history = f"<history maxstanzas='{int(history_max)}'/>" if history_max is not None else ""
    id_attr = f" id='{id_}'" if id_ else ""
    if frm:
        id_attr = f" from='{escape_attr(frm)}'{id_attr}"
    return (
        f"<presence xmlns='jabber:client' to='{escape_attr(room)}/{escape_attr(nick)}'{id_attr}>"
        f"<x xmlns='{ns.MUC}'>{history}</x>{extra}</presence>"
    )


def leave(room: str, nick: str, status: str = "") -> str:
    body = f"<status>{escape_text(status)}</status>" if status else ""
    return (
        f"<presence xmlns='jabber:client' type='unavailable' to='{escape_attr(room)}/{escape_attr(nick)}'>"
        f"{body}</presence>"
        if body
        else f"<presence xmlns='jabber:client' type='unavailable' to='{escape_attr(room)}/{escape_attr(nick)}'/>"
    )


def change_nick(room: str, new_nick: str) -> str:
    return f"<presence xmlns='jabber:client' to='{escape_attr(room)}/{escape_attr(new_nick)}'/>"


def groupchat(room: str, body: str, id_: str, extra: str = "") -> str:
    return (
        f"<message xmlns='jabber:client' type='groupchat' to='{escape_attr(room)}' id='{id_}'>"
        f"<body>{escape_text(body)}</body>{extra}</message>"
    )


def status_codes(presence: Element) -> set[str]:
    x = presence.find(_X_USER)
    if x is None:
        return set()
    return {s.get("code", "") for s in x.iterfind(_STATUS)}


def new_nick(presence: Element) -> str:
    """The new nickname announced by an unavailable presence with status 303."""
    x = presence.find(_X_USER)
    item = x.find(_ITEM) if x is not None else None
    return item.get("nick", "") if item is not None else ""
