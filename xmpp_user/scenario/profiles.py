"""Client profiles of the livechat viewer: what each real client sends, in order, and on what trigger.

A profile drives one viewer's session from login to the room with its archive read, then reacts to
what the room sends. Choose one with ``--client``:

    seed-bots          the field test's bots as written (the seed): everything pipelined at once, the
                       room's default history, every occupant's vCard at join and every joiner's later
    converse-14        Converse.js 14 as the PeerTube livechat plugin configures it, as recorded in a
                       browser (xmpp_user.fidelity checks it against the real one)
    peertube-livechat  PeerTube's own build of Converse: the same, without carbons (anonymous users),
                       and occupant avatars only for the rows shown (the participants sidebar is
                       closed by default, so none but the authors of the messages shown)

The viewer (``xmpp_user.scenario.viewer.Viewer``: locustfiles/livechat.py's, or the fidelity scene's) gives a
profile its client, room, nick and avatar, and the batch's switches: ``vcards``, ``mam``, ``carbons``,
``disco`` (a batch without vCards asks no vCard at all).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.stanza import bare, resource
from xmpp_user.features import blocking, disco, pep
from xmpp_user.features.caps import Capabilities
from xmpp_user.features.disco import RESERVED_NICK_NODE
from xmpp_user.scenario.viewer import Viewer
from xmpp_user.session.client import NO_VCARD, Pending, Room

NOT_OFFERED = ("service-unavailable", "feature-not-implemented")
"""Error conditions by which a server says it does not offer a feature (carbons, a room archive)."""
NOT_THERE = ("item-not-found", "service-unavailable", "feature-not-implemented", "remote-server-not-found")
"""Answers that say "nothing here", which a client shows as nothing rather than as an error."""

CONVERSE = Capabilities(
    "https://conversejs.org",
    "Converse",
    (
        "http://jabber.org/protocol/chatstates", "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/muc", "http://jabber.org/protocol/rosterx", "jabber:x:oob",
        "urn:ietf:params:xml:ns:conference-info+notify", "urn:xmpp:carbons:2", "urn:xmpp:http:upload:0",
        "urn:xmpp:idle:1", "urn:xmpp:mam:2", "urn:xmpp:message-correct:0", "urn:xmpp:reactions:0",
        "urn:xmpp:reply:0", "urn:xmpp:spoiler:0", "urn:xmpp:xbosh", "vcard-temp", "vcard-temp:x:update",
    ),
)  # fmt: skip
"""Converse.js 14's identity and features, as it answers the server's caps query (recorded)."""

_CONVERSE_ID_SUFFIX = {"roster": ":roster", "ping": ":ping", "mam": "", "mam_query": "", "blocklist": "",
                       "presence": "", "message": ""}  # fmt: skip


def converse_id(purpose: str) -> str:
    """A stanza id as Converse.js 14 (Strophe.js) writes it, recorded: a UUID4 with ':sendIQ' for most IQs,
    ':roster' and ':ping' for those, none for the archive query, the block list and presences; its login's
    fixed ids for bind and session (StreamSettings.ids)."""
    if purpose in ("bind", "session"):
        return f"_{purpose}_auth_2"
    return f"{uuid.uuid4()}{_CONVERSE_ID_SUFFIX.get(purpose, ':sendIQ')}"


CONVERSE_DISCO_INFO = f"<query xmlns='{ns.DISCO_INFO}'>\n{' ' * 20}</query>"
CONVERSE_DISCO_ITEMS = f"<query xmlns='{ns.DISCO_ITEMS}'>\n{' ' * 24}</query>"
CONVERSE_ROSTER = f"<query xmlns='{ns.ROSTER}'>\n{' ' * 16}</query>"
"""Converse's disco and roster queries as it writes them: its templates' indentation stays in the element."""

_PHOTO = f"{ns.clark(ns.VCARD_UPDATE, 'x')}/{ns.clark(ns.VCARD_UPDATE, 'photo')}"
"""An avatar hash in a presence (XEP-0153), empty or not; Prosody adds one to every presence it sends."""
_MUC_ITEM = f"{ns.clark(ns.MUC_USER, 'x')}/{ns.clark(ns.MUC_USER, 'item')}"
_ROLE_ORDER = {"moderator": 0, "participant": 1, "visitor": 2}


class Profile:
    """The interface: ``configure`` before the first connection, ``join`` after each one, ``idle``
    from the viewer's task loop."""

    name = ""
    carbons = True
    """Whether this client enables carbons at all (a batch may switch them off too)."""
    visible_occupants: int | None = None
    """Rows of the occupant list on screen, whose avatars are fetched (None: every occupant)."""

    def __init__(self, viewer: Viewer) -> None:
        self.v = viewer
        self.x = viewer.xmpp

    def configure(self) -> None:
        """Set up the client before its first connection."""

    def join(self) -> None:
        """From a new session to being in the room with its archive read."""
        raise NotImplementedError

    def idle(self) -> None:
        """Called between the viewer's tasks, about twice a second."""

    def track(self, pending: Pending) -> None:
        """A request fired from a callback: awaited by nobody, expired by the viewer's task loop."""
        self.v.background.append(pending)


