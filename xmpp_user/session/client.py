"""An XMPP client for load tests: the features a scenario calls, over one ``Connection``.

Every round trip is reported through a Locust-style ``request`` event hook when its reply
arrives (as ``locust.contrib.mqtt`` does): the connection's reading (in the hub) matches the reply to the request
by IQ id, MUC room, message id or MAM query id, and fires the event with the time since the
request was queued (``xmpp_user.session.requests``). Requests can be waited for one at a time or
pipelined (``wait=False``, then ``wait_all``), the way a browser client fires its start-up
queries. Whether a request may go out at all is the connection's business
(``xmpp_user.session.connection``): a user whose connection is gone fails at once. What a room
sends and what we send it (joins, leaves, nicks, messages) is settled in ``xmpp_user.session.muc``.

Failures are fired as events too, then raised as ``XmppRequestFailed``: a subclass of
Locust's ``RescheduleTask``, so a failed request ends the current task quietly (it is
already recorded) and the user carries on with its next task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from operator import attrgetter
from typing import Any
from xml.etree.ElementTree import Element

import gevent

from xmpp_user.core import events as ev
from xmpp_user.core.framing import DEFAULT_MAX_FRAME
from xmpp_user.core.stream import Credentials, StreamSettings, XmppStream
from xmpp_user.features import carbons, disco, mam, ping, roster, vcard
from xmpp_user.session.connection import Connection, ConnectionSettings
from xmpp_user.session.muc import LOCKED_ROOM_RETRY, NICK_CLASHES, Muc
from xmpp_user.session.requests import REQUEST_TYPE, Pending, Requests, XmppRequestFailed, describe
from xmpp_user.session.rooms import Room, RoomTable

log = logging.getLogger(__name__)

NO_VCARD = ("service-unavailable", "item-not-found", "feature-not-implemented")
"""Error conditions by which a server says an entity has no vCard (a client then shows no avatar)."""
_MAX_REDIRECTS = 3

__all__ = ["LOCKED_ROOM_RETRY", "NICK_CLASHES", "NO_VCARD", "REQUEST_TYPE", "Pending", "Room", "XmppClient",
           "XmppRequestFailed"]  # fmt: skip


class _Setting:
    """A field of one of the client's frozen settings, read and set as the client's own attribute (the keyword
    arguments and attributes of earlier releases): setting it replaces the settings object whole."""

    def __init__(self, path: str) -> None:
        self._settings = attrgetter(path)
        self._holder, _, self._attr = path.rpartition(".")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return self if client is None else getattr(self._settings(client), self.name)

    def __set__(self, client: Any, value: Any) -> None:
        holder = attrgetter(self._holder)(client) if self._holder else client
        setattr(holder, self._attr, replace(getattr(holder, self._attr), **{self.name: value}))


class XmppClient:
    # The settings as attributes, as earlier releases had them: reading one reads the settings, setting one
    # replaces them (a stream setting takes effect at the next connect).
    resource = _Setting("stream_settings")
    stream_management = _Setting("stream_settings")
    sm_resume = _Setting("stream_settings")
    ack_every = _Setting("stream_settings")
    legacy_session = _Setting("stream_settings")
    register = _Setting("stream_settings")
    max_frame = _Setting("stream_settings")
    timeout = _Setting("connection.settings")
    patience = _Setting("connection.settings")

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
        max_frame: int = DEFAULT_MAX_FRAME,
        patience: float = 0.0,
    ) -> None:
        self.url = url
        self.domain = domain
        self.credentials = credentials or Credentials()
        self.stream_settings = StreamSettings(
            resource=resource, stream_management=stream_management, register=register, max_frame=max_frame
        )
        """What each new session's stream negotiates (``dataclasses.replace`` it before ``connect``)."""
        self.mechanism = ""
        """The SASL mechanism the last session authenticated with."""
        self.requests = Requests(request_event)
        settings = ConnectionSettings(
            timeout=timeout, connect_timeout=connect_timeout, verify_tls=verify_tls, source_address=source_address,
            patience=patience,
        )  # fmt: skip
        self.connection = Connection(self.requests, self._on_event, self._on_session_end, settings)
        self.on_message: list[Callable[[Element], None]] = []
        """Called with each live message (not archive results) once its waiter, if any, is served."""
        self.on_presence: list[Callable[[Element], None]] = []
        self.on_iq_request: Callable[[Element], bool] | None = None
        """Answers server IQs the core does not; return False to let the client refuse them."""
        self.muc = Muc(self.connection, self.requests, self.send_iq)
        """Our part in MUC rooms; its tables and callbacks are the client's (below)."""
        self.rooms: RoomTable = self.muc.rooms
        self.on_occupant_joined: list[Callable[[Room, str], None]] = self.muc.on_occupant_joined
        self.on_room_exit: list[Callable[[Room, bool], None]] = self.muc.on_room_exit
        """Called once for every room we joined or tried to join, when our time there ends (see ``Muc``)."""
        self.jid = ""
        self.pace = 0.0
        """Seconds kept between two stanzas we send (0: none). A browser hands each WebSocket frame to its
        network process on its own, so a server reads a browser's requests one wake-up each, where ours,
        sent back to back, arrive together: that costs the server more CPU (see xmpp_user.fidelity.motion)."""
        self._sent_at = 0.0
        self._dispatch: dict[type, Callable[[Any], None]] = {
            ev.MessageReceived: self._on_message,
            ev.PresenceReceived: self._on_presence,
            ev.IqResult: self._on_iq_result,
            ev.IqError: self._on_iq_error,
            ev.IqRequest: self._on_iq_request,
        }

    # -- session --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.connection.ready

    @property
    def last_error(self) -> str:
        return self.connection.last_error

    def connect(self) -> None:
        """Open the WebSocket, authenticate and bind; fires connect, auth and bind."""
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            stream = XmppStream(self.domain, self.credentials, self.stream_settings)
            self.rooms.clear()
            redirect = self.connection.open(url, stream)
            if not redirect:
                self.jid, self.mechanism = stream.jid, stream.mechanism
                return
            url = redirect
            log.info("redirected to %s", url)
        reason = f"more than {_MAX_REDIRECTS} redirects"
        self.requests.record("stream", reason)
        self.connection.last_error = reason
        raise XmppRequestFailed(reason)

    def close(self, timeout: float = 2.0) -> None:
        """Close the stream politely (``<close/>``, wait for the server's), then the socket.
        Requests still in flight are cancelled: nothing is recorded for them."""
        self.connection.close(timeout)

    def abort(self) -> None:
        """Drop the connection at once; requests still in flight are cancelled."""
        self.connection.abort()

    def cancel_all(self) -> None:
        """Stop waiting for every request in flight, without a record (the user is going away);
        the session stays open."""
        stream = self.connection.stream
        self.requests.end_all(stream.drop_pending() if stream is not None else (), None)

    def send_stanza(self, stanza: str) -> None:
        """Send a stanza that has no reply to wait for (e.g. a global unavailable presence)."""
        self._keep_pace()
        self.connection.require_ready().send(stanza)
        self.connection.flush()

    def _keep_pace(self) -> None:
        if self.pace > 0:
            now = time.monotonic()
            gap = self._sent_at + self.pace - now
            # A frame callback (in gevent's hub) must not block: what it sends leaves at once.
            if gap > 0 and not self.connection.reading:
                gevent.sleep(gap)
                now = time.monotonic()
            self._sent_at = now

    @property
    def last_received(self) -> float:
        """``time.monotonic()`` when the last frame arrived (0.0: none yet): a client pings after a silence."""
        return self.connection.received_at

    def reply_result(self, request: Element, payload: str = "") -> None:
        """Answer an IQ request (see ``on_iq_request``) with a result: from ``on_iq_request`` it leaves once
        the frame that asked is handled, from elsewhere at once."""
        stream = self.connection.stream
        if stream is not None:
            stream.reply_result(request, payload)
            if not self.connection.reading:
                self.connection.flush()

    def room(self, jid: str) -> Room:
        """The room we are in (or joining); XmppRequestFailed if we are not (nothing recorded)."""
        return self.muc.room(jid)

    # -- generic requests -----------------------------------------------------------------

    def send_iq(
        self,
        name: str,
        type_: str,
        payload: str,
        to: str | None = None,
        accept: tuple[str, ...] = (),
        from_: str | None = None,
    ) -> Pending:
        """Queue an IQ; an error reply whose condition is in ``accept`` counts as an answer. ``from_``: our JID
        as the IQ's 'from', where the client we stand for writes it."""
        self._keep_pace()
        stream = self.connection.require_ready()
        pending = Pending(name, accept=accept)
        id_ = stream.send_iq(type_, payload, to, pending, name, from_)
        pending._forget = lambda: stream.forget(id_)
        self.connection.flush()
        return pending

    def iq(
        self,
        name: str,
        type_: str,
        payload: str,
        to: str | None = None,
        wait: bool = True,
        accept: tuple[str, ...] = (),
        from_: str | None = None,
    ) -> Pending:
        pending = self.send_iq(name, type_, payload, to, accept, from_)
        return self.wait(pending) if wait else pending

    def wait(self, pending: Pending, timeout: float | None = None) -> Pending:
        """Block until the reply arrives or the timeout passes; raises XmppRequestFailed on failure. A
        request that timed out (recorded) is awaited ``patience`` seconds more."""
        return self.requests.wait(pending, self.timeout if timeout is None else timeout, patience=self.patience)

    def wait_all(self, pendings: Iterable[Pending], timeout: float | None = None) -> list[Pending]:
        """Wait for every request in turn (one shared deadline, then one shared ``patience`` for those that
        timed out); raise for the first failure."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.perf_counter() + limit
        pendings = list(pendings)
        for p in pendings:
            try:
                self.requests.wait(p, max(0.0, deadline - time.perf_counter()), limit)
            except XmppRequestFailed:
                pass
        if self.patience > 0:
            deadline = time.perf_counter() + self.patience
            for p in pendings:
                if p.late:
                    try:
                        self.requests.wait(p, 0.0, limit, max(0.0, deadline - time.perf_counter()))
                    except XmppRequestFailed:
                        pass
        for p in pendings:
            if p.error is not None:
                raise XmppRequestFailed(f"{p.name}: {p.error}")
        return pendings

    def expire(self, pendings: Iterable[Pending], timeout: float | None = None) -> list[Pending]:
        """Fail the requests of ``pendings`` older than the timeout; returns those still awaited.

        For requests fired from callbacks that nobody waits for (a vCard for each new occupant).
        """
        return self.requests.expire(pendings, self.timeout if timeout is None else timeout)

    # -- features -------------------------------------------------------------------------

    def disco_info(
        self,
        to: str | None = None,
        node: str | None = None,
        wait: bool = True,
        accept: tuple[str, ...] = (),
        from_: str | None = None,
        payload: str | None = None,
    ) -> Pending:
        """``payload``: the query as the client we stand for writes it (default: ``disco.info(node)``)."""
        return self.iq("disco_info", "get", disco.info(node) if payload is None else payload, to, wait, accept, from_)

    def disco_items(
        self,
        to: str | None = None,
        wait: bool = True,
        accept: tuple[str, ...] = (),
        from_: str | None = None,
        payload: str = disco.ITEMS,
    ) -> Pending:
        return self.iq("disco_items", "get", payload, to, wait, accept, from_)

    def roster(self, wait: bool = True, payload: str = roster.GET) -> Pending:
        return self.iq("roster", "get", payload, None, wait)

    def enable_carbons(self, wait: bool = True, accept: tuple[str, ...] = (), from_: str | None = None) -> Pending:
        return self.iq("carbons", "set", carbons.ENABLE, None, wait, accept, from_)

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
        self,
        room: str,
        nick: str,
        history_max: int | None = None,
        extra: str = "",
        wait: bool = True,
        from_: str = "",
    ) -> Pending:
        """Join ``room`` as ``nick``; done when our own presence (status 110) comes back. ``from_``: our JID as
        the presence's 'from', where the client we stand for writes it.

        A room that refuses us as not existing while its creator configures it is joined again
        until the timeout; a new room we create ourselves is configured as an instant room, as
        a browser client does.
        """
        self._keep_pace()
        pending = self.muc.join(room, nick, history_max, extra, from_)
        return self.wait(pending) if wait else pending

    def muc_leave(self, room: str, wait: bool = True) -> Pending:
        pending = self.muc.leave(room)
        return self.wait(pending) if wait else pending

    def muc_nick(self, room: str, nick: str, wait: bool = True) -> Pending:
        """Change nickname; done when the room confirms the new one with status 110."""
        pending = self.muc.change_nick(room, nick)
        return self.wait(pending) if wait else pending

    def groupchat(self, room: str, body: str, extra: str = "", wait: bool = True) -> Pending:
        """Send to a room; done when the room reflects the message back to us."""
        pending = self.muc.say(room, body, extra)
        return self.wait(pending) if wait else pending

    def mam(
        self,
        to: str | None = None,
        max_: int = 50,
        before: str | None = "",
        after: str | None = None,
        wait: bool = True,
        accept: tuple[str, ...] = (),
        form: bool = True,
    ) -> Pending:
        """Query an archive (a room's, or ours when ``to`` is None); done at ``<fin/>``.

        The default asks for the latest page, as a client opening a room does. The archived
        messages are collected in ``pending.messages``. ``form=False`` leaves out the (empty)
        data form, as Converse.js does when it filters nothing.
        """
        stream = self.connection.require_ready()
        queryid = stream.new_id("mam_query")
        pending = Pending("mam", accept=accept)
        self.requests.queries[queryid] = pending
        id_ = stream.send_iq("set", mam.query(queryid, max_, before, after, form=form), to, pending, "mam")

        def forget() -> None:
            stream.forget(id_)
            self.requests.queries.pop(queryid, None)

        pending._forget = forget
        self.connection.flush()
        return self.wait(pending) if wait else pending

    # -- incoming stanzas ---------------------------------------------------------------------

    def _on_event(self, event: ev.Event) -> None:
        self._dispatch[type(event)](event)

    def _on_session_end(self, clean: bool) -> None:
        self.muc.session_ended()

    def _on_message(self, event: ev.MessageReceived) -> None:
        element = event.element
        requests = self.requests
        if requests.queries:
            found = mam.result(element)
            if found is not None:
                pending = requests.queries.get(found[0])
                if pending is not None:
                    pending.messages.append(found[1])
                return
        if not self.muc.message(element):
            return
        for callback in self.on_message:
            callback(element)

    def _on_presence(self, event: ev.PresenceReceived) -> None:
        element = event.element
        self.muc.presence(element)
        for callback in self.on_presence:
            callback(element)

    def _on_iq_result(self, event: ev.IqResult) -> None:
        pending = event.key
        if isinstance(pending, Pending):
            if pending.name == "mam":
                self._forget_query(pending)
            self.requests.complete(pending, event.element)

    def _on_iq_error(self, event: ev.IqError) -> None:
        pending = event.key
        if isinstance(pending, Pending):
            if pending.name == "mam":
                self._forget_query(pending)
            if event.condition in pending.accept:
                pending.condition = event.condition
                self.requests.complete(pending, event.element)
                return
            frm = event.element.get("from")
            self.requests.refuse(pending, describe(event.condition, event.text) + (f" from {frm}" if frm else ""))

    def _forget_query(self, pending: Pending) -> None:
        queries = self.requests.queries
        for queryid, p in list(queries.items()):
            if p is pending:
                del queries[queryid]

    def _on_iq_request(self, event: ev.IqRequest) -> None:
        handler = self.on_iq_request
        if handler is None or not handler(event.element):
            stream = self.connection.stream
            if stream is not None:
                stream.reply_error(event.element)
