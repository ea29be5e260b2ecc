"""The livechat CPU test: viewers emulating Converse.js in a PeerTube live chat.

Reproduces the field test (shared notes, field-scenarios section 1) in named phases:

    seed, seed-leave                   2 posters per room fill the archive, then leave
    batch1-join, batch1-talk, batch1-leave   everything: disco, roster, vCards, carbons, MAM
    batch2-...                          the same without vCards
    batch3-...                          the same without vCards and without MAM

Each viewer publishes an avatar, then opens the chat as its client profile says (--client: the field
test's bots by default, or Converse.js 14, or PeerTube's Converse; xmpp_user/scenario/profiles.py), and leaves
cleanly or as a closed tab (--leave drop). Every request is awaited, so each has its latency; every
message carries a truth marker, so deliveries, losses and duplicates are counted. Run it against the lab:

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

from xmpp_user import XmppUser
from xmpp_user.features import vcard
from xmpp_user.run import outcome, phases
from xmpp_user.run.deviations import DEVIATIONS
from xmpp_user.run.options import non_negative, option_group, positive, require_non_negative, require_positive
from xmpp_user.run.phases import Phase, PhasedShape, current_phase
from xmpp_user.scenario import ghosts
from xmpp_user.scenario.profiles import DEFAULT, PROFILES
from xmpp_user.scenario.talk import Talker
from xmpp_user.session.client import Pending, XmppRequestFailed

log = logging.getLogger(__name__)

QUIET = 3.0
"""Seconds of silence at the end of a talk phase, so no message is in flight when viewers leave."""
NOT_CONNECTED = (
    "planned messages were not sent because their viewer was not connected at the time (counted as skipped, "
    "not lost)"
)
LATE = (
    "planned messages were not sent because the load generator reached them more than one message interval "
    "after their time, with their viewer connected: the generator ran behind, not the server (counted as "
    "skipped, not lost)"
)

SETTLE = 120.0
"""Longest wait at the end of a phase for the server to be done with it, as the field test waited "a little,
to be sure that Prosody has processed everything" before its next step."""

AVATAR_BYTES = 8192
"""A small avatar image: what a livechat server hands every viewer, anonymous ones included."""

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
                   help="Seconds between the last join and the talk, at least (see --settle)")
    g.add_argument("--talk-interval", type=positive(float), default=5.0, help="Seconds between a viewer's messages")
    g.add_argument("--talk-duration", type=positive(float), default=20.0, help="Seconds the talk lasts")
    g.add_argument("--settle", type=non_negative(float), default=SETTLE,
                   help="Seconds each phase may go on after its planned end until the server is done with it: "
                        "every viewer joined or failed, no reply outstanding, no delivery in flight, the server's "
                        "CPU back near its idle level (default %(default)s; 0: phases of fixed length)")
    g.add_argument("--seed-messages", type=non_negative(int), default=60,
                   help="Messages posted to each room's archive first")
    g.add_argument("--seed-interval", type=positive(float), default=0.1, help="Seconds between seed messages")
    g.add_argument("--seed-wait", type=non_negative(float), default=15.0, help="Seconds of quiet after seeding")
    g.add_argument("--mam-max", type=positive(int), default=50, help="Page size of the MAM query on join")
    g.add_argument("--avatar-bytes", type=non_negative(int), default=AVATAR_BYTES,
                   help="Size of the avatar image each viewer publishes in its vCard at login, so that avatar "
                        "requests are answered with one as on a livechat server (default %(default)s; 0: none)")
    g.add_argument("--no-vcards", action="store_true", default=False, help="Never emulate vCard/avatar requests")
    g.add_argument("--no-mam", action="store_true", default=False, help="Never query the room archive")
    g.add_argument("--no-carbons", action="store_true", default=False, help="Never enable carbons")
    g.add_argument("--no-disco", action="store_true", default=False, help="Skip the disco and roster queries")
    g.add_argument("--client", choices=tuple(PROFILES), default=DEFAULT,
                   help="The client the viewers emulate: seed-bots (the field test as written; the default), "
                        "converse-14 (Converse.js 14 as recorded in a browser), peertube-livechat (PeerTube's "
                        "build of Converse); see xmpp_user/scenario/profiles.py")
    g.add_argument("--leave", choices=("clean", "drop"), default="clean",
                   help="How viewers leave: clean (leave the room, close the stream; the default) or drop (the "
                        "connection drops, as when a browser tab closes: the server keeps a resumable session, "
                        "and the viewer in the room, until it times out; the request 'ghost' says how long)")
    g.add_argument("--ghost-wait", type=non_negative(float), default=70.0,
                   help="With --leave drop, seconds added to the last leave phase for the server to drop the "
                        "ghosts (default %(default)s: the lab servers keep a dropped session 60 s)")
    g.add_argument("--visible-occupants", type=non_negative(int), default=None,
                   help="Rows of the occupant list on screen, whose avatars Converse fetches (converse-14: 18, "
                        "a 1280x800 window; peertube-livechat: 0, the sidebar closed)")


@events.init.add_listener
def _install(environment: Any, **_kw: Any) -> None:
    phases.install(environment)


def room_jid(options: Any, settings: Any, n: int) -> str:
    """The JID of the room of the ``n``-th user, normalised: built from settings that are."""
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
            self.room = room_jid(self.options, self.settings, n)
        self.talker = Talker(self.xmpp, outcome.sender_id(self.environment), self.environment.events.request)
        super().on_start()

    def on_leave(self) -> None:
        # Read up to the room's answer: every delivery due to this viewer comes before it (xmpp_user.run.truth).
        self.talker.leave(self.room, self.patience)


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
        # The partner is the other seeder (a truth member), not any occupant: a real client may sit in the room.
        while len(self.xmpp.room(self.room).members) < 2 and time.monotonic() < deadline:
            gevent.sleep(0.1)
        interval = self.options.seed_interval * 2
        while self.posted < share:
            started = time.monotonic()
            self.talker.say(self.room, f"seed message {self.posted} from {self.nick}")
            self.posted += 1
            gevent.sleep(max(0.0, interval - (time.monotonic() - started)))


