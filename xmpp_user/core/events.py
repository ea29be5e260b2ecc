"""Events returned by ``XmppStream.receive_frame``: small immutable records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    stream_id: str
    from_: str


@dataclass(frozen=True, slots=True)
class RegisterRequested(Event):
    """The in-band registration IQ was queued."""


@dataclass(frozen=True, slots=True)
class Registered(Event):
    already_existed: bool


@dataclass(frozen=True, slots=True)
class AuthRequested(Event):
    """The SASL ``<auth/>`` was queued: the auth round trip starts now."""

    mechanism: str


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    mechanism: str


@dataclass(frozen=True, slots=True)
class BindRequested(Event):
    pass


@dataclass(frozen=True, slots=True)
class Bound(Event):
    jid: str


@dataclass(frozen=True, slots=True)
class Ready(Event):
    """Negotiation is over: stanzas may flow."""

    jid: str
    stream_management: bool


@dataclass(frozen=True, slots=True)
class NegotiationFailed(Event):
    """Registration, authentication, bind or stream management failed; the stream is being closed."""

    step: str
    condition: str
    text: str


@dataclass(frozen=True, slots=True)
class IqResult(Event):
    id: str
    key: Any
    element: Element


@dataclass(frozen=True, slots=True)
class IqError(Event):
    id: str
    key: Any
    condition: str
    text: str
    element: Element


@dataclass(frozen=True, slots=True)
class IqRequest(Event):
    """A get or set addressed to us that the core does not answer by itself."""

    element: Element


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    element: Element


@dataclass(frozen=True, slots=True)
class PresenceReceived(Event):
    element: Element


@dataclass(frozen=True, slots=True)
class StreamError(Event):
    condition: str
    text: str
    see_other_host: str


@dataclass(frozen=True, slots=True)
class StreamClosed(Event):
    """The server sent ``<close/>``; ``see_other_uri`` is set when it redirects us."""

    see_other_uri: str
