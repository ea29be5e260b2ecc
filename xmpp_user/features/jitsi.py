"""What a Jitsi Meet participant adds to XMPP: the focus conference request, the MUC presence
extensions of jitsi-meet, and a canned answer to the focus's Jingle offer."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from xmpp_user.core.framing import escape_attr, escape_text

FOCUS = "http://jitsi.org/protocol/focus"
JINGLE = "urn:xmpp:jingle:1"
JINGLE_TAG = f"{{{JINGLE}}}jingle"
CAPS_NODE = "https://jitsi.org/jitsi-meet"


def conference(room: str, machine_uid: str) -> str:
    """Payload of the IQ set to the focus component that asks it to set up ``room``."""
    return f"<conference xmlns='{FOCUS}' machine-uid='{escape_attr(machine_uid)}' room='{escape_attr(room)}'/>"


def presence_extensions(
    nick: str, stats_id: str, region: str = "region1", avatar_id: str = "", caps_ver: str = "", muted: bool = True
) -> str:
    """The elements jitsi-meet puts in its MUC join presence, after the muc ``<x/>``."""
    flag = "true" if muted else "false"
    return (
        f"<stats-id>{escape_text(stats_id)}</stats-id>"
        f"<region xmlns='http://jitsi.org/jitsi-meet' id='{escape_attr(region)}'/>"
        f"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' ver='{escape_attr(caps_ver)}'/>"
        f"<jitsi_participant_region>{escape_text(region)}</jitsi_participant_region>"
        f"<avatar-id>{escape_text(avatar_id)}</avatar-id>"
        f"<nick xmlns='http://jabber.org/protocol/nick'>{escape_text(nick)}</nick>"
        f"<audiomuted xmlns='http://jitsi.org/jitmeet/audio'>{flag}</audiomuted>"
        f"<videoType xmlns='http://jitsi.org/jitmeet/video'>camera</videoType>"
        f"<videomuted xmlns='http://jitsi.org/jitmeet/video'>{flag}</videomuted>"
    )


def session_initiate(iq: Element) -> Element | None:
    """The ``<jingle action='session-initiate'/>`` of a focus offer, if ``iq`` is one."""
    jingle = iq.find(JINGLE_TAG)
    if jingle is None or jingle.get("action") != "session-initiate":
        return None
    return jingle


def session_accept(offer: Element, responder: str) -> str:
    """A canned session-accept for ``offer``: the same contents, no real media negotiation."""
    contents = "".join(
        f"<content creator='{escape_attr(c.get('creator', 'initiator'))}' name='{escape_attr(c.get('name', ''))}'"
        f" senders='both'/>"
        for c in offer.iterfind(f"{{{JINGLE}}}content")
    )
    return (
        f"<jingle xmlns='{JINGLE}' action='session-accept' initiator='{escape_attr(offer.get('initiator', ''))}'"
        f" responder='{escape_attr(responder)}' sid='{escape_attr(offer.get('sid', ''))}'>{contents}</jingle>"
    )
