"""The life of one client's connection: the only place that knows whether a session is usable.

Theory of operation
-------------------
A ``Connection`` holds at most one session at a time (a WebSocket, the watcher that reads it and the
protocol core's stream) and its life, one of::

    CLOSED --open()--> CONNECTING --negotiated--> READY --close()--> CLOSING --> CLOSED
                            \\___________________________\\__ lost, refused, stream error --> CLOSED

Only READY lets stanzas out: every request asks ``require_ready()`` first and fails at once
otherwise, so a user whose connection is gone never waits out a reply timeout and never counts
a message as sent that did not leave.

The session ends exactly once, in ``_end``: requests still in flight fail with the reason when
the server or the network ended it (each is a recorded failure, and so is the end itself when
nothing else records it), and are cancelled without a record when we ended it (``close`` and
``abort``: the user stopped or gave up). The client is told through ``on_end(clean)``.

No greenlet reads: the session's socket has a gevent io watcher whose callback runs in the hub
each time the socket is readable (one greenlet per user, the Locust user's own, and nothing that
could count as a user). The callback reads what the socket has without waiting, and handles each
whole frame in turn: parse it in the core, hand the events on; then it sends whatever the core
queued (acks, answers to pings) in one write. Nothing it calls may wait: the transport's sends from
the hub never block (what the socket does not take leaves when it has room), and a waiting request
is woken through gevent's Event, which is safe to set from the hub. Callbacks of the client
(``on_message`` and the like) run there too, and must not wait either.

Whoever wants to see the frames (a recorder, a probe) appends to ``on_frame_sent`` and
``on_frame_received``: each hook is called with the text of every frame, in order, for every
session of the connection. Empty lists cost one test per frame.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gevent.event import Event

from xmpp_user.core import events as ev
from xmpp_user.core.errors import ProtocolError
from xmpp_user.core.stream import XmppStream
from xmpp_user.session.requests import Pending, Requests, XmppRequestFailed, describe, late_reply
from xmpp_user.session.transport import ProtocolViolation, TransportError, WebSocketTransport

log = logging.getLogger(__name__)


class Life(enum.Enum):
    CLOSED = "closed"
    CONNECTING = "connecting"
    READY = "ready"
    CLOSING = "closing"


_ready_count = 0


def ready_count() -> int:
    """How many connections of this process are READY now: the sessions really open."""
    return _ready_count


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How a connection opens its sessions and how long it waits: fixed for the connection's life. (What the
    stream negotiates, the longest frame accepted included, comes with each stream: ``StreamSettings``.)"""

    timeout: float = 10.0
    """Seconds to wait for any reply (the negotiation's steps included) before it counts as failed."""
    connect_timeout: float = 10.0
    """Seconds to open the WebSocket."""
    verify_tls: bool = True
    source_address: str | None = None
    """The local address to connect from (None: the system's choice)."""
    patience: float = 0.0
    """Seconds a request that timed out (recorded as failed) is still awaited: a late reply then lets the
    caller carry on, as a browser client waits out a slow server."""


