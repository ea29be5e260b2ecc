"""An XMPP client for load tests: the core driven over the WebSocket transport, under gevent.

Every round trip is reported through a Locust-style ``request`` event hook when its reply
arrives (as ``locust.contrib.mqtt`` does): the reader greenlet matches the reply to the
request by IQ id, MUC room, message id or MAM query id, and fires the event with the time
since the request was queued. Requests can be waited for one at a time or pipelined
(``wait=False``, then ``wait_all``), the way a browser client fires its start-up queries.

Failures are fired as events too, then raised as ``XmppRequestFailed``: a subclass of
Locust's ``RescheduleTask``, so a failed request ends the current task quietly (it is
already recorded) and the user carries on with its next task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

import gevent
from gevent.event import Event
from locust.exception import RescheduleTask

from xmpp_user.core import events as ev
from xmpp_user.core import ns
from xmpp_user.core.errors import ProtocolError
from xmpp_user.core.stanza import bare, resource, stanza_error
from xmpp_user.core.stream import Credentials, State, XmppStream
from xmpp_user.features import carbons, disco, mam, muc, ping, roster, vcard
from xmpp_user.transport import TransportError, WebSocketTransport

log = logging.getLogger(__name__)

REQUEST_TYPE = "XMPP"
NO_VCARD = ("service-unavailable", "item-not-found", "feature-not-implemented")
"""Error conditions by which a server says an entity has no vCard (a client then shows no avatar)."""
_MAX_REDIRECTS = 3


class XmppRequestFailed(RescheduleTask):
    """A request failed; the failure has already been recorded."""


class Pending:
    """One request awaiting its reply."""

    __slots__ = ("name", "start", "done", "error", "condition", "accept", "element", "messages", "_event", "_forget")

    def __init__(self, name: str, forget: Callable[[], None] | None = None, accept: tuple[str, ...] = ()) -> None:
        self.name = name
        self.accept = accept
        """Error conditions that count as an answer (e.g. 'service-unavailable': no vCard here)."""
        self.condition = ""
        """The error condition of an accepted error reply."""
        self.start = time.perf_counter()
        self.done = False
        self.error: str | None = None
        self.element: Element | None = None
        self.messages: list[Element] = []
        """Archived messages collected for a MAM query."""
        self._event: Event | None = None
        self._forget = forget

    @property
    def ok(self) -> bool:
        return self.done and self.error is None


@dataclass
class Room:
    """What this client knows of a MUC room it is in (or joining)."""

    jid: str
    nick: str
    joined: bool = False
    occupants: set[str] = field(default_factory=set)


class XmppClient:
    def __init__(
        self,
        url: str,
        domain: str,
        credentials: Credentials | None = None,
        *,
        request_event: Any = None,
        timeout: float = 10.0,
        connect_timeout: float = 10.0,
        resource: str = "",
        stream_management: bool = True,
        register: bool = False,
        verify_tls: bool = True,
        source_address: str | None = None,
    ) -> None:
        self.url = url
        self.domain = domain
        self.credentials = credentials or Credentials()
        self.timeout = timeout
        """Seconds to wait for any reply before the request counts as failed."""
        self.connect_timeout = connect_timeout
        self.resource = resource
        self.stream_management = stream_management
        self.register = register
        self.verify_tls = verify_tls
        self.source_address = source_address
        self._fire = request_event.fire if request_event is not None else _no_event
        self.on_message: list[Callable[[Element], None]] = []
        """Called with each live message (not archive results) once its waiter, if any, is served."""
        self.on_presence: list[Callable[[Element], None]] = []
        self.on_occupant_joined: list[Callable[[Room, str], None]] = []
        self.on_iq_request: Callable[[Element], bool] | None = None
        """Answers server IQs the core does not; return False to let the client refuse them."""
        self.rooms: dict[str, Room] = {}
        self.jid = ""
        self.last_error = ""
        self._stream: XmppStream | None = None
        self._transport: WebSocketTransport | None = None
        self._reader: gevent.Greenlet | None = None
        self._joins: dict[str, Pending] = {}
        self._leaves: dict[str, Pending] = {}
        self._messages: dict[str, Pending] = {}
        self._queries: dict[str, Pending] = {}
        self._negotiation: dict[str, Pending] = {}
        self._negotiated = Event()
        self._closing = False
        self._redirect = ""
        self._dispatch = {
            ev.MessageReceived: self._on_message,
            ev.PresenceReceived: self._on_presence,
            ev.IqResult: self._on_iq_result,
            ev.IqError: self._on_iq_error,
            ev.IqRequest: self._on_iq_request,
            ev.RegisterRequested: lambda e: self._begin("register"),
            ev.Registered: lambda e: self._finish("register"),
            ev.AuthRequested: lambda e: self._begin("auth"),
            ev.Authenticated: lambda e: self._finish("auth"),
            ev.BindRequested: lambda e: self._begin("bind"),
            ev.Bound: lambda e: self._finish("bind"),
            ev.Ready: self._on_ready,
            ev.NegotiationFailed: self._on_negotiation_failed,
            ev.StreamError: self._on_stream_error,
            ev.StreamClosed: self._on_stream_closed,
            ev.StreamOpened: lambda e: None,
        }

    # -- session --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._stream is not None and self._stream.state == State.READY

    def connect(self) -> None:
        """Open the WebSocket, authenticate and bind; fires connect, auth and bind."""
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            self._connect_once(url)
            if not self._redirect:
                return
            url, self._redirect = self._redirect, ""
            log.info("redirected to %s", url)
        self._raise(f"more than {_MAX_REDIRECTS} redirects")

    def _connect_once(self, url: str) -> None:
        self.abort()
        self._closing = False
        self._negotiated = Event()
        self.rooms.clear()
        self._stream = XmppStream(
            self.domain,
            self.credentials,
            resource=self.resource,
            stream_management=self.stream_management,
            register=self.register,
        )
        pending = Pending("connect")
        try:
            self._transport = WebSocketTransport.open(
                url, self.connect_timeout, self.verify_tls, self.source_address
            )
        except TransportError as exc:
            self._fail(pending, str(exc))
            self._raise(str(exc))
        self._complete(pending)
        self._stream.start()
        self._flush()
        self._reader = gevent.spawn(self._read_loop, self._transport, self._stream)
        if not self._negotiated.wait(self.timeout):
            for p in list(self._negotiation.values()):
                self._fail(p, f"no reply within {self.timeout:g} s")
            self._negotiation.clear()
            self.abort()
            self._raise(f"negotiation did not finish within {self.timeout:g} s")
        if self._redirect:
            self.abort()
            return
        if not self.connected:
            self.abort()
            self._raise(self.last_error or "negotiation failed")
        self.jid = self._stream.jid

    def close(self, timeout: float = 2.0) -> None:
        """Close the stream politely (``<close/>``, wait for the server's), then the socket."""
        stream = self._stream
        if stream is not None and stream.state not in (State.CLOSED, State.IDLE) and self._transport:
            self._closing = True
            stream.close()
            try:
                self._flush()
            except XmppRequestFailed:
                pass
            if self._reader is not None:
                self._reader.join(timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once; outstanding requests fail."""
        self._closing = True
        transport, self._transport = self._transport, None
        reader, self._reader = self._reader, None
        if transport is not None:
            transport.close()
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)
        self._fail_all("connection closed before the reply")

    def send_stanza(self, stanza: str) -> None:
        """Send a stanza that has no reply to wait for (e.g. a global unavailable presence)."""
        self._ready_stream().send(stanza)
        self._flush()

    # -- generic requests -----------------------------------------------------------------

    def send_iq(
        self, name: str, type_: str, payload: str, to: str | None = None, accept: tuple[str, ...] = ()
    ) -> Pending:
        """Queue an IQ; an error reply whose condition is in ``accept`` counts as an answer."""
        stream = self._ready_stream()
        pending = Pending(name, accept=accept)
        id_ = stream.send_iq(type_, payload, to, pending)
        pending._forget = lambda: stream.forget(id_)
        self._flush()
        return pending

    def iq(
        self,
        name: str,
        type_: str,
        payload: str,
        to: str | None = None,
        wait: bool = True,
        accept: tuple[str, ...] = (),
    ) -> Pending:
        pending = self.send_iq(name, type_, payload, to, accept)
        return self.wait(pending) if wait else pending

    def wait(self, pending: Pending, timeout: float | None = None) -> Pending:
        """Block until the reply arrives or the timeout passes; raises XmppRequestFailed on failure."""
        if not pending.done:
            if pending._event is None:
                pending._event = Event()
            if not pending._event.wait(self.timeout if timeout is None else timeout):
                if pending._forget is not None:
                    pending._forget()
                self._fail(pending, f"no reply within {self.timeout if timeout is None else timeout:g} s")
        if pending.error is not None:
            raise XmppRequestFailed(f"{pending.name}: {pending.error}")
        return pending

    def wait_all(self, pendings: Iterable[Pending], timeout: float | None = None) -> list[Pending]:
        """Wait for every request in turn (one shared deadline); raise for the first failure."""
        deadline = time.perf_counter() + (self.timeout if timeout is None else timeout)
        pendings = list(pendings)
        first_error: XmppRequestFailed | None = None
        for p in pendings:
            try:
                self.wait(p, max(0.0, deadline - time.perf_counter()))
            except XmppRequestFailed as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return pendings

    def expire(self, pendings: list[Pending], timeout: float | None = None) -> list[Pending]:
        """Fail the requests of ``pendings`` older than the timeout; returns those still awaited.

        For requests fired from callbacks that nobody waits for (a vCard for each new occupant).
        """
        limit = time.perf_counter() - (self.timeout if timeout is None else timeout)
        still = []
        for p in pendings:
            if p.done:
                continue
            if p.start < limit:
                if p._forget is not None:
                    p._forget()
                self._fail(p, f"no reply within {self.timeout if timeout is None else timeout:g} s")
            else:
                still.append(p)
        return still

    # -- features -------------------------------------------------------------------------

    def disco_info(
        self, to: str | None = None, node: str | None = None, wait: bool = True, accept: tuple[str, ...] = ()
    ) -> Pending:
        return self.iq("disco_info", "get", disco.info(node), to, wait, accept)

    def disco_items(self, to: str | None = None, wait: bool = True) -> Pending:
        return self.iq("disco_items", "get", disco.ITEMS, to, wait)

    def roster(self, wait: bool = True) -> Pending:
        return self.iq("roster", "get", roster.GET, None, wait)

    def enable_carbons(self, wait: bool = True) -> Pending:
        return self.iq("carbons", "set", carbons.ENABLE, None, wait)

    def vcard(
        self, to: str | None = None, wait: bool = True, accept: tuple[str, ...] = (), name: str = "vcard"
    ) -> Pending:
        """Fetch a vCard; pass ``accept=NO_VCARD`` where "none here" is a normal answer.

        ``name`` lets a scenario tell kinds of vCard requests apart in the stats (e.g. the
        avatars of room occupants, the O(n^2) part of a chat room's cost).
        """
        return self.iq(name, "get", vcard.GET, to, wait, accept)

    def set_vcard(self, payload: str, wait: bool = True) -> Pending:
        return self.iq("vcard_set", "set", payload, None, wait)

    def ping(self, to: str | None = None, wait: bool = True) -> Pending:
        return self.iq("ping", "get", ping.PING, to or self.domain, wait)

    def muc_join(
        self, room: str, nick: str, history_max: int | None = None, extra: str = "", wait: bool = True
    ) -> Pending:
        """Join ``room`` as ``nick``; done when our own presence (status 110) comes back."""
        stream = self._ready_stream()
        self.rooms[room] = Room(room, nick)
        pending = Pending("muc_join", lambda: self._joins.pop(room, None))
        self._joins[room] = pending
        stream.send(muc.join(room, nick, history_max, extra))
        self._flush()
        return self.wait(pending) if wait else pending

    def muc_leave(self, room: str, wait: bool = True) -> Pending:
        stream = self._ready_stream()
        state = self.rooms.get(room)
        if state is None:
            raise ValueError(f"not in room {room}")
        pending = Pending("muc_leave", lambda: self._leaves.pop(room, None))
        self._leaves[room] = pending
        stream.send(muc.leave(room, state.nick))
        self._flush()
        return self.wait(pending) if wait else pending

    def muc_nick(self, room: str, nick: str, wait: bool = True) -> Pending:
        """Change nickname; done when the room confirms the new one with status 110."""
        stream = self._ready_stream()
        state = self.rooms.get(room)
        if state is None or not state.joined:
            raise ValueError(f"not in room {room}")
        pending = Pending("muc_nick", lambda: self._joins.pop(room, None))
        self._joins[room] = pending
        state.nick = nick
        stream.send(muc.change_nick(room, nick))
        self._flush()
        return self.wait(pending) if wait else pending

    def groupchat(self, room: str, body: str, extra: str = "", wait: bool = True) -> Pending:
        """Send to a room; done when the room reflects the message back to us."""
        stream = self._ready_stream()
        id_ = stream.new_id()
        pending = Pending("message", lambda: self._messages.pop(id_, None))
        self._messages[id_] = pending
        stream.send(muc.groupchat(room, body, id_, extra))
        self._flush()
        return self.wait(pending) if wait else pending

    def mam(
        self,
        to: str | None = None,
        max_: int = 50,
        before: str | None = "",
        after: str | None = None,
        wait: bool = True,
    ) -> Pending:
        """Query an archive (a room's, or ours when ``to`` is None); done at ``<fin/>``.

        The default asks for the latest page, as a client opening a room does. The archived
        messages are collected in ``pending.messages``.
        """
        stream = self._ready_stream()
        queryid = stream.new_id()
        pending = Pending("mam")
        self._queries[queryid] = pending
        id_ = stream.send_iq("set", mam.query(queryid, max_, before, after), to, pending)

        def forget() -> None:
            stream.forget(id_)
            self._queries.pop(queryid, None)

        pending._forget = forget
        self._flush()
        return self.wait(pending) if wait else pending

    # -- internals: sending ----------------------------------------------------------------

    def _ready_stream(self) -> XmppStream:
        stream = self._stream
        if stream is None or stream.state != State.READY:
            raise XmppRequestFailed(f"not connected ({self.last_error or 'no session'})")
        return stream

    def _flush(self) -> None:
        stream, transport = self._stream, self._transport
        if stream is None:
            return
        frames = stream.data_to_send()
        if not frames or transport is None:
            return
        try:
            for frame in frames:
                transport.send(frame)
        except TransportError as exc:
            self._connection_lost(str(exc))
            raise XmppRequestFailed(str(exc)) from None

    # -- internals: the reader greenlet -----------------------------------------------------

    def _read_loop(self, transport: WebSocketTransport, stream: XmppStream) -> None:
        dispatch = self._dispatch
        while True:
            try:
                frame = transport.recv()
            except TransportError as exc:
                self._reader_ended(stream, str(exc))
                return
            if frame is None:
                self._reader_ended(stream, "the server closed the WebSocket")
                return
            self._frame_length = len(frame)
            try:
                events = stream.receive_frame(frame)
                for event in events:
                    dispatch[type(event)](event)
            except ProtocolError as exc:
                self._protocol_failure(str(exc))
                return
            except Exception as exc:  # a bug in a callback must not leave the user waiting forever
                log.exception("error while handling a frame")
                self._protocol_failure(f"internal error while handling a frame: {exc!r}")
                return
            if self._transport is transport:
                try:
                    self._flush()
                except XmppRequestFailed:
                    return

    def _reader_ended(self, stream: XmppStream, reason: str) -> None:
        if self._stream is not stream:
            return
        if not self._closing and stream.state != State.CLOSED:
            self._connection_lost(reason)
        else:
            self._fail_all("connection closed before the reply")
        self._negotiated.set()

    def _protocol_failure(self, reason: str) -> None:
        self._record("stream", reason)
        if self._stream is not None:
            self._stream.close()
            try:
                self._flush()
            except XmppRequestFailed:
                pass
        self._connection_lost(reason, record=False)

    def _connection_lost(self, reason: str, record: bool = True) -> None:
        self.last_error = reason
        if record and not self._closing:
            self._record("stream", f"connection lost: {reason}")
        self._closing = True
        if self._stream is not None:
            self._stream.state = State.CLOSED
        self._fail_all(reason)
        self._negotiated.set()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _fail_all(self, reason: str) -> None:
        stream = self._stream
        pendings: list[Pending] = []
        if stream is not None:
            pendings.extend(k for k in stream._pending.values() if isinstance(k, Pending))
            stream._pending.clear()
        for table in (self._joins, self._leaves, self._messages, self._queries, self._negotiation):
            pendings.extend(table.values())
            table.clear()
        for p in pendings:
            if not p.done:
                self._fail(p, reason)

    # -- internals: events ------------------------------------------------------------------

    def _on_message(self, event: ev.MessageReceived) -> None:
        element = event.element
        if self._queries:
            found = mam.result(element)
            if found is not None:
                pending = self._queries.get(found[0])
                if pending is not None:
                    pending.messages.append(found[1])
                return
        id_ = element.get("id")
        if id_ is not None and id_ in self._messages:
            if element.get("type") == "error":
                condition, text = stanza_error(element)
                self._fail(self._messages.pop(id_), _describe(condition, text))
                return
            frm = element.get("from", "")
            room = self.rooms.get(bare(frm))
            if room is not None and resource(frm) == room.nick:
                self._complete(self._messages.pop(id_), element)
        for callback in self.on_message:
            callback(element)

    def _on_presence(self, event: ev.PresenceReceived) -> None:
        element = event.element
        frm = element.get("from", "")
        room = self.rooms.get(bare(frm))
        if room is not None:
            self._on_room_presence(room, resource(frm), element)
        for callback in self.on_presence:
            callback(element)

    def _on_room_presence(self, room: Room, nick: str, element: Element) -> None:
        type_ = element.get("type")
        if type_ == "error":
            condition, text = stanza_error(element)
            for table in (self._joins, self._leaves):
                pending = table.pop(room.jid, None)
                if pending is not None:
                    self._fail(pending, _describe(condition, text))
            if not room.joined:
                self.rooms.pop(room.jid, None)
            return
        codes = muc.status_codes(element)
        if type_ == "unavailable":
            room.occupants.discard(nick)
            if muc.SELF_PRESENCE in codes and "303" not in codes:
                room.joined = False
                self.rooms.pop(room.jid, None)
                pending = self._leaves.pop(room.jid, None)
                if pending is not None:
                    self._complete(pending, element)
            return
        is_new = nick not in room.occupants
        room.occupants.add(nick)
        if muc.SELF_PRESENCE in codes:
            room.nick = nick
            room.joined = True
            pending = self._joins.pop(room.jid, None)
            if pending is not None:
                self._complete(pending, element)
        elif is_new and room.joined:
            # Occupants listed before our own presence are the initial list, not joiners.
            for callback in self.on_occupant_joined:
                callback(room, nick)

    def _on_iq_result(self, event: ev.IqResult) -> None:
        pending = event.key
        if isinstance(pending, Pending):
            if pending.name == "mam":
                for queryid, p in list(self._queries.items()):
                    if p is pending:
                        del self._queries[queryid]
            self._complete(pending, event.element)

    def _on_iq_error(self, event: ev.IqError) -> None:
        pending = event.key
        if isinstance(pending, Pending):
            if event.condition in pending.accept:
                pending.condition = event.condition
                self._on_iq_result(event)  # type: ignore[arg-type]
                return
            if pending.name == "mam":
                for queryid, p in list(self._queries.items()):
                    if p is pending:
                        del self._queries[queryid]
            frm = event.element.get("from")
            self._fail(pending, _describe(event.condition, event.text) + (f" from {frm}" if frm else ""))

    def _on_iq_request(self, event: ev.IqRequest) -> None:
        handler = self.on_iq_request
        if handler is None or not handler(event.element):
            if self._stream is not None:
                self._stream.reply_error(event.element)

    def _begin(self, step: str) -> None:
        self._negotiation[step] = Pending(step)

    def _finish(self, step: str) -> None:
        pending = self._negotiation.pop(step, None)
        if pending is not None:
            self._complete(pending)

    def _on_ready(self, event: ev.Ready) -> None:
        self._negotiated.set()

    def _on_negotiation_failed(self, event: ev.NegotiationFailed) -> None:
        reason = _describe(event.condition, event.text)
        self.last_error = f"{event.step}: {reason}"
        pending = self._negotiation.pop(event.step, None)
        if pending is not None:
            self._fail(pending, reason)
        else:
            self._record(event.step, reason)
        self._closing = True
        self._negotiated.set()

    def _on_stream_error(self, event: ev.StreamError) -> None:
        reason = f"stream error {_describe(event.condition, event.text)}"
        if event.see_other_host:
            self._redirect = _redirect_url(self.url, event.see_other_host)
        self.last_error = reason
        self._record("stream", reason)
        self._closing = True
        self._fail_all(reason)
        self._negotiated.set()

    def _on_stream_closed(self, event: ev.StreamClosed) -> None:
        if event.see_other_uri and not self._negotiated.is_set():
            # RFC 7395 section 3.6.1: the server sends us elsewhere before the session starts.
            self._redirect = event.see_other_uri
            self._negotiation.clear()
        elif not self._closing:
            self.last_error = "the server closed the stream"
            self._record("stream", self.last_error)
        self._closing = True
        self._fail_all("the server closed the stream before the reply")
        self._negotiated.set()

    # -- internals: event firing ------------------------------------------------------------

    def _complete(self, pending: Pending, element: Element | None = None) -> None:
        if pending.done:
            return
        pending.done = True
        pending.element = element
        self._fire(
            request_type=REQUEST_TYPE,
            name=pending.name,
            response_time=(time.perf_counter() - pending.start) * 1000.0,
            response_length=self._frame_length if element is not None else 0,
            exception=None,
            context={},
        )
        if pending._event is not None:
            pending._event.set()

    def _fail(self, pending: Pending, reason: str) -> None:
        if pending.done:
            return
        pending.done = True
        pending.error = reason
        self._fire(
            request_type=REQUEST_TYPE,
            name=pending.name,
            response_time=(time.perf_counter() - pending.start) * 1000.0,
            response_length=0,
            exception=XmppRequestFailed(reason),
            context={},
        )
        if pending._event is not None:
            pending._event.set()

    def _record(self, name: str, reason: str) -> None:
        """A failure outside any request (e.g. the stream died while the user was idle)."""
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=0.0,
            response_length=0,
            exception=XmppRequestFailed(reason),
            context={},
        )

    def _raise(self, reason: str) -> None:
        self.last_error = reason
        raise XmppRequestFailed(reason)

    _frame_length = 0


def _describe(condition: str, text: str) -> str:
    return f"{condition} ({text})" if text else condition


def _redirect_url(url: str, host: str) -> str:
    """The URL to retry at after a see-other-host stream error: same scheme and path, new host."""
    scheme, _, rest = url.partition("://")
    path = rest[rest.find("/") :] if "/" in rest else ""
    return f"{scheme}://{host}{path}"


def _no_event(**kwargs: Any) -> None:
    pass


__all__ = ["Pending", "Room", "XmppClient", "XmppRequestFailed", "ns"]
