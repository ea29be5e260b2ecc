"""XML namespaces, as plain strings and as ElementTree Clark-notation prefixes."""

from __future__ import annotations

CLIENT = "jabber:client"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
STREAMS = "http://etherx.jabber.org/streams"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SM = "urn:xmpp:sm:3"
REGISTER_FEATURE = "http://jabber.org/features/iq-register"
REGISTER = "jabber:iq:register"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
ROSTER = "jabber:iq:roster"
CARBONS = "urn:xmpp:carbons:2"
VCARD = "vcard-temp"
VCARD_UPDATE = "vcard-temp:x:update"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
MUC_OWNER = "http://jabber.org/protocol/muc#owner"
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
DATA_FORMS = "jabber:x:data"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
PING = "urn:xmpp:ping"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
CAPS = "http://jabber.org/protocol/caps"
BLOCKING = "urn:xmpp:blocking"
PUBSUB = "http://jabber.org/protocol/pubsub"
SID = "urn:xmpp:sid:0"


def clark(ns: str, tag: str) -> str:
    """ElementTree's ``{namespace}tag`` name."""
    return f"{{{ns}}}{tag}"


# Tags the hot path compares against, built once.
OPEN = clark(FRAMING, "open")
CLOSE = clark(FRAMING, "close")
FEATURES = clark(STREAMS, "features")
STREAM_ERROR = clark(STREAMS, "error")
MESSAGE = clark(CLIENT, "message")
PRESENCE = clark(CLIENT, "presence")
IQ = clark(CLIENT, "iq")
ERROR = clark(CLIENT, "error")
TEXT_STREAM = clark(STREAM_ERRORS, "text")
TEXT_STANZA = clark(STANZA_ERRORS, "text")
