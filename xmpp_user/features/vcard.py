"""vCard-temp (XEP-0054) and the avatar hash it backs (XEP-0153)."""

from __future__ import annotations

import base64
import hashlib
from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_text

GET = f"<vCard xmlns='{ns.VCARD}'/>"


def set_payload(full_name: str = "", nickname: str = "", photo: bytes = b"", photo_type: str = "image/png") -> str:
    parts = [f"<vCard xmlns='{ns.VCARD}'>"]
    if full_name:
        parts.append(f"<FN>{escape_text(full_name)}</FN>")
    if nickname:
        parts.append(f"<NICKNAME>{escape_text(nickname)}</NICKNAME>")
    if photo:
        parts.append(
            f"<PHOTO><TYPE>{escape_text(photo_type)}</TYPE><BINVAL>{base64.b64encode(photo).decode()}</BINVAL></PHOTO>"
        )
    parts.append("</vCard>")
    return "".join(parts)


def avatar_hash(photo: bytes) -> str:
    """The SHA-1 a client advertises in presence (XEP-0153 ``<photo/>``)."""
    return hashlib.sha1(photo).hexdigest()


EMPTY_UPDATE = f"<x xmlns='{ns.VCARD_UPDATE}'/>"
"""The avatar element of a client that has no avatar (XEP-0153: it supports avatars, has none)."""


def update_element(photo_hash: str) -> str:
    return f"<x xmlns='{ns.VCARD_UPDATE}'><photo>{photo_hash}</photo></x>"


def fields(result: Element) -> dict[str, str]:
    """Top-level text fields of a vCard result (FN, NICKNAME, ...); PHOTO as its BINVAL."""
    card = result.find(f"{{{ns.VCARD}}}vCard")
    out: dict[str, str] = {}
    if card is None:
        return out
    prefix = len(ns.VCARD) + 2
    for child in card:
        name = child.tag[prefix:]
        if name == "PHOTO":
            binval = child.find(f"{{{ns.VCARD}}}BINVAL")
            out[name] = (binval.text or "") if binval is not None else ""
        else:
            out[name] = child.text or ""
    return out
