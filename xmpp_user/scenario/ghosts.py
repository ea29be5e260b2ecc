"""Ghosts: occupants whose client dropped its connection without leaving, as a closed browser tab does.

With a resumable session (XEP-0198) the server keeps such an occupant in the room until the session
times out (Prosody's ``smacks_hibernation_time``, ejabberd's ``resume_timeout``), then tells the room it
left. A ``GhostWatch`` sits in each room the process's users drop out of (one session per process,
in the room as ``ghost-watch-`` and 6 hex digits) and records, as the request ``ghost``, how long the
server kept each dropped occupant: its response time is the time from the drop to the room's
unavailable presence, so the request table and the report's latency by phase show it. Ghosts the
server still keeps when the run ends are said once as a deviation (``ghosts_outlived_run``), not
recorded as failures: the server does what it was configured to do.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any
from xml.etree.ElementTree import Element

from gevent.lock import Semaphore

from xmpp_user.core.stanza import bare, resource
from xmpp_user.run.deviations import DEVIATIONS
from xmpp_user.session.client import REQUEST_TYPE, XmppClient, XmppRequestFailed

log = logging.getLogger(__name__)

NAME = "ghost"


class GhostWatch:
    def __init__(self, settings: Any, request_event: Any) -> None:
        self.settings = settings
        self.request_event = request_event
        self.client: XmppClient | None = None
        self.rooms: set[str] = set()
        self.dropped: dict[tuple[str, str], float] = {}
        """(room, nick) -> time.monotonic() of the drop, until the room says the occupant left."""
        self._lock = Semaphore()
        self.nick = f"ghost-watch-{os.urandom(3).hex()}"
        """Unique across workers (their pids may be the same, one per container)."""


    def watch(self, room: str) -> None:
        """Be in ``room`` (a users' room) before anyone drops out of it; raises XmppRequestFailed."""
        with self._lock:
            if room in self.rooms and self.client is not None and self.client.connected:
                return
            if self.client is None or not self.client.connected:
                s = self.settings
                self.client = XmppClient(
                    s.url, s.domain, s.credentials(0), request_event=self.request_event, timeout=s.timeout,
                    connect_timeout=s.timeout, verify_tls=s.verify_tls,
                )  # fmt: skip
                self.client.on_presence.append(self._presence)
                self.client.connect()
                self.rooms.clear()
            self.client.muc_join(room, self.nick, history_max=0)
            self.rooms.add(room)

    def drop(self, room: str, nick: str) -> None:
        """A user of ours is about to drop its connection while in ``room`` as ``nick``."""
        self.dropped[(room, nick)] = time.monotonic()

    def _presence(self, element: Element) -> None:
        if element.get("type") != "unavailable":
            return
        frm = element.get("from", "")
        dropped_at = self.dropped.pop((bare(frm), resource(frm)), None)
        if dropped_at is not None:
            self.request_event.fire(
                request_type=REQUEST_TYPE,
                name=NAME,
                response_time=(time.monotonic() - dropped_at) * 1000.0,
                response_length=0,
                exception=None,
                context={},
            )

    def stop(self) -> None:
        """The run is over: say how many ghosts the server still kept, and leave."""
        if self.dropped:
            DEVIATIONS.note(
                "ghosts_outlived_run",
                "viewers that dropped their connection were still in their room when the run ended (the server "
                "keeps a dropped resumable session for its hibernation time): their ghost time is not recorded",
                len(self.dropped),
            )
            self.dropped.clear()
        client, self.client = self.client, None
        self.rooms.clear()
        if client is not None:
            try:
                client.close()
            except XmppRequestFailed:
                pass


_watches: dict[int, GhostWatch] = {}


def watch_for(environment: Any, settings: Any) -> GhostWatch:
    """The process's watch (one per environment, its test_stop listener added once); stopped with each run."""
    key = id(environment)
    found = _watches.get(key)
    if found is None:
        found = _watches[key] = GhostWatch(settings, environment.events.request)
        environment.events.test_stop.add_listener(lambda **_kw: found.stop())
    found.settings = settings  # a web UI run may target another host than the last
    return found
