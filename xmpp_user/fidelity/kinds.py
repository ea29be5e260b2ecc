"""Reduce XMPP-over-WebSocket frames (RFC 7395) to short, stable "request kinds"; pure functions, no I/O.

``kind(frame, domain, muc, room, own_nick)`` names what ONE frame a client sent asks for, with symbolic
targets instead of real addresses, so that two clients' sequences compare even though their JIDs, ids and
nicknames differ:

====================================  ==========================================================
kind                                  frame
====================================  ==========================================================
``open`` / ``close``                  ``<open/>`` / ``<close/>`` of the framing namespace
``auth:ANONYMOUS``, ``auth:response``  SASL ``<auth mechanism=.../>``, ``<response/>``
``bind``, ``session``                 the resource binding and (legacy) session iqs
``sm:enable resume``, ``sm:enable``   XEP-0198 ``<enable/>`` (with or without resume='true')
``sm:r``, ``sm:a``, ``sm:resume``     XEP-0198 ack request, ack, resumption
``iq-get disco#info domain``          an iq: ``iq-<type> <payload> <target>``; the target is left
``iq-get disco#info room#x-roomuser-item``   out when the iq has no ``to`` (but ``vcard own``); a
``iq-get vcard own|room|occupant``    disco node is appended as ``#node`` (``#caps`` for a caps
``iq-get roster``, ``iq-set carbons``  node, which is a URL)
``iq-get pubsub <node>``              a pubsub ``<items node=.../>`` (PEP when it has no ``to``)
``iq-result domain``                  an answer to the server's iq (ping), ``iq-result <payload>
                                      <target>`` when it holds a payload (disco#info, version)
``presence global``                   an available presence without ``to`` (the initial presence)
``presence unavailable``              the same with type='unavailable'
``presence join``                     to room/nick holding the MUC ``<x/>``
``presence room``                     to room/nick without it (status or nick change)
``presence unavailable room``         leaving the room
``message groupchat``                 a groupchat with a body; ``message groupchat chat-state``,
                                      ``message groupchat marker`` without
====================================  ==========================================================

Targets: ``domain`` (the server), ``item`` (another JID of the server's domain part only, e.g. the MUC
service), ``room``, ``own-occupant`` (room/own_nick), ``occupant`` (room/another nick), ``own`` (our bare
JID: a bare ``user@domain`` when ``own_jid`` is not given), ``user`` (someone else's), ``other`` (anything
else). A frame that is only whitespace (a keepalive) has no kind: ``None``.

``join_details``, ``mam_details`` read what matters in a join presence and in an archive query
(``scene.Scene.reduce`` applies all of it to a whole recording).
"""

from __future__ import annotations

from collections.abc import Iterable
from xml.etree.ElementTree import Element, ParseError, fromstring

from xmpp_user.core import ns
from xmpp_user.core.stanza import bare, resource

CAPS, SESSION, BLOCKING, PUBSUB = ns.CAPS, ns.SESSION, ns.BLOCKING, ns.PUBSUB
# Namespaces that xmpp_user.core.ns does not name (only the fidelity code needs them).
CHATSTATES = "http://jabber.org/protocol/chatstates"
MARKERS = "urn:xmpp:chat-markers:0"
RECEIPTS = "urn:xmpp:receipts"
MAM_FIN = ns.clark(ns.MAM, "fin")

PAYLOAD_NAMES = {
    ns.DISCO_INFO: "disco#info",
    ns.DISCO_ITEMS: "disco#items",
    ns.ROSTER: "roster",
    ns.VCARD: "vcard",
    ns.MAM: "mam",
    ns.CARBONS: "carbons",
    ns.PING: "ping",
    ns.REGISTER: "register",
    ns.MUC_OWNER: "muc#owner",
    ns.MUC + "#admin": "muc#admin",
    BLOCKING: "blocklist",
    PUBSUB: "pubsub",
    PUBSUB + "#owner": "pubsub#owner",
    "jabber:iq:private": "private",
    "jabber:iq:version": "version",
    "jabber:iq:last": "last",
    "urn:xmpp:time": "time",
    "urn:xmpp:http:upload:0": "http-upload",
}
"""Short names of iq payloads by namespace; others are named by the last part of their namespace."""