class SeedBots(Profile):
    """The field test's bots (shared notes, field-scenarios section 1), in this order:

    1. At once, without waiting: disco#info of the domain, roster, own vCard, the room's vCard,
       disco#info of the room, disco#items of the domain, the reserved-nick query, carbons, and the
       join (the room's default history, our avatar hash); then everything is awaited.
    2. The archive's last page (max --mam-max, with a data form).
    3. The vCard of every occupant; later, the vCard of every occupant who joins.
    Stream management without resumption; no keepalive.
    """

    name = "seed-bots"

    def __init__(self, viewer: Viewer) -> None:
        super().__init__(viewer)
        self.asked: set[str] = set()

    def configure(self) -> None:
        self.x.on_occupant_joined.append(self._occupant_joined)

    def join(self) -> None:
        v, x, room, domain = self.v, self.x, self.v.room, self.v.domain
        startup = []
        if v.disco:
            startup += [x.disco_info(domain, wait=False), x.roster(wait=False)]
        if v.vcards:
            room_vcard = x.vcard(room, wait=False, accept=NO_VCARD)
            startup += [x.vcard(wait=False, accept=NO_VCARD), room_vcard]
        if v.disco:
            startup += [
                # A room nobody is in may not exist yet (temporary rooms): the join then creates it.
                x.disco_info(room, wait=False, accept=("item-not-found",)),
                x.disco_items(domain, wait=False),
                x.disco_info(room, RESERVED_NICK_NODE, wait=False, accept=("item-not-found",)),
            ]
        carbons = x.enable_carbons(wait=False, accept=NOT_OFFERED) if v.carbons else None
        startup += [carbons] if carbons else []
        startup.append(v.talker.join(room, v.nick, extra=v.avatar_update(), wait=False))
        x.wait_all(startup)
        if v.vcards:
            v.room_vcard_answered(room_vcard)
        if carbons:
            v.carbons_answered(carbons)
        if v.mam:
            v.archive_read(x.mam(room, max_=v.mam_max, accept=NOT_OFFERED))
        if v.vcards:
            # Occupants who joined since our own presence were already asked by _occupant_joined.
            mine = x.room(room).nick  # ours, or another if ours was taken
            x.wait_all([self._vcard(n) for n in x.room(room).occupants if n != mine and n not in self.asked])

    def _vcard(self, nick: str) -> Pending:
        self.asked.add(nick)
        return self.x.vcard(f"{self.v.room}/{nick}", wait=False, accept=NO_VCARD, name="vcard_occupant")

    def _occupant_joined(self, room: Room, nick: str) -> None:
        if self.v.vcards and room.jid == self.v.room and nick not in self.asked:
            self.track(self._vcard(nick))


