"""Errors raised by the protocol core. Each message is one readable line."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the protocol, or the stream cannot go on."""


class FrameError(ProtocolError):
    """A WebSocket message that is not one acceptable XML element."""


class SaslError(ProtocolError):
    """Authentication failed or cannot be attempted."""