def _parse(frame: str) -> Element | None:
    text = frame.strip()
    if not text:
        return None
    try:
        return fromstring(text)
    except ParseError:
        return Element("unparsed")


def _split(tag: str) -> tuple[str, str]:
    """(namespace, local name) of a Clark-notation tag."""
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def target(jid: str | None, domain: str, muc: str, room: str, own_nick: str | None = None,
           own_jid: str | None = None) -> str:  # fmt: skip
    """The symbolic name of ``jid`` (see the module's docstring); ``""`` when there is none."""
    if not jid:
        return ""
    jid = jid.lower()
    room = room.lower()
    base = bare(jid)
    if base == room:
        nick = resource(jid)
        if not nick:
            return "room"
        return "own-occupant" if own_nick is not None and nick == own_nick.lower() else "occupant"
    if "@" not in base:
        if base == domain.lower():
            return "domain"
        if base == muc.lower() or base.endswith("." + domain.lower()):
            return "item"
        return "other"
    if own_jid is not None:
        return "own" if base == bare(own_jid).lower() else "user"
    return "own" if base.endswith("@" + domain.lower()) else "user"


def _payload_name(child: Element) -> str:
    namespace, local = _split(child.tag)
    name = PAYLOAD_NAMES.get(namespace)
    if name is None:
        name = namespace.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or local
    if namespace == ns.CARBONS and local == "disable":
        name = "carbons-disable"
    if namespace == PUBSUB:
        items = next((c for c in child if c.get("node")), None)
        if items is not None:
            name = f"pubsub {items.get('node')}"
    if namespace == ns.MAM and local == "prefs":
        name = "mam-prefs"
    return name


def _node_suffix(child: Element) -> str:
    node = child.get("node")
    if not node:
        return ""
    return "#caps" if "://" in node else f"#{node}"


def _iq_kind(element: Element, tgt: str) -> str:
    type_ = element.get("type", "get")
    children = list(element)
    child = children[0] if children else None
    if child is not None:
        namespace, _ = _split(child.tag)
        if namespace == ns.BIND:
            return "bind"
        if namespace == SESSION:
            return "session"
    if type_ in ("result", "error"):
        parts = [f"iq-{type_}"]
        if child is not None:
            parts.append(_payload_name(child) + _node_suffix(child))
        if tgt:
            parts.append(tgt)
        return " ".join(parts)
    if child is None:
        return f"iq-{type_} empty {tgt}".rstrip()
    name = _payload_name(child)
    if name == "vcard" and not tgt:
        tgt = "own"
    where = f"{tgt}{_node_suffix(child)}" if tgt else _node_suffix(child)
    return f"iq-{type_} {name} {where}".rstrip()


def _presence_kind(element: Element, tgt: str) -> str:
    type_ = element.get("type")
    if not tgt:
        return f"presence {type_}" if type_ else "presence global"
    if type_ == "unavailable" and tgt in ("room", "own-occupant", "occupant"):
        return "presence unavailable room"
    if type_:
        return f"presence {type_} {tgt}"
    if tgt in ("own-occupant", "occupant", "room"):
        if element.find(ns.clark(ns.MUC, "x")) is not None:
            return "presence join"
        return "presence room"
    return f"presence directed {tgt}"


def _message_kind(element: Element, tgt: str) -> str:
    type_ = element.get("type") or "normal"
    head = f"message {type_}" if type_ == "groupchat" and tgt == "room" else f"message {type_} {tgt}".rstrip()
    if element.find(ns.clark(ns.CLIENT, "body")) is not None:
        return head
    namespaces = {_split(child.tag)[0] for child in element}
    if CHATSTATES in namespaces:
        return f"{head} chat-state"
    if MARKERS in namespaces:
        return f"{head} marker"
    if RECEIPTS in namespaces:
        return f"{head} receipt"
    if element.find(ns.clark(ns.CLIENT, "subject")) is not None:
        return f"{head} subject"
    return f"{head} empty"


