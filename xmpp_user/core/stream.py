"""The client side of one XMPP stream over WebSocket, with no I/O.

Theory of operation
-------------------
``XmppStream`` is a state machine fed with the text of WebSocket messages
(``receive_frame``) and drained of the text messages it wants sent (``data_to_send``). It
never blocks, never reads a clock and never touches a socket: a transport drives it.

Negotiation runs by itself once ``start()`` is called::

    OPENING  --<open/> + features-->  [REGISTERING] --> AUTHENTICATING
    AUTHENTICATING --<success/>--> RESTARTING --<open/> + features--> BINDING
    BINDING --bind result--> [ENABLING_SM] --> READY

and reports each step as an event (``AuthRequested`` when the ``<auth/>`` is queued,
``Authenticated``, ``BindRequested``, ``Bound``, ``Ready``) so that the caller can time every
round trip. Any refusal ends in ``NegotiationFailed`` and a queued ``<close/>``.

In READY state each frame is parsed once and turned into one event. IQs sent with
``send_iq`` are correlated by id: their reply comes back as ``IqResult`` or ``IqError``
carrying the caller's ``key``. The core answers the server's pings and stream management
ack requests itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from xmpp_user.core import events as ev
from xmpp_user.core import ns, sasl
from xmpp_user.core.errors import ProtocolError
from xmpp_user.core.framing import (
    CLOSE_FRAME,
    DEFAULT_MAX_FRAME,
    escape_attr,
    escape_text,
    open_frame,
    parse_frame,
)
from xmpp_user.core.stanza import iq, stanza_error

_SASL = "{" + ns.SASL + "}"
_SM = "{" + ns.SM + "}"
_STREAM_ERROR_PREFIX = "{" + ns.STREAM_ERRORS + "}"
_BIND_KEY = object()
_REGISTER_KEY = object()
_SESSION_KEY = object()
_PING_TAG = ns.clark(ns.PING, "ping")
_ACK_REQUESTS = frozenset(f"<r xmlns={quote}{ns.SM}{quote}/>" for quote in "'\"")
"""A stream management ack request as servers write it. Prosody sends one after every stanza to a
stream-managed session: recognised by its text, it is answered without being parsed."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to log in: a SASL mechanism and, except for ANONYMOUS, an account."""

    mechanism: str = "ANONYMOUS"
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        if self.mechanism not in sasl.MECHANISMS:
            raise ValueError(
                f"unsupported SASL mechanism {self.mechanism!r}; choose one of {', '.join(sasl.MECHANISMS)}"
            )
        if self.mechanism != "ANONYMOUS" and not (self.username and self.password):
            raise ValueError(f"{self.mechanism} needs a username and a password")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How a stream negotiates and what it accepts: fixed for the stream's life, handed down whole from the
    client that opens sessions to each new ``XmppStream`` (``dataclasses.replace`` makes a variant)."""

    resource: str = ""
    """The resource to bind ('': the server picks one)."""
    stream_management: bool = True
    """Enable XEP-0198 stream management when the server offers it."""
    sm_resume: bool = False
    """Ask the server to keep the session resumable (XEP-0198 resume='true') when the connection drops."""
    ack_every: int = 0
    """Request an ack (``<r/>``) after every this many stanzas sent, as browser clients do; 0: never."""
    legacy_session: bool = False
    """Send the RFC 3921 session IQ after binding, as Strophe-based clients still do (answer ignored)."""
    register: bool = False
    """Register the account (XEP-0077 in-band registration) before authenticating."""
    max_frame: int = DEFAULT_MAX_FRAME
    """Longest frame accepted, in bytes: refused by the transport from its header, and by the core."""
    ids: Callable[[str], str] | None = None
    """Makes the id of each stanza we send from its purpose (the request's name: 'bind', 'session', 'roster',
    'ping', 'mam', 'presence', ...), as a client library writes them; None: a short counter, and presences
    without an id. The server echoes IQ ids in its answers, so their length is part of what a client costs."""


DEFAULT_SETTINGS = StreamSettings()


class State:
    IDLE = "idle"
    OPENING = "opening"
    REGISTERING = "registering"
    AUTHENTICATING = "authenticating"
    RESTARTING = "restarting"
    BINDING = "binding"
    ENABLING_SM = "enabling-sm"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class XmppStream:
    def __init__(
        self, domain: str, credentials: Credentials | None = None, settings: StreamSettings = DEFAULT_SETTINGS
    ) -> None:
        self.domain = domain
        self.credentials = credentials or Credentials()
        self.settings = settings
        self.state = State.IDLE
        self.jid = ""
        self.stream_id = ""
        self.sm_enabled = False
        self.sm_handled = 0
        """Stanzas received since stream management was enabled (XEP-0198 'h')."""
        self._out: list[str] = []
        self._pending: dict[str, Any] = {}
        self._id_prefix = os.urandom(3).hex()
        self._id_counter = 0
        self._ids = settings.ids
        self._mechanism: sasl.Mechanism | None = None
        self._sm_offered = False
        self._mechanisms: list[str] = []
        self._unacked = 0

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        """The frames queued since the last call, in order."""
        out, self._out = self._out, []
        return out

    def start(self) -> None:
        if self.state != State.IDLE:
            raise ProtocolError(f"stream already started (state {self.state})")
        self.state = State.OPENING
        self._out.append(open_frame(self.domain))

    def close(self) -> None:
        """Queue ``<close/>``; the server answers with its own and closes the WebSocket."""
        if self.state not in (State.CLOSING, State.CLOSED, State.IDLE):
            self._out.append(CLOSE_FRAME)
            self.state = State.CLOSING

    def new_id(self, purpose: str = "") -> str:
        """A new stanza id: the settings' ``ids(purpose)`` if set, else a short counter unique to the stream."""
        if self._ids is not None:
            return self._ids(purpose)
        self._id_counter += 1
        return f"{self._id_prefix}{self._id_counter:x}"

    def presence_id(self) -> str:
        """The id of a presence we send: '' (none) unless the settings' ``ids`` makes one."""
        return self._ids("presence") if self._ids is not None else ""

    def send(self, stanza: str) -> None:
        """Queue a stanza built by a feature module (message or presence)."""
        self._require_ready()
        self._out.append(stanza)
        if self.settings.ack_every:
            self._count_sent()

    def send_iq(
        self,
        type_: str,
        payload: str = "",
        to: str | None = None,
        key: Any = None,
        purpose: str = "",
        frm: str | None = None,
    ) -> str:
        """Queue an IQ get/set; its reply comes back as IqResult/IqError with ``key``. ``purpose`` goes to the
        settings' ``ids``; ``frm`` is written as the IQ's 'from' (our JID, as some clients write it)."""
        self._require_ready()
        id_ = self.new_id(purpose)
        self._pending[id_] = key
        self._out.append(iq(type_, id_, payload, to, frm))
        if self.settings.ack_every:
            self._count_sent()
        return id_

    def _count_sent(self) -> None:
        if self.sm_enabled:
            self._unacked += 1
            if self._unacked >= self.settings.ack_every:
                self._unacked = 0
                self._out.append(f"<r xmlns='{ns.SM}'/>")

    def forget(self, id_: str) -> None:
        """Stop waiting for the reply to an IQ (it timed out); a late reply is then ignored."""
        self._pending.pop(id_, None)

    def drop_pending(self) -> list[Any]:
        """Stop waiting for every IQ reply (the session is over); returns their keys."""
        keys = list(self._pending.values())
        self._pending.clear()
        return keys

    @property
    def mechanism(self) -> str:
        """The SASL mechanism chosen for this stream ('' before authentication starts)."""
        return self._mechanism.name if self._mechanism is not None else ""

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def _require_ready(self) -> None:
        if self.state != State.READY:
            raise ProtocolError(f"cannot send stanzas in state {self.state}")

    # -- input ----------------------------------------------------------------------------

    def receive_frame(self, frame: str) -> list[ev.Event]:
        """Feed one WebSocket text message; returns the events it caused."""
        if frame in _ACK_REQUESTS:
            self._answer_ack_request()
            return []
        element = parse_frame(frame, self.settings.max_frame)
        tag = element.tag
        if self.state == State.READY:
            # Hot path first: stanzas of an established session.
            if tag == ns.MESSAGE:
                self.sm_handled += 1
                return [ev.MessageReceived(element)]
            if tag == ns.PRESENCE:
                self.sm_handled += 1
                return [ev.PresenceReceived(element)]
        if tag == ns.IQ:
            self.sm_handled += 1
            return self._on_iq(element)
        if tag.startswith(_SM):
            return self._on_sm(element, tag[len(_SM) :])
        if tag == ns.OPEN:
            return self._on_open(element)
        if tag == ns.FEATURES:
            return self._on_features(element)
        if tag.startswith(_SASL):
            return self._on_sasl(element, tag[len(_SASL) :])
        if tag == ns.STREAM_ERROR:
            return self._on_stream_error(element)
        if tag == ns.CLOSE:
            return self._on_close(element)
        if tag in (ns.MESSAGE, ns.PRESENCE):
            if self.state in (State.CLOSING, State.CLOSED):
                return []  # in flight while our <close/> travels
            raise ProtocolError(f"stanza received before negotiation ended (state {self.state})")
        raise ProtocolError(f"unexpected top-level element {tag} in state {self.state}")

    def _on_open(self, element: Element) -> list[ev.Event]:
        if self.state not in (State.OPENING, State.RESTARTING):
            raise ProtocolError(f"unexpected <open/> in state {self.state}")
        self.stream_id = element.get("id", "")
        return [ev.StreamOpened(self.stream_id, element.get("from", ""))]

    def _on_features(self, features: Element) -> list[ev.Event]:
        if self.state == State.OPENING:
            if self.settings.register:
                if features.find(ns.clark(ns.REGISTER_FEATURE, "register")) is None:
                    return self._fail("register", "not-offered", "the server does not offer in-band registration")
                self.state = State.REGISTERING
                self._mechanisms = _mechanisms(features)
                payload = (
                    f"<query xmlns='{ns.REGISTER}'><username>{escape_text(self.credentials.username)}"
                    f"</username><password>{escape_text(self.credentials.password)}</password></query>"
                )
                self._pending_raw(_REGISTER_KEY, "set", payload, "register")
                return [ev.RegisterRequested()]
            return self._authenticate(_mechanisms(features))
        if self.state == State.RESTARTING:
            self._sm_offered = features.find(ns.clark(ns.SM, "sm")) is not None
            if features.find(ns.clark(ns.BIND, "bind")) is None:
                return self._fail("bind", "not-offered", "the server does not offer resource binding")
            self.state = State.BINDING
            res = f"<resource>{escape_text(self.settings.resource)}</resource>" if self.settings.resource else ""
            self._pending_raw(_BIND_KEY, "set", f"<bind xmlns='{ns.BIND}'>{res}</bind>", "bind")
            return [ev.BindRequested()]
        raise ProtocolError(f"unexpected stream features in state {self.state}")

    def _authenticate(self, offered: list[str]) -> list[ev.Event]:
        creds = self.credentials
        mechanism = sasl.choose(creds.mechanism, offered)  # "SCRAM": the strongest SCRAM offered
        if mechanism is None:
            return self._fail(
                "auth",
                "unsupported-mechanism",
                f"{creds.mechanism} is not offered by the server (it offers {', '.join(offered) or 'none'})",
            )
        try:
            self._mechanism = sasl.create(mechanism, creds.username, creds.password)
            initial = sasl.b64(self._mechanism.initial())
        except sasl.SaslError as exc:
            return self._fail("auth", "client-error", str(exc))
        self.state = State.AUTHENTICATING
        self._out.append(f"<auth xmlns='{ns.SASL}' mechanism='{mechanism}'>{initial}</auth>")
        return [ev.AuthRequested(mechanism)]

    def _on_sasl(self, element: Element, name: str) -> list[ev.Event]:
        if self.state != State.AUTHENTICATING or self._mechanism is None:
            raise ProtocolError(f"unexpected SASL <{name}/> in state {self.state}")
        try:
            if name == "challenge":
                response = self._mechanism.challenge(sasl.unb64(element.text))
                self._out.append(f"<response xmlns='{ns.SASL}'>{sasl.b64(response)}</response>")
                return []
            if name == "success":
                self._mechanism.success(sasl.unb64(element.text))
                self.state = State.RESTARTING
                self._out.append(open_frame(self.domain))
                return [ev.Authenticated(self._mechanism.name)]
        except sasl.SaslError as exc:
            self._out.append(f"<abort xmlns='{ns.SASL}'/>")
            return self._fail("auth", "client-error", str(exc))
        if name == "failure":
            condition, text = "undefined-condition", ""
            for child in element:
                local = child.tag[len(_SASL) :] if child.tag.startswith(_SASL) else child.tag
                if local == "text":
                    text = child.text or ""
                else:
                    condition = local
            return self._fail("auth", condition, text)
        raise ProtocolError(f"unexpected SASL element <{name}/>")

    def _on_iq(self, element: Element) -> list[ev.Event]:
        type_ = element.get("type")
        id_ = element.get("id", "")
        if type_ in ("result", "error"):
            if id_ not in self._pending:
                return []  # late reply to a forgotten request, or not ours
            key = self._pending.pop(id_)
            if key is _SESSION_KEY:
                return []  # a no-op on today's servers: neither its result nor its error changes anything
            if key is _BIND_KEY:
                return self._on_bind(element, type_)
            if key is _REGISTER_KEY:
                return self._on_register(element, type_)
            if type_ == "result":
                return [ev.IqResult(id_, key, element)]
            condition, text = stanza_error(element)
            return [ev.IqError(id_, key, condition, text, element)]
        if type_ in ("get", "set"):
            if self.state in (State.CLOSING, State.CLOSED):
                return []
            if self.state != State.READY:
                raise ProtocolError(f"IQ request received before negotiation ended (state {self.state})")
            if type_ == "get" and element.find(_PING_TAG) is not None:
                self.reply_result(element)
                return []
            return [ev.IqRequest(element)]
        raise ProtocolError(f"IQ with invalid type {type_!r}")

    def reply_result(self, request: Element, payload: str = "") -> None:
        to = request.get("from")
        self._out.append(iq("result", escape_attr(request.get("id", "")), payload, to))
        if self.settings.ack_every:
            self._count_sent()

    def reply_error(self, request: Element, condition: str = "service-unavailable", type_: str = "cancel") -> None:
        to = request.get("from")
        error = f"<error type='{type_}'><{condition} xmlns='{ns.STANZA_ERRORS}'/></error>"
        self._out.append(iq("error", escape_attr(request.get("id", "")), error, to))

    def _on_register(self, element: Element, type_: str) -> list[ev.Event]:
        if type_ == "error":
            condition, text = stanza_error(element)
            if condition != "conflict":
                return self._fail("register", condition, text)
        events: list[ev.Event] = [ev.Registered(already_existed=type_ == "error")]
        return events + self._authenticate(self._mechanisms)

    def _on_bind(self, element: Element, type_: str) -> list[ev.Event]:
        if type_ == "error":
            condition, text = stanza_error(element)
            return self._fail("bind", condition, text)
        jid_el = element.find(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}jid")
        if jid_el is None or not jid_el.text:
            return self._fail("bind", "bad-reply", "bind result carries no JID")
        self.jid = jid_el.text
        events: list[ev.Event] = [ev.Bound(self.jid)]
        if self.settings.legacy_session:
            self._pending_raw(_SESSION_KEY, "set", f"<session xmlns='{ns.SESSION}'/>", "session")
        if self.settings.stream_management and self._sm_offered:
            self.state = State.ENABLING_SM
            resume = " resume='true'" if self.settings.sm_resume else ""
            self._out.append(f"<enable xmlns='{ns.SM}'{resume}/>")
            return events
        self.state = State.READY
        events.append(ev.Ready(self.jid, False))
        return events

    def _on_sm(self, element: Element, name: str) -> list[ev.Event]:
        if name == "r":
            self._answer_ack_request()
            return []
        if name == "a":
            return []
        if self.state != State.ENABLING_SM:
            raise ProtocolError(f"unexpected stream management <{name}/> in state {self.state}")
        self.state = State.READY
        if name == "enabled":
            self.sm_enabled = True
            self.sm_handled = 0
        # 'failed' is not fatal: the session simply runs without stream management.
        return [ev.Ready(self.jid, self.sm_enabled)]

    def _answer_ack_request(self) -> None:
        if self.sm_enabled:
            self._out.append(f"<a xmlns='{ns.SM}' h='{self.sm_handled}'/>")

    def _on_stream_error(self, element: Element) -> list[ev.Event]:
        condition, text, other = "undefined-condition", "", ""
        for child in element:
            if child.tag == ns.TEXT_STREAM:
                text = child.text or ""
            elif child.tag.startswith(_STREAM_ERROR_PREFIX):
                condition = child.tag[len(_STREAM_ERROR_PREFIX) :]
                if condition == "see-other-host":
                    other = (child.text or "").strip()
        # RFC 7395: the server follows a stream error with <close/>; answer it so it can close.
        self.close()
        return [ev.StreamError(condition, text, other)]

    def _on_close(self, element: Element) -> list[ev.Event]:
        if self.state != State.CLOSING:
            self._out.append(CLOSE_FRAME)
        self.state = State.CLOSED
        return [ev.StreamClosed(element.get("see-other-uri", ""))]

    def _pending_raw(self, key: object, type_: str, payload: str, purpose: str) -> None:
        id_ = self.new_id(purpose)
        self._pending[id_] = key
        self._out.append(iq(type_, id_, payload))

    def _fail(self, step: str, condition: str, text: str) -> list[ev.Event]:
        self.close()
        return [ev.NegotiationFailed(step, condition, text)]


def _mechanisms(features: Element) -> list[str]:
    return [m.text or "" for m in features.iterfind(f"{_SASL}mechanisms/{_SASL}mechanism")]