class Connection:
    def __init__(
        self,
        requests: Requests,
        on_event: Callable[[ev.Event], None],
        on_end: Callable[[bool], None],
        settings: ConnectionSettings,
    ) -> None:
        self.requests = requests
        self._on_event = on_event
        self._on_end = on_end
        """Called once per session when it ends: True if we ended it, False if it broke."""
        self.settings = settings
        self._life = Life.CLOSED
        self.last_error = ""
        """Why the last session ended or could not start; empty after a clean close."""
        self.stream: XmppStream | None = None
        self.received_at = 0.0
        """time.monotonic() of the last frame received (a client's keepalive pings after a silence)."""
        self.url = ""
        """Where the current (or last) session was opened."""
        self.on_frame_sent: list[Callable[[str], None]] = []
        """Called with each frame once the transport has taken it."""
        self.on_frame_received: list[Callable[[str], None]] = []
        """Called with each frame received, before the core reads it."""
        self.redirect = ""
        self._transport: WebSocketTransport | None = None
        self._settled: Event | None = None
        """Set when negotiation ends, whichever way (made when a session opens)."""
        self._gone: Event | None = None
        """Set when the socket of a session we are closing goes (made by ``close``)."""
        self._ended = True
        self._handling = False

    @property
    def life(self) -> Life:
        return self._life

    @life.setter
    def life(self, life: Life) -> None:
        global _ready_count
        _ready_count += (life is Life.READY) - (self._life is Life.READY)
        self._life = life

    @property
    def ready(self) -> bool:
        return self._life is Life.READY

    @property
    def reading(self) -> bool:
        """True while frames received are handled: what the core queues now leaves once they are."""
        return self._handling

    def require_ready(self) -> XmppStream:
        """The stream, if stanzas may be sent now; otherwise XmppRequestFailed at once (nothing recorded)."""
        if self.life is not Life.READY or self.stream is None:
            raise XmppRequestFailed(f"not connected ({self.last_error or self.life.value})")
        return self.stream

    # -- opening --------------------------------------------------------------------------

    def open(self, url: str, stream: XmppStream) -> str:
        """One attempt: WebSocket to ``url``, then negotiation. Returns once READY, with '' or
        the URL the server redirects us to; raises XmppRequestFailed (recorded) otherwise."""
        self.abort()
        self.life = Life.CONNECTING
        self.stream, self.url, self.redirect, self.last_error = stream, url, "", ""
        self._settled = Event()
        self._ended = False
        connect = Pending("connect")
        try:
            settings = self.settings
            transport = WebSocketTransport.open(
                url, settings.connect_timeout, settings.verify_tls, settings.source_address, stream.settings.max_frame
            )
        except TransportError as exc:
            self.requests.fail(connect, str(exc))
            self._end(str(exc), record=False)
            raise XmppRequestFailed(str(exc)) from None
        self._transport = transport
        self.requests.complete(connect)
        stream.start()
        self.flush()
        transport.watch(self._on_readable, transport, stream)
        try:
            return self._negotiated()
        finally:
            self._settled = None

    def _negotiated(self) -> str:
        """``open``'s second half: wait for the negotiation to end, whichever way."""
        settled, timeout = self._settled, self.settings.timeout
        if not settled.wait(timeout):
            # Recorded as failed now; with patience the negotiation may still finish late (a slow server).
            reason = f"negotiation did not finish within {timeout:g} s"
            steps = [step for step in self.requests.negotiation.values() if not step.done]
            for step in steps:
                self.requests.time_out(step, timeout)
            if not steps:
                self.requests.record("stream", reason)
            if not settled.wait(self.settings.patience):
                self._end(reason, record=False)
            elif not steps:
                late_reply()  # the server did answer the stream: late (steps answered late say so themselves)
        if self.redirect and self.life is not Life.READY:
            self.abort()
            return self.redirect
        if self.life is not Life.READY:
            reason = self.last_error or "negotiation failed"
            self.abort()
            raise XmppRequestFailed(reason)
        return ""

    # -- closing --------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """End the session politely: cancel what is in flight, send ``<close/>``, wait for the
        server's for up to ``timeout`` seconds, then drop the socket."""
        stream = self.stream
        if self.life in (Life.READY, Life.CONNECTING) and stream is not None and self._transport is not None:
            self.life = Life.CLOSING
            self._end(None)
            stream.close()
            gone = self._gone = Event()
            try:
                self.flush()
            except XmppRequestFailed:
                pass
            if not self._handling:  # from a frame's handling (in the hub) nothing may wait
                gone.wait(timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once; what is still in flight is cancelled without a record."""
        if not self._ended:
            self._end(None)
        self.life = Life.CLOSED
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._gone = None

    def _end(self, reason: str | None, record: bool = True) -> None:
        """End the session once: ``reason`` None means we ended it (in-flight requests are
        cancelled); otherwise they fail with ``reason``, recorded as a ``stream`` failure too
        when ``record`` says nothing else has recorded it."""
        if self._ended:
            return
        self._ended = True
        if reason is not None:
            self.last_error = reason
            if record:
                self.requests.record("stream", reason)
            if self.life is not Life.CLOSING:
                self.life = Life.CLOSED
        stream = self.stream
        self.requests.end_all(stream.drop_pending() if stream is not None else (), reason)
        if self._settled is not None:
            self._settled.set()
        self._on_end(reason is None)

    # -- sending --------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the core has queued; a send failure ends the session (recorded)."""
        stream, transport = self.stream, self._transport
        if stream is None:
            return
        frames = stream.data_to_send()
        if not frames:
            return
        if transport is None:
            raise XmppRequestFailed(f"not connected ({self.last_error or self.life.value})")
        hooks = self.on_frame_sent
        try:
            if len(frames) == 1:
                transport.send(frames[0])
            else:
                transport.send_all(frames)
            if hooks:
                for frame in frames:
                    for hook in hooks:
                        hook(frame)
        except TransportError as exc:
            self._lost(transport, str(exc))
            raise XmppRequestFailed(str(exc)) from None

    # -- reading: the io watcher's callback, in the hub ---------------------------------------

    def _on_readable(self, transport: WebSocketTransport, stream: XmppStream) -> None:
        if self._transport is not transport:
            return  # a session we have already dropped
        on_event, requests, hooks = self._on_event, self.requests, self.on_frame_received
        transport.receive()
        self._handling = True
        try:
            while True:
                try:
                    frame = transport.next_message()
                except ProtocolViolation as exc:
                    # The peer broke the WebSocket protocol; the transport has already closed the socket.
                    if self._transport is transport:
                        self._end(str(exc))
                        self._drop(transport)
                    return
                except TransportError as exc:  # the socket's end (Closed) included
                    self._lost(transport, str(exc))
                    return
                if frame is None:
                    break
                requests.frame_length = len(frame)
                self.received_at = time.monotonic()
                try:
                    if hooks:
                        for hook in hooks:
                            hook(frame)
                    for event in stream.receive_frame(frame):
                        handler = _HANDLERS.get(type(event))
                        if handler is None:
                            on_event(event)
                        else:
                            handler(self, event)
                except ProtocolError as exc:
                    self._protocol_failure(transport, str(exc))
                    return
                except Exception as exc:  # a bug in a callback must not leave the user waiting forever
                    log.exception("error while handling a frame")
                    self._protocol_failure(transport, f"internal error while handling a frame: {exc!r}")
                    return
                if self._transport is not transport:
                    return
                if self.life is Life.CLOSED and stream.state == "closed":
                    # The closing handshake is over (their </close> answered): the socket goes.
                    self._drop(transport)
                    return
            try:
                self.flush()
            except XmppRequestFailed:
                pass
        finally:
            self._handling = False

    def _lost(self, transport: WebSocketTransport, reason: str) -> None:
        """The transport broke or closed under us."""
        if self._transport is not transport:
            return
        if self.life is Life.CLOSING or self._ended:
            self._end(None)
        else:
            self._end(f"connection lost: {reason}")
        self._drop(transport)

    def _protocol_failure(self, transport: WebSocketTransport, reason: str) -> None:
        """The server broke the protocol: record it, say goodbye, drop the connection."""
        if self._transport is not transport:
            return
        if self.stream is not None:
            self.stream.close()
            try:
                self.flush()
            except XmppRequestFailed:
                pass
        self._end(reason)
        self._drop(transport)

    def _drop(self, transport: WebSocketTransport) -> None:
        if self._transport is transport:
            self._transport = None
            self.life = Life.CLOSED
            if self._gone is not None:
                self._gone.set()
        transport.close()

    # -- negotiation and stream events ------------------------------------------------------

    def _begin(self, step: str) -> None:
        self.requests.negotiation[step] = Pending(step)

    def _finish(self, step: str) -> None:
        pending = self.requests.negotiation.pop(step, None)
        if pending is not None:
            self.requests.complete(pending)

    def _on_ready(self, event: ev.Ready) -> None:
        if self.life is Life.CONNECTING:
            self.life = Life.READY
        if self._settled is not None:
            self._settled.set()

    def _on_negotiation_failed(self, event: ev.NegotiationFailed) -> None:
        reason = describe(event.condition, event.text)
        pending = self.requests.negotiation.pop(event.step, None)
        if pending is not None:
            self.requests.refuse(pending, reason)
        else:
            self.requests.record(event.step, reason)
        # The core has queued <close/>: the server's answer ends the session quietly.
        self._end(f"{event.step}: {reason}", record=False)
        self.life = Life.CLOSING

    def _on_stream_error(self, event: ev.StreamError) -> None:
        if event.see_other_host:
            self.redirect = _redirect_url(self.url, event.see_other_host)
        self._end(f"stream error {describe(event.condition, event.text)}")
        self.life = Life.CLOSING  # the core answered with <close/>

    def _on_stream_closed(self, event: ev.StreamClosed) -> None:
        if event.see_other_uri and self.life is Life.CONNECTING:
            # RFC 7395 section 3.6.1: the server sends us elsewhere before the session starts.
            self.redirect = event.see_other_uri
            self._end(None)
        elif self.life is not Life.CLOSING:
            self._end("the server closed the stream")
        self.life = Life.CLOSED


_HANDLERS: dict[type, Callable[[Connection, ev.Event], None]] = {
    ev.RegisterRequested: lambda c, e: c._begin("register"),
    ev.Registered: lambda c, e: c._finish("register"),
    ev.AuthRequested: lambda c, e: c._begin("auth"),
    ev.Authenticated: lambda c, e: c._finish("auth"),
    ev.BindRequested: lambda c, e: c._begin("bind"),
    ev.Bound: lambda c, e: c._finish("bind"),
    ev.Ready: Connection._on_ready,
    ev.NegotiationFailed: Connection._on_negotiation_failed,
    ev.StreamError: Connection._on_stream_error,
    ev.StreamClosed: Connection._on_stream_closed,
    ev.StreamOpened: lambda c, e: None,
}
"""What the connection does itself with the core's events (one table for all connections); the client gets the
rest."""


def _redirect_url(url: str, host: str) -> str:
    """The URL to retry at after a see-other-host stream error: same scheme and path, new host."""
    scheme, _, rest = url.partition("://")
    path = rest[rest.find("/") :] if "/" in rest else ""
    return f"{scheme}://{host}{path}"