class Converse14(Profile):
    """Converse.js 14 with the PeerTube livechat plugin's options (anonymous login, one room joined
    automatically, ping_interval 25), as recorded in a browser, in this order:

    Login: the legacy session IQ, stream management with resumption, an ack request every 5 stanzas.
    1. At once: the popular-reactions node of our PEP service, disco#info of the domain, own vCard,
       roster, the room's vCard, disco#info of the room, disco#items of the domain.
    2. Once the roster and the domain's items are in: global presence (caps, avatar hash), the
       reserved-nick query, disco#info of every item of the domain (and, once in, disco#items of
       those that are servers), carbons, the block list.
    3. Once the room's disco#info and the reserved-nick answer are in: the join, with caps, asking for
       no history (the archive gives it).
    4. On every occupant presence that carries an avatar hash (vcard-temp:x:update, even an empty
       one, which Prosody adds to every presence): the room's vCard again. Converse asks the room,
       not the occupant. Our own presence reflected with one: our own vCard again.
    5. Once joined: the nickname registration query if the room offers registration, and the
       archive's last page (max --mam-max, no data form).
    6. Once the archive is in: the vCard of each occupant in the rows on screen (moderators first,
       then by nick; --visible-occupants, 18 in a 1280x800 window) and of the authors of the archived
       messages. Later, a joiner's vCard if it lands within those rows but the last.
    Meanwhile: a ping to the server after 25 s with nothing received; the server's disco#info query
    about our caps is answered.
    """

    name = "converse-14"
    visible_occupants = 18
    keepalive = 25.0
    ack_every = 5
    pace = 0.003
    """Seconds between two of its stanzas (XmppClient.pace): Chromium sends each frame on its own, so the server
    reads a page's requests one wake-up each. In the moving scene on Prosody, 3 ms cost the server about 15 %
    more than 1 ms and as much as 5 ms; the server then asks for 1.45 times the pages' acks (1 ms: 1.3)."""
    # Its stanzas as Converse writes them (ids, 'from', whitespace): the server parses, checks and echoes them.

    def __init__(self, viewer: Viewer) -> None:
        super().__init__(viewer)
        self.asked: set[str] = set()
        self.roles: dict[str, str] = {}
        self.rows = viewer.visible_occupants if viewer.visible_occupants is not None else self.visible_occupants
        self.shown = False
        """Whether the occupant list is on screen yet (after the archive): joiners are then fetched."""
        self.last_ping = 0.0

    def configure(self) -> None:
        x = self.x
        x.stream_settings = replace(x.stream_settings, sm_resume=True, ack_every=self.ack_every, legacy_session=True,
                                    ids=converse_id)  # fmt: skip
        x.pace = self.pace
        x.on_presence.append(self._presence)
        x.on_iq_request = self._iq_request

    def join(self) -> None:
        v, x, room, domain = self.v, self.x, self.v.room, self.v.domain
        self.asked.clear()
        self.roles.clear()
        self.shown = False
        me, info, items_query = x.jid, CONVERSE_DISCO_INFO, CONVERSE_DISCO_ITEMS  # Converse writes 'from' here
        first: list[Pending] = []
        if v.disco:
            first.append(x.iq("pep_items", "get", pep.items(pep.REACTIONS_POPULAR), bare(me), False, NOT_THERE,
                              from_=bare(me)))  # fmt: skip
            first.append(x.disco_info(domain, wait=False, from_=me, payload=info))
        if v.vcards:
            first.append(x.vcard(wait=False, accept=NO_VCARD))
        roster = x.roster(wait=False, payload=CONVERSE_ROSTER) if v.disco else None
        room_vcard = x.vcard(room, wait=False, accept=NO_VCARD, name="vcard_room") if v.vcards else None
        room_info = x.disco_info(room, wait=False, accept=("item-not-found",), from_=me, payload=info)
        items = x.disco_items(domain, wait=False, from_=me, payload=items_query) if v.disco else None
        x.wait_all([p for p in (roster, items) if p is not None])

        x.send_stanza(f"<presence xmlns='jabber:client'><priority>0</priority>{v.avatar_update(empty=True)}"
                      f"{CONVERSE.element()}</presence>")  # fmt: skip
        nick_query = x.disco_info(room, RESERVED_NICK_NODE, wait=False, accept=("item-not-found",))
        item_jids = disco.items(items.element) if items is not None and items.element is not None else []
        item_infos = [x.disco_info(jid, wait=False, accept=NOT_THERE, from_=me, payload=info) for jid in item_jids]
        second: list[Pending] = []
        carbons = x.enable_carbons(wait=False, accept=NOT_OFFERED, from_=me) if self.carbons and v.carbons else None
        if v.disco:
            second.append(x.iq("blocklist", "get", blocking.GET, None, False, NOT_OFFERED))
        x.wait_all([room_info, nick_query])

        join = v.talker.join(room, v.nick, history_max=0, extra=CONVERSE.element(), wait=False, from_=me)
        x.wait_all(item_infos)
        for jid, item_info in zip(item_jids, item_infos, strict=True):
            if item_info.element is not None and ("server", "im") in disco.identities(item_info.element):
                second.append(x.disco_items(jid, wait=False, accept=NOT_THERE, from_=me, payload=items_query))
        x.wait(join)
        if room_info.element is not None and ns.REGISTER in disco.features(room_info.element):
            # Prosody answers registration-required to a nick nobody registered: an answer, not a failure.
            second.append(x.iq("muc_register_query", "get", f"<query xmlns='{ns.REGISTER}'/>", room, False,
                               (*NOT_THERE, "registration-required")))  # fmt: skip
        authors: list[str] = []
        if v.mam:
            archive = x.mam(room, max_=v.mam_max, accept=NOT_OFFERED, form=False)
            v.archive_read(archive)
            authors = [resource(m.get("from", "")) for m in archive.messages]
        x.wait_all(first + second + [p for p in (room_vcard, carbons) if p is not None])
        if room_vcard is not None:
            v.room_vcard_answered(room_vcard)
        if carbons is not None:
            v.carbons_answered(carbons)
        self.shown = True
        if v.vcards:
            x.wait_all([self._vcard(n) for n in self._rows_on_screen() + authors if self._unasked(n)])

    # -- what the room and the server trigger --------------------------------------------------------

    def _presence(self, element: Element) -> None:
        v, x = self.v, self.x
        frm = element.get("from", "")
        if element.get("type") in ("unavailable", "error"):
            if bare(frm) == v.room:
                self.roles.pop(resource(frm), None)
            return
        if bare(frm) == v.room and resource(frm):
            nick = resource(frm)
            item = element.find(_MUC_ITEM)
            new = nick not in self.roles
            self.roles[nick] = item.get("role", "participant") if item is not None else "participant"
            if not v.vcards:
                return
            if element.find(_PHOTO) is not None:
                self.track(x.vcard(v.room, wait=False, accept=NO_VCARD, name="vcard_room"))
            if new and self.shown and self._unasked(nick) and self._joiner_on_screen(nick):
                self.track(self._vcard(nick))
        elif frm == x.jid and v.vcards and element.find(_PHOTO) is not None:
            # Our own presence, reflected with an avatar hash: Converse reads its own vCard again.
            self.track(x.vcard(wait=False, accept=NO_VCARD))

    def _iq_request(self, iq: Element) -> bool:
        if not CONVERSE.answers(iq):
            return False
        query = iq.find(ns.clark(ns.DISCO_INFO, "query"))
        self.x.reply_result(iq, CONVERSE.disco_info(query.get("node", "") if query is not None else ""))
        return True

    def idle(self) -> None:
        x = self.x
        now = time.monotonic()
        quiet = now - max(x.last_received, self.last_ping)
        if x.connected and quiet >= self.keepalive:
            self.last_ping = now
            self.track(x.ping(wait=False))

    # -- the occupant list ---------------------------------------------------------------------------

    def _rows_on_screen(self) -> list[str]:
        order = sorted(self.roles, key=lambda n: (_ROLE_ORDER.get(self.roles[n], 3), n.casefold()))
        return order[: self.rows]

    def _joiner_on_screen(self, nick: str) -> bool:
        """Whether a joiner lands in a row a page already showing the list fetches: every row on screen but the
        last. Real Converse 14 pages at 1280x800, 20 joining one by one: each page then in the room left the
        18th occupant's avatar alone, where every page joining later fetched it with the other rows."""
        rows = self._rows_on_screen()
        return nick in (rows if self.rows is None else rows[: max(0, self.rows - 1)])

    def _unasked(self, nick: str) -> bool:
        room = self.x.rooms.get(self.v.room)  # called from the reader: never raise
        return room is not None and bool(nick) and nick != room.nick and nick not in self.asked

    def _vcard(self, nick: str) -> Pending:
        self.asked.add(nick)
        return self.x.vcard(f"{self.v.room}/{nick}", wait=False, accept=NO_VCARD, name="vcard_occupant")


class PeertubeLivechat(Converse14):
    """PeerTube's build of Converse, as the PeerTube livechat plugin ships it: Converse 14's sequence
    (see Converse14) except that anonymous viewers do not enable carbons, and occupant avatars are
    fetched only while the participants sidebar is open, which it is not by default
    (--visible-occupants 0): only the authors of the messages shown get theirs."""

    name = "peertube-livechat"
    carbons = False
    visible_occupants = 0


PROFILES: dict[str, type[Profile]] = {p.name: p for p in (SeedBots, Converse14, PeertubeLivechat)}
DEFAULT = SeedBots.name
