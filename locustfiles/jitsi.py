"""The Jitsi Meet participant test (shared notes, field-scenarios section 2).

Participants arrive in batches (100 every 10 s by default) until rooms x participants are
in, each batch into conferences of its own (the field's batches of 100 were 2 new conferences
of 50); each asks the focus for the conference (when ``--jitsi-focus`` names one), joins the
room with jitsi-meet's presence extensions, answers the focus's Jingle offer, pings every
10 s, and leaves (room, then global unavailable, then close). Phases: batch1..batchN, hold,
leave. The field question: does the server's RAM grow linearly with participants?

    locust-xmpp lab up
    locust -f locustfiles/jitsi.py --headless --host ws://127.0.0.1:15280/xmpp-websocket \
        --jitsi-rooms 10 --jitsi-participants 50 --csv results/jitsi
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element

from locust import events, task

from xmpp_user import XmppUser
from xmpp_user.features import jitsi
from xmpp_user.run import phases
from xmpp_user.run.batches import batch_phases
from xmpp_user.run.options import non_negative, option_group, positive, require_non_negative, require_positive
from xmpp_user.run.phases import Phase, PhasedShape, current_phase

log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = option_group(parser, "jitsi", "The Jitsi Meet participant scenario")
    g.add_argument("--jitsi-rooms", type=positive(int), default=2, help="Conferences (default %(default)s)")
    g.add_argument("--jitsi-participants", type=positive(int), default=50, help="Participants per conference")
    g.add_argument("--hold", type=non_negative(float), default=30.0, help="Seconds everyone stays before leaving")
    g.add_argument("--jitsi-focus", default="", help="Focus component JID (e.g. focus.meet.example); none: skipped")
    g.add_argument("--ping-interval", type=positive(float), default=10.0, help="Seconds between pings to the domain")


@events.init.add_listener
def _install(environment: Any, **_kw: Any) -> None:
    phases.install(environment)


@events.test_start.add_listener
def _announce(environment: Any, **_kw: Any) -> None:
    if not environment.parsed_options.jitsi_focus:
        log.info("No focus configured (--jitsi-focus): the conference IQ and Jingle answers are skipped")


def conference_of(n: int, options: Any) -> int:
    """The conference the n-th participant of this process joins. Each batch fills the conferences its share of
    the plan covers, as in the field test, where every batch of 100 was one more JXS process of 2 conferences of
    50: batch k's participants are numbers (k-1)B .. kB-1 of the plan (B the batch size, P participants per
    conference), so it covers conferences (k-1)B // P .. (kB-1) // P, and its participants, on every worker, take
    them in turn. With B a multiple of P (the field's 100 and 50) each batch has conferences of its own."""
    phase = current_phase()
    match = re.fullmatch(r"batch(\d+)", phase.name) if phase is not None else None
    if match is None:
        return n % options.jitsi_rooms
    k, size, per = int(match.group(1)), options.batch_size, options.jitsi_participants
    first, last = (k - 1) * size // per, (k * size - 1) // per
    return (first + n % (last - first + 1)) % options.jitsi_rooms


class Participant(XmppUser):
    _counter = itertools.count()

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        n = next(Participant._counter)
        self.conference = f"{self.settings.room if self.settings else 'jitsi'}{conference_of(n, opts)}"
        self.room = f"{self.conference}@{self.settings.muc if self.settings else 'invalid'}"
        self.focus = opts.jitsi_focus
        self.participant_id = os.urandom(4).hex()
        if self.settings is not None:
            # jitsi-meet connects to <service>?room=<conference>
            separator = "&" if "?" in self.settings.url else "?"
            self.xmpp.url = f"{self.settings.url}{separator}room={quote(self.conference)}"
        self.xmpp.on_iq_request = self._on_iq_request

    def wait_time(self) -> float:
        return self.environment.parsed_options.ping_interval

    @property
    def nick(self) -> str:
        return self.participant_id

    def on_session(self) -> None:
        if self.focus:
            self.xmpp.iq("focus", "set", jitsi.conference(self.room, self.participant_id), self.focus)
        extensions = jitsi.presence_extensions(
            nick=f"Participant {self.number}", stats_id=f"stats-{self.participant_id}", avatar_id=self.participant_id
        )
        self.xmpp.muc_join(self.room, self.participant_id, extra=extensions)

    def _on_iq_request(self, iq: Element) -> bool:
        offer = jitsi.session_initiate(iq)
        if offer is None or not self.focus:
            return False
        self.xmpp.reply_result(iq)
        self.xmpp.send_iq("jingle_accept", "set", jitsi.session_accept(offer, self.xmpp.jid), iq.get("from"))
        return True

    @task
    def ping(self) -> None:
        self.ensure_connected()
        self.xmpp.ping()

    def on_leave(self) -> None:
        if self.room in self.xmpp.rooms:
            self.xmpp.muc_leave(self.room)
        self.xmpp.send_stanza("<presence xmlns='jabber:client' type='unavailable'/>")


class JitsiBatches(PhasedShape):
    """Batches of participants every interval until the target, a hold, then everyone leaves."""

    def phases(self) -> list[Phase]:
        o = self.runner.environment.parsed_options
        try:
            require_positive(o, "jitsi_rooms", "jitsi_participants", "ping_interval")
            require_non_negative(o, "hold")
            target = o.jitsi_rooms * o.jitsi_participants
            plan = batch_phases(o, target, [Participant])
        except ValueError as exc:
            log.error("locust-xmpp: %s", exc)
            return []
        size = plan[0].spawn_rate
        plan.append(Phase("hold", o.hold, target, size, [Participant]))
        plan.append(Phase("leave", math.ceil(target / size) + 3, 0, size, [Participant]))
        return plan
