"""The livechat CPU test: viewers emulating Converse.js in a PeerTube live chat.

Reproduces the field test (shared notes, field-scenarios section 1) in named phases:

    seed, seed-leave                   2 posters per room fill the archive, then leave
    batch1-join, batch1-talk, batch1-leave   everything: disco, roster, vCards, carbons, MAM
    batch2-...                          the same without vCards
    batch3-...                          the same without vCards and without MAM

Every request is awaited, so each has its latency; every message carries a truth marker,
so deliveries, losses and duplicates are counted. Run it against the lab:

    locust-xmpp lab up
    locust -f locustfiles/livechat.py --headless --host ws://127.0.0.1:15280/xmpp-websocket \
        --viewers 100 --join-rate 10 --csv results/livechat
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from typing import Any

import gevent
from locust import constant, events, task

from xmpp_user import XmppUser, outcome, phases
from xmpp_user.client import NO_VCARD, Pending, XmppRequestFailed
from xmpp_user.deviations import DEVIATIONS
from xmpp_user.features.disco import RESERVED_NICK_NODE
from xmpp_user.options import non_negative, option_group, positive, require_non_negative, require_positive
from xmpp_user.phases import Phase, PhasedShape, current_phase
from xmpp_user.rooms import normalise
from xmpp_user.talk import Talker

log = logging.getLogger(__name__)

QUIET = 3.0
"""Seconds of silence at the end of a talk phase, so no message is in flight when viewers leave."""

NOT_OFFERED = ("service-unavailable", "feature-not-implemented")
"""Error conditions by which a server says it does not offer a feature (carbons, a room archive)."""

BATCHES = (
    ("everything", {"vcards": True, "mam": True}),
    ("no vCards", {"vcards": False, "mam": True}),
    ("no vCards, no MAM", {"vcards": False, "mam": False}),
)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = option_group(parser, "livechat", "The livechat viewer scenario and its phases")
    g.add_argument("--viewers", type=positive(int), default=100, help="Viewers per batch (default %(default)s)")
    g.add_argument("--join-rate", type=positive(float), default=10.0, help="Viewers joining per second")
    g.add_argument("--rooms", type=positive(int), default=1, help="Rooms the viewers spread over")
    g.add_argument("--batches", type=int, choices=(1, 2, 3), default=3,
                   help="1: everything; 2: also without vCards; 3: also without vCards and MAM")
    g.add_argument("--pause", type=non_negative(float), default=80.0, help="Seconds of pause between batches")
    g.add_argument("--talk-delay", type=non_negative(float), default=15.0,
                   help="Seconds between the last join and the talk")
    g.add_argument("--talk-interval", type=positive(float), default=5.0, help="Seconds between a viewer's messages")
    g.add_argument("--talk-duration", type=positive(float), default=20.0, help="Seconds the talk lasts")
    g.add_argument("--seed-messages", type=non_negative(int), default=60,
                   help="Messages posted to each room's archive first")
    g.add_argument("--seed-interval", type=positive(float), default=0.1, help="Seconds between seed messages")
    g.add_argument("--seed-wait", type=non_negative(float), default=15.0, help="Seconds of quiet after seeding")
    g.add_argument("--mam-max", type=positive(int), default=50, help="Page size of the MAM query on join")
    g.add_argument("--no-vcards", action="store_true", default=False, help="Never emulate vCard/avatar requests")
    g.add_argument("--no-mam", action="store_true", default=False, help="Never query the room archive")
    g.add_argument("--no-carbons", action="store_true", default=False, help="Never enable carbons")
    g.add_argument("--no-disco", action="store_true", default=False, help="Skip the disco and roster queries")


@events.init.add_listener
def _install(environment: Any, **_kw: Any) -> None:
    phases.install(environment)


def room_jid(options: Any, settings: Any, n: int) -> str:
    base = settings.room if options.rooms == 1 else f"{settings.room}{n % options.rooms}"
    return f"{base}@{settings.muc}"


class _RoomUser(XmppUser):
    abstract = True
    _counter: itertools.count

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        n = next(type(self)._counter)
        self.seat = n // self.options.rooms
        """How many users of this class came to the same room before this one."""
        if self.settings is not None:
            self.room = normalise(room_jid(self.options, self.settings, n))
        self.talker = Talker(self.xmpp, outcome.sender_id(self.environment), self.environment.events.request)
        super().on_start()

    def on_leave(self) -> None:
        if self.room in self.xmpp.rooms:
            self.xmpp.muc_leave(self.room)


class ArchiveSeeder(_RoomUser):
    """Joins, waits for its partner, posts its share of the seed messages, then idles."""

    wait_time = constant(1)
    _counter = itertools.count()

    def on_session(self) -> None:
        self.talker.join(self.room, f"seed-{self.nick}")
        self.posted = getattr(self, "posted", 0)

    @task
    def post(self) -> None:
        self.ensure_connected()
        # Two seeders per room share the messages; the first one posts the odd one out.
        share = (self.options.seed_messages + 1 - self.seat % 2) // 2
        if self.posted >= share:
            return
        deadline = time.monotonic() + 5
        while len(self.xmpp.room(self.room).occupants) < 2 and time.monotonic() < deadline:
            gevent.sleep(0.1)
        interval = self.options.seed_interval * 2
        while self.posted < share:
            started = time.monotonic()
            self.talker.say(self.room, f"seed message {self.posted} from {self.nick}")
            self.posted += 1
            gevent.sleep(max(0.0, interval - (time.monotonic() - started)))


class Viewer(_RoomUser):
    """One livechat viewer, as Converse.js behaves when it opens the chat (in order)."""

    wait_time = constant(0.5)
    _counter = itertools.count()

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        phase = current_phase()
        params = phase.params if phase is not None else {}
        self.vcards = params.get("vcards", True) and not opts.no_vcards
        self.mam = params.get("mam", True) and not opts.no_mam
        self.carbons = params.get("carbons", True) and not opts.no_carbons
        self.disco = not opts.no_disco
        self.background: list[Pending] = []
        self.vcards_asked: set[str] = set()
        self.talked_in = ""
        self.joined_at = 0.0
        self.xmpp.on_occupant_joined.append(self._occupant_joined)
        super().on_start()

    def on_session(self) -> None:
        x, room, domain = self.xmpp, self.room, self.settings.domain
        startup = []
        if self.disco:
            startup += [x.disco_info(domain, wait=False), x.roster(wait=False)]
        if self.vcards:
            own_vcard, room_vcard = x.vcard(wait=False, accept=NO_VCARD), x.vcard(room, wait=False, accept=NO_VCARD)
            startup += [own_vcard, room_vcard]
        if self.disco:
            startup += [
                # A room nobody is in may not exist yet (temporary rooms): Converse then creates it by joining.
                x.disco_info(room, wait=False, accept=("item-not-found",)),
                x.disco_items(domain, wait=False),
                x.disco_info(room, RESERVED_NICK_NODE, wait=False, accept=("item-not-found",)),
            ]
        if self.carbons:
            carbons = x.enable_carbons(wait=False, accept=NOT_OFFERED)
            startup.append(carbons)
        # Converse sends all of the above without waiting, then joins (the default history).
        startup.append(self.talker.join(room, self.nick, wait=False))
        x.wait_all(startup)
        if self.vcards and room_vcard.condition:
            DEVIATIONS.note("no_room_vcard", f"the room has no vCard ({room_vcard.condition}): no room avatar is shown")
        if self.carbons and carbons.condition:
            DEVIATIONS.note("no_carbons", f"the server does not offer carbons ({carbons.condition})")
        if self.mam:
            self._read_archive()
        if self.vcards:
            # Occupants who joined since our own presence were already asked by _occupant_joined.
            mine = x.room(room).nick  # ours, or another if ours was taken
            occupants = [n for n in x.room(room).occupants if n != mine and n not in self.vcards_asked]
            x.wait_all([self._occupant_vcard(n) for n in occupants])
        self.joined_at = time.monotonic()

    def _read_archive(self) -> None:
        """The latest page of the room's archive, as Converse asks for it on opening the room."""
        archive = self.xmpp.mam(self.room, max_=self.options.mam_max, accept=NOT_OFFERED)
        if archive.condition:
            DEVIATIONS.note("no_room_archive", f"the room archive is not offered ({archive.condition})")
            return
        seeded = self.options.seed_messages if current_phase() is not None else 0
        wanted = min(self.options.mam_max, seeded)
        if len(archive.messages) < wanted:
            DEVIATIONS.note(
                "archive_short",
                f"the room archive returned {len(archive.messages)} messages where the test seeded {seeded} "
                f"(page of {self.options.mam_max}): the archive of a temporary room may not outlive the room",
            )

    def _occupant_vcard(self, nick: str) -> Pending:
        self.vcards_asked.add(nick)
        return self.xmpp.vcard(f"{self.room}/{nick}", wait=False, accept=NO_VCARD, name="vcard_occupant")

    def _occupant_joined(self, room: Any, nick: str) -> None:
        if self.vcards and room.jid == self.room and nick not in self.vcards_asked:
            self.background.append(self._occupant_vcard(nick))

    @task
    def live(self) -> None:
        self.ensure_connected()
        self.background = self.xmpp.expire(self.background)
        phase = current_phase()
        opts = self.options
        if phase is not None:
            if phase.params.get("talk") and self.talked_in != phase.name:
                self.talked_in = phase.name
                self._talk()
        elif not self.talked_in and time.monotonic() >= self.joined_at + opts.talk_delay:
            self.talked_in = "unphased"
            self._talk()

    def _talk(self) -> None:
        """One message every interval for the talk duration, starting at a random offset.

        The plan holds whatever happens: a message is not awaited before the next one is due
        (its reflection is checked in the background), a failure does not end the talk, and a
        viewer found disconnected reconnects; a message whose time passed while it could not be
        sent is skipped and counted.
        """
        interval = self.options.talk_interval
        count = max(1, int(self.options.talk_duration // interval))
        start = time.monotonic() + random.uniform(0, interval)
        in_flight: list[Pending] = []
        for i in range(count):
            due = start + i * interval
            gevent.sleep(max(0.0, due - time.monotonic()))
            in_flight = self.xmpp.expire(in_flight)
            try:
                self.ensure_connected()
                if time.monotonic() > due + interval:
                    raise XmppRequestFailed("too late")
                in_flight.append(self.talker.say(self.room, f"message {i} from {self.nick}", wait=False))
            except XmppRequestFailed:
                self.talker.skip()
                DEVIATIONS.note(
                    "messages_skipped",
                    "planned messages were not sent because their viewer was not connected at the time "
                    "(counted as skipped, not lost)",
                )
        try:
            self.xmpp.wait_all(in_flight)
        except XmppRequestFailed:
            pass  # recorded


class LivechatTest(PhasedShape):
    """Seed the archive, then the three batches of the field test, sized by the options."""

    def phases(self) -> list[Phase]:
        o = self.runner.environment.parsed_options
        try:
            require_positive(o, "viewers", "join_rate", "rooms", "talk_interval", "talk_duration", "seed_interval")
            require_non_negative(o, "pause", "talk_delay", "seed_messages", "seed_wait")
        except ValueError as exc:
            log.error("locust-xmpp: %s", exc)
            return []
        seeders = 2 * o.rooms
        join_time = o.viewers / o.join_rate
        plan = [
            Phase("seed", o.seed_messages * o.seed_interval + 4, seeders, seeders, [ArchiveSeeder]),
            Phase("seed-leave", 1 + o.seed_wait, 0, seeders, [ArchiveSeeder]),
        ]
        batches = BATCHES[: o.batches]
        for b, (label, params) in enumerate(batches, 1):
            last = b == len(batches)
            params = {**params, "batch": label}
            plan += [
                Phase(f"batch{b}-join", join_time + o.talk_delay, o.viewers, o.join_rate, [Viewer], params),
                Phase(f"batch{b}-talk", o.talk_duration + QUIET, o.viewers, o.join_rate, [Viewer],
                      {**params, "talk": True}),
                Phase(f"batch{b}-leave", join_time + (2 if last else o.pause), 0, o.join_rate, [Viewer], params),
            ]
        return plan
