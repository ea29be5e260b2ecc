"""RFC 7395 framing: one XML element per WebSocket text message.

Parsing is the hot path of a load generator: every frame is parsed exactly once, by the C
ElementTree parser, after cheap substring checks that refuse what XMPP forbids (RFC 6120
section 11.1: DTDs, entity declarations, comments, processing instructions) before expat
ever sees it. Oversized frames are refused before parsing too.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError, fromstring

from xmpp_user.core import ns
from xmpp_user.core.errors import FrameError

DEFAULT_MAX_FRAME = 1 << 20
"""Largest frame accepted, in characters (1 MiB: room for a vCard with an avatar). The transport
applies the same number to the frame's bytes, from its header, before reading it."""

_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape_attr(value: str) -> str:
    return value.translate(_ATTR_ESCAPES)


def escape_text(value: str) -> str:
    return value.translate(_TEXT_ESCAPES)


def open_frame(to: str, lang: str = "en") -> str:
    return (
        f"<open xmlns='{ns.FRAMING}' to='{escape_attr(to)}' version='1.0' xml:lang='{escape_attr(lang)}'/>"
    )


CLOSE_FRAME = f"<close xmlns='{ns.FRAMING}'/>"


def parse_frame(frame: str, max_size: int = DEFAULT_MAX_FRAME) -> Element:
    """Parse one WebSocket message into an element, or raise FrameError saying why not."""
    if len(frame) > max_size:
        raise FrameError(f"frame of {len(frame)} characters exceeds the {max_size} limit")
    if "<!" in frame or "<?" in frame:
        frame = _check_markup(frame)
    try:
        return fromstring(frame)
    except ParseError as exc:
        raise FrameError(f"malformed XML frame: {exc}: {_excerpt(frame)}") from None


def _check_markup(frame: str) -> str:
    """Slow path for the rare frame containing '<!' or '<?'."""
    stripped = frame.lstrip()
    if stripped.startswith("<?xml"):
        end = stripped.find("?>")
        if end < 0:
            raise FrameError(f"malformed XML declaration: {_excerpt(frame)}")
        frame = stripped[end + 2 :]
    if "<?" in frame:
        raise FrameError(f"processing instructions are forbidden in XMPP: {_excerpt(frame)}")
    rest = frame.replace("<![CDATA[", "")
    if "<!DOCTYPE" in rest or "<!ENTITY" in rest:
        raise FrameError(f"DTDs and entity declarations are forbidden in XMPP: {_excerpt(frame)}")
    if "<!" in rest:
        raise FrameError(f"comments and declarations are forbidden in XMPP: {_excerpt(frame)}")
    return frame


def _excerpt(frame: str, size: int = 80) -> str:
    text = frame[:size].replace("\n", " ")
    return repr(text + ("..." if len(frame) > size else ""))
