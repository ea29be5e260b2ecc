"""Generic stanza building and error reading, shared by the feature modules."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_attr

_STANZA_ERROR_PREFIX = "{" + ns.STANZA_ERRORS + "}"


def iq(type_: str, id_: str, payload: str = "", to: str | None = None, frm: str | None = None) -> str:
    to_attr = f" to='{escape_attr(to)}'" if to else ""
    if frm:  # most clients leave 'from' to the server; a browser's library may write it (see StreamSettings.ids)
        to_attr = f" from='{escape_attr(frm)}'{to_attr}"
    if payload:
        return f"<iq xmlns='jabber:client' type='{type_}' id='{id_}'{to_attr}>{payload}</iq>"
    return f"<iq xmlns='jabber:client' type='{type_}' id='{id_}'{to_attr}/>"


def stanza_error(element: Element) -> tuple[str, str]:
    """(condition, text) of a stanza of type 'error'; ('undefined-condition', '') if it has none."""
    error = element.find(ns.ERROR)
    if error is None:
        return "undefined-condition", ""
    condition, text = "undefined-condition", ""
    for child in error:
        if child.tag == ns.TEXT_STANZA:
            text = child.text or ""
        elif child.tag.startswith(_STANZA_ERROR_PREFIX):
            condition = child.tag[len(_STANZA_ERROR_PREFIX) :]
    return condition, text


def bare(jid: str) -> str:
    """The bare JID (local@domain) of a full JID; cheap enough for the hot path."""
    slash = jid.find("/")
    return jid if slash < 0 else jid[:slash]


def resource(jid: str) -> str:
    slash = jid.find("/")
    return "" if slash < 0 else jid[slash + 1 :]
