"""Our part in MUC rooms (XEP-0045): joins, leaves, nick changes and room messages, settled by what the room sends.

Theory of operation
-------------------
Every room we join or try to join is a ``Room`` in the ``RoomTable`` from our join presence until our time
there ends, which happens exactly once and is told to ``on_room_exit(room, left)``::

    joining --own presence (110)--> joined --muc_leave--> leaving --own unavailable (110)--> gone, left
       |  \\--item-not-found (locked by its creator)--> the join sent again after LOCKED_ROOM_RETRY, until the timeout
       |   \\--conflict (nick taken)--> joined again as nick-2, nick-3, ... (NICK_CLASHES)
       \\--any other error, kicked, room destroyed, the session ended--> gone, not left

A room we create is configured as an instant room at once, as a browser client does (its configuration is
a request the client fires by itself). Occupants listed before our own presence are the room's initial
list; those who come after are joiners, told to ``on_occupant_joined``. Our groupchat messages are done
when the room reflects them from our nick, or refused by an error message with their id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from xml.etree.ElementTree import Element

import gevent

from xmpp_user.core.stanza import resource, stanza_error
from xmpp_user.features import muc
from xmpp_user.session.connection import Connection
from xmpp_user.session.requests import Pending, Requests, XmppRequestFailed, describe
from xmpp_user.session.rooms import Room, RoomTable, normalise

LOCKED_ROOM_RETRY = 0.2
"""Seconds before joining again a room that refused us as not existing: its creator has not
configured it yet (a new room stays locked until then, XEP-0045 section 10.1.3)."""
NICK_CLASHES = 5
"""Other nicks tried when the room answers that ours is taken (``conflict``): as Converse.js does with
``muc_nickname_from_jid``, ``nick-2``, ``nick-3``, ... After a connection is cut, a server that keeps
the old session for stream resumption keeps its occupant too, under our nick."""


class Muc:
    """The rooms of one client, across its sessions; requests go out through its connection."""

    def __init__(self, connection: Connection, requests: Requests, send_iq: Callable[..., Pending]) -> None:
        self.connection = connection
        self.requests = requests
        self._send_iq = send_iq
        self.rooms = RoomTable()
        self.on_occupant_joined: list[Callable[[Room, str], None]] = []
        self.on_room_exit: list[Callable[[Room, bool], None]] = []
        """Called once for every room we joined or tried to join, when our time there ends: True if the room
        confirmed our own leave (everything it routed to us before has been read), False otherwise (a join
        refused, kicked, room destroyed, the session ended while we were in the room or joining it)."""
        self._background: list[Pending] = []
        """Requests fired by ourselves (room configuration); expired as new ones come."""

    def room(self, jid: str) -> Room:
        """The room we are in (or joining); XmppRequestFailed if we are not (nothing recorded)."""
        room = self.rooms.get(jid)
        if room is None:
            raise XmppRequestFailed(f"not in room {jid} ({self.connection.last_error or 'not joined'})")
        return room

    # -- requests ---------------------------------------------------------------------------

    def join(self, room: str, nick: str, history_max: int | None, extra: str, frm: str = "") -> Pending:
        stream = self.connection.require_ready()
        jid = normalise(room)
        state = self.rooms[jid] = Room(jid, nick)
        stanza = muc.join(jid, nick, history_max, extra, stream.presence_id(), frm)
        pending = Pending("muc_join", lambda: self.requests.joins.pop(jid, None))
        state.join_stanza, state.join_args = stanza, (history_max, extra)
        self.requests.joins[jid] = pending
        stream.send(stanza)
        self.connection.flush()
        return pending

    def leave(self, room: str) -> Pending:
        stream = self.connection.require_ready()
        state = self.room(room)
        pending = Pending("muc_leave", lambda: self.requests.leaves.pop(state.jid, None))
        self.requests.leaves[state.jid] = pending
        state.leaving = True
        stream.send(muc.leave(state.jid, state.nick))
        self.connection.flush()
        return pending

    def change_nick(self, room: str, nick: str) -> Pending:
        stream = self.connection.require_ready()
        state = self.room(room)
        if not state.joined:
            raise XmppRequestFailed(f"not in room {room} yet")
        pending = Pending("muc_nick", lambda: self.requests.joins.pop(state.jid, None))
        self.requests.joins[state.jid] = pending
        stream.send(muc.change_nick(state.jid, nick))
        self.connection.flush()
        return pending

    def say(self, room: str, body: str, extra: str) -> Pending:
        stream = self.connection.require_ready()
        to = self.rooms.jid(room)
        id_ = stream.new_id("message")
        pending = Pending("message", lambda: self.requests.messages.pop(id_, None))
        self.requests.messages[id_] = pending
        stream.send(muc.groupchat(to, body, id_, extra))
        self.connection.flush()
        return pending

    # -- what the rooms send ------------------------------------------------------------------

    def message(self, element: Element) -> bool:
        """Settle our message that ``element`` reflects or refuses; False if it is a refusal (no live message)."""
        requests = self.requests
        id_ = element.get("id")
        if id_ is not None and id_ in requests.messages:
            if element.get("type") == "error":
                requests.refuse(requests.messages.pop(id_), describe(*stanza_error(element)))
                return False
            frm = element.get("from", "")
            room = self.rooms.of(frm)
            if room is not None and resource(frm) == room.nick:
                requests.complete(requests.messages.pop(id_), element)
        return True

    def presence(self, element: Element) -> None:
        frm = element.get("from", "")
        room = self.rooms.of(frm)
        if room is not None:
            nick = resource(frm)
            if nick:
                self._occupant_presence(room, nick, element)
            # A presence from the room's bare JID (ejabberd announces its entity caps that way)
            # is the room speaking, not an occupant.

    def session_ended(self) -> None:
        # Every room we were in or joining: whatever the room still had for us will never be read.
        rooms = list(self.rooms.values())
        self.rooms.clear()
        self._background.clear()
        for room in rooms:
            self._exited(room, False)

    def _exited(self, room: Room, left: bool) -> None:
        room.joined = False
        for callback in self.on_room_exit:
            callback(room, left)

    def _occupant_presence(self, room: Room, nick: str, element: Element) -> None:
        requests = self.requests
        type_ = element.get("type")
        if type_ == "error":
            condition, text = stanza_error(element)
            join = requests.joins.get(room.jid)
            if (
                condition == "item-not-found"
                and join is not None
                and not room.joined
                and time.perf_counter() - join.start + LOCKED_ROOM_RETRY < self.connection.settings.timeout
            ):
                gevent.spawn_later(LOCKED_ROOM_RETRY, self._join_again, room, join)
                return
            if condition == "conflict" and join is not None and not room.joined and room.clashes < NICK_CLASHES:
                room.clashes += 1
                base = room.nick if room.clashes == 1 else room.nick.rsplit("-", 1)[0]
                room.nick = f"{base}-{room.clashes + 1}"
                room.join_stanza = muc.join(room.jid, room.nick, *room.join_args)
                self._join_again(room, join)
                return
            for table in (requests.joins, requests.leaves):
                pending = table.pop(room.jid, None)
                if pending is not None:
                    requests.refuse(pending, describe(condition, text))
            if not room.joined and self.rooms.get(room.jid) is room:
                self.rooms.pop(room.jid)
                self._exited(room, False)  # a join refused: our time there ends before it began
            return
        codes = muc.status_codes(element)
        if type_ == "unavailable":
            room.remove_occupant(nick)
            if muc.SELF_PRESENCE in codes and muc.NICK_CHANGED not in codes:
                self.rooms.pop(room.jid, None)
                leave = requests.leaves.pop(room.jid, None)
                if leave is not None:
                    requests.complete(leave, element)
                self._exited(room, room.leaving)
            return
        tag_of = self.rooms.tag_of
        is_new = room.set_occupant(nick, tag_of(element) if tag_of is not None else "")
        if muc.SELF_PRESENCE in codes:
            room.nick = nick
            if not room.joined and muc.ROOM_CREATED in codes:
                self._configure_new_room(room)
            room.joined = True
            pending = requests.joins.pop(room.jid, None)
            if pending is not None:
                requests.complete(pending, element)
        elif is_new and room.joined and not room.leaving:
            # Occupants listed before our own presence are the initial list, not joiners; and a
            # room we are leaving is no place for new requests (it answers them not-acceptable).
            for callback in self.on_occupant_joined:
                callback(room, nick)

    def _join_again(self, room: Room, join: Pending) -> None:
        """Retry a join refused because the room is still locked by its creator, or under another nick."""
        if join.done or self.rooms.get(room.jid) is not room or not self.connection.ready:
            return
        try:
            self.connection.require_ready().send(room.join_stanza)
            self.connection.flush()
        except XmppRequestFailed:
            pass  # the session ended: the join has failed with it

    def _configure_new_room(self, room: Room) -> None:
        """Accept the default configuration of a room we created: it is locked until we do."""
        self._background = self.requests.expire(self._background, self.connection.settings.timeout)
        try:
            self._background.append(self._send_iq("muc_configure", "set", muc.INSTANT_ROOM, room.jid))
        except XmppRequestFailed:
            pass