def kind(frame: str, domain: str, muc: str, room: str, own_nick: str | None = None,
         own_jid: str | None = None) -> str | None:  # fmt: skip
    """The kind of one frame a client SENT (see the module's docstring); ``None`` for whitespace."""
    element = _parse(frame)
    if element is None:
        return None
    if element.tag == "unparsed":
        return "unparsed"
    namespace, local = _split(element.tag)
    stream_kind = _stream_kind(element, namespace, local)
    if stream_kind is not None:
        return stream_kind
    tgt = target(element.get("to"), domain, muc, room, own_nick, own_jid)
    if element.tag == ns.IQ:
        return _iq_kind(element, tgt)
    if element.tag == ns.PRESENCE:
        return _presence_kind(element, tgt)
    if element.tag == ns.MESSAGE:
        return _message_kind(element, tgt)
    return f"{namespace} {local}".strip()


def _stream_kind(element: Element, namespace: str, local: str) -> str | None:
    """The kind of a framing, SASL or stream management element, named alike sent or received; None for others."""
    if namespace == ns.FRAMING:
        return local  # open, close
    if namespace == ns.SASL:
        return f"auth:{element.get('mechanism', '')}" if local == "auth" else f"auth:{local}"
    if namespace == ns.SM:
        if local == "enable":
            return "sm:enable resume" if element.get("resume") in ("true", "1") else "sm:enable"
        return f"sm:{local}"
    return None


def join_details(frame: str) -> dict[str, object]:
    """What a join presence carries: the nick it asks for, its ``<history/>`` limits (``None`` when it asks
    for none, else its attributes; ``history_maxstanzas`` as an int or ``None``), whether it holds a password,
    entity caps (``caps``, ``caps_node``), a ``vcard-temp:x:update`` (``vcard_update``) and the other
    children's namespaces (``extra``)."""
    element = _parse(frame)
    if element is None or element.tag != ns.PRESENCE:
        raise ValueError(f"not a presence: {frame[:80]!r}")
    x = element.find(ns.clark(ns.MUC, "x"))
    history = x.find(ns.clark(ns.MUC, "history")) if x is not None else None
    caps = element.find(ns.clark(CAPS, "c"))
    maxstanzas = history.get("maxstanzas") if history is not None else None
    known = {ns.MUC, CAPS, ns.VCARD_UPDATE}
    return {
        "nick": resource(element.get("to", "")),
        "muc_x": x is not None,
        "history": dict(history.attrib) if history is not None else None,
        "history_maxstanzas": int(maxstanzas) if maxstanzas is not None else None,
        "password": x is not None and x.find(ns.clark(ns.MUC, "password")) is not None,
        "caps": caps is not None,
        "caps_node": caps.get("node") if caps is not None else None,
        "vcard_update": element.find(ns.clark(ns.VCARD_UPDATE, "x")) is not None,
        "extra": sorted({_split(c.tag)[0] or _split(c.tag)[1] for c in element} - known),
    }


