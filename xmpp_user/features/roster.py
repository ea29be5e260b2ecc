"""Roster retrieval (RFC 6121 section 2)."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from xmpp_user.core import ns

GET = f"<query xmlns='{ns.ROSTER}'/>"


def items(result: Element) -> list[str]:
    return [i.get("jid", "") for i in result.iterfind(f"{{{ns.ROSTER}}}query/{{{ns.ROSTER}}}item")]