class Viewer(_RoomUser):
    """One livechat viewer: the client profile (--client, xmpp_user.scenario.profiles) opens the chat, then it talks.
    What the profile reads of it is ``xmpp_user.scenario.viewer.Viewer``."""

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
        self.mam_max = opts.mam_max
        self.visible_occupants = opts.visible_occupants
        # Random bytes: an image compresses no better, and each viewer's hash differs.
        self.avatar = random.randbytes(opts.avatar_bytes)
        self.background: list[Pending] = []
        self.talked_in = ""
        self.joined_at = 0.0
        self.profile = PROFILES[opts.client](self)
        self.profile.configure()
        super().on_start()

    @property
    def domain(self) -> str:
        return self.settings.domain

    def on_session(self) -> None:
        if self.options.leave == "drop":
            # In the room before anyone can drop out of it, to see how long the server keeps the ghost.
            ghosts.watch_for(self.environment, self.settings).watch(self.room)
        if self.avatar:
            # Every viewer has an avatar, whether or not this batch asks for the others': a livechat server
            # serves them to anonymous viewers too. Sent first, so it is stored before anyone can ask.
            self.background.append(self.xmpp.set_vcard(vcard.set_payload(nickname=self.nick, photo=self.avatar),
                                                       wait=False))  # fmt: skip
        self.profile.join()
        self.joined_at = time.monotonic()

    def on_stop(self) -> None:
        if self.options.leave == "drop" and self.xmpp.connected and self.room in self.xmpp.rooms:
            # A closed tab: no unavailable presence, no </close>; the resumable session stays on the server.
            ghosts.watch_for(self.environment, self.settings).drop(self.room, self.xmpp.room(self.room).nick)
            self.xmpp.abort()
            return
        super().on_stop()

    def avatar_update(self, empty: bool = False) -> str:
        """Our avatar's hash for a presence (XEP-0153); ``empty``: the bare element when we have none."""
        if self.avatar:
            return vcard.update_element(vcard.avatar_hash(self.avatar))
        return vcard.EMPTY_UPDATE if empty else ""

    def room_vcard_answered(self, answer: Pending) -> None:
        if answer.condition:
            DEVIATIONS.note("no_room_vcard", f"the room has no vCard ({answer.condition}): no room avatar is shown")

    def carbons_answered(self, answer: Pending) -> None:
        if answer.condition:
            DEVIATIONS.note("no_carbons", f"the server does not offer carbons ({answer.condition})")

    def archive_read(self, archive: Pending) -> None:
        """The latest page of the room's archive, as the client asked for it on opening the room."""
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

    @task
    def live(self) -> None:
        self.ensure_connected()
        self.background = self.xmpp.expire(self.background)
        self.profile.idle()
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
        viewer found disconnected reconnects. A message still unsent one interval after its time
        is skipped and counted, with the reason: its viewer was reconnecting, or, when it had not
        been, the generator itself ran that far behind (``xmpp_user.run.lag``).
        """
        interval = self.options.talk_interval
        count = max(1, int(self.options.talk_duration // interval))
        start = time.monotonic() + random.uniform(0, interval)
        in_flight: list[Pending] = []
        reconnected = False  # since the last message sent in time
        for i in range(count):
            due = start + i * interval
            gevent.sleep(max(0.0, due - time.monotonic()))
            in_flight = self.xmpp.expire(in_flight)
            try:
                reconnected = reconnected or not self.xmpp.connected
                self.ensure_connected()
                if time.monotonic() > due + interval:
                    self.talker.skip()
                    if reconnected:
                        DEVIATIONS.note("messages_skipped", NOT_CONNECTED)
                    else:
                        DEVIATIONS.note("messages_late", LATE)
                    continue
                in_flight.append(self.talker.say(self.room, f"message {i} from {self.nick}", wait=False))
                reconnected = False
            except XmppRequestFailed:
                self.talker.skip()
                DEVIATIONS.note("messages_skipped", NOT_CONNECTED)
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
            require_non_negative(o, "pause", "talk_delay", "seed_messages", "seed_wait", "settle")
        except ValueError as exc:
            log.error("locust-xmpp: %s", exc)
            return []
        seeders = 2 * o.rooms
        join_time = o.viewers / o.join_rate
        settle = o.settle
        plan = [
            Phase("seed", o.seed_messages * o.seed_interval + 4, seeders, seeders, [ArchiveSeeder], settle=settle),
            Phase("seed-leave", 1 + o.seed_wait, 0, seeders, [ArchiveSeeder], settle=settle),
        ]
        batches = BATCHES[: o.batches]
        for b, (label, params) in enumerate(batches, 1):
            last = b == len(batches)
            params = {**params, "batch": label}
            ghost_wait = o.ghost_wait if last and o.leave == "drop" else 0.0
            plan += [
                Phase(f"batch{b}-join", join_time + o.talk_delay, o.viewers, o.join_rate, [Viewer], params,
                      settle=settle),
                Phase(f"batch{b}-talk", o.talk_duration + QUIET, o.viewers, o.join_rate, [Viewer],
                      {**params, "talk": True}, settle=settle),
                Phase(f"batch{b}-leave", join_time + (2 + ghost_wait if last else o.pause), 0, o.join_rate, [Viewer],
                      params, settle=settle),
            ]
        return plan