def mam_details(frame: str) -> dict[str, object]:
    """What an archive query asks: whether it holds a data form (``form``) and its fields other than
    FORM_TYPE (``fields``), the RSM page size (``max``, an int or ``None``), ``before`` and ``after``
    (``None`` when absent, ``""`` for an empty ``<before/>``: the last page), and whether it has a
    ``queryid``."""
    element = _parse(frame)
    query = element.find(ns.clark(ns.MAM, "query")) if element is not None else None
    if query is None:
        raise ValueError(f"not an archive query: {frame[:80]!r}")
    form = query.find(ns.clark(ns.DATA_FORMS, "x"))
    fields: dict[str, str] = {}
    if form is not None:
        for field in form.findall(ns.clark(ns.DATA_FORMS, "field")):
            var = field.get("var", "")
            if var != "FORM_TYPE":
                fields[var] = field.findtext(ns.clark(ns.DATA_FORMS, "value"), "")
    rsm = query.find(ns.clark(ns.RSM, "set"))

    def rsm_text(name: str) -> str | None:
        child = rsm.find(ns.clark(ns.RSM, name)) if rsm is not None else None
        return None if child is None else (child.text or "")

    max_ = rsm_text("max")
    return {
        "form": form is not None,
        "fields": fields,
        "max": int(max_) if max_ else None,
        "before": rsm_text("before"),
        "after": rsm_text("after"),
        "queryid": bool(query.get("queryid")),
    }


def self_presence(frame: str, room: str) -> bool:
    """Whether a RECEIVED frame is our own presence in ``room`` (status 110): the room is joined."""
    if "110" not in frame:
        return False
    element = _parse(frame)
    if element is None or element.tag != ns.PRESENCE or element.get("type") in ("unavailable", "error"):
        return False
    if bare(element.get("from", "")).lower() != room.lower():
        return False
    x = element.find(ns.clark(ns.MUC_USER, "x"))
    return x is not None and any(s.get("code") == "110" for s in x.findall(ns.clark(ns.MUC_USER, "status")))


def bound_jid(frame: str) -> str | None:
    """The full JID a RECEIVED bind result gives us, else ``None``."""
    element = _parse(frame)
    if element is None or element.tag != ns.IQ or element.get("type") != "result":
        return None
    jid = element.find(f"{ns.clark(ns.BIND, 'bind')}/{ns.clark(ns.BIND, 'jid')}")
    return jid.text if jid is not None else None


def archived_count(frames: Iterable[str]) -> int:
    """How many archived messages RECEIVED frames hold (MAM results)."""
    n = 0
    for frame in frames:
        if "urn:xmpp:mam:2" not in frame:
            continue
        element = _parse(frame)
        if element is not None and element.find(ns.clark(ns.MAM, "result")) is not None:
            n += 1
    return n


def mam_fin(frames: Iterable[str]) -> list[dict[str, str]]:
    """The ``<fin/>`` attributes of every MAM query answer among RECEIVED frames (``complete`` etc.)."""
    out = []
    for frame in frames:
        if "urn:xmpp:mam:2" not in frame:
            continue
        element = _parse(frame)
        fin = element.find(MAM_FIN) if element is not None else None
        if fin is not None:
            out.append(dict(fin.attrib))
    return out


def received_kind(frame: str, domain: str, muc: str, room: str, own_nick: str | None = None,
                  own_jid: str | None = None) -> str | None:  # fmt: skip
    """The kind of one frame a client RECEIVED, named like ``kind`` but by its sender (``from``):
    ``iq-get disco#info own#caps`` (the server's caps query), ``iq-result vcard occupant``, ``presence
    occupant`` / ``presence unavailable occupant``, ``message mam-result``, ``message groupchat subject``,
    ``sm:r``, ``sm:a``, ``features``; ``None`` for whitespace."""
    element = _parse(frame)
    if element is None:
        return None
    if element.tag == "unparsed":
        return "unparsed"
    namespace, local = _split(element.tag)
    if local == "features":
        return "features"
    stream_kind = _stream_kind(element, namespace, local)
    if stream_kind is not None:
        return stream_kind
    tgt = target(element.get("from"), domain, muc, room, own_nick, own_jid)
    if element.tag == ns.IQ:
        return _iq_kind(element, tgt)
    if element.tag == ns.PRESENCE:
        type_ = element.get("type")
        return " ".join(p for p in ("presence", type_, tgt) if p)
    if element.tag == ns.MESSAGE:
        if element.find(ns.clark(ns.MAM, "result")) is not None:
            return "message mam-result"
        return _message_kind(element, tgt)
    return f"{namespace} {local}".strip()
