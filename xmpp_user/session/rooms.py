"""What a client knows of the MUC rooms it is in: occupants by nick, keyed by normalised room JID.

Servers answer from the normalised form of a JID (``CpuA20@muc.localhost`` comes back as
``cpua20@muc.localhost``), so rooms are keyed by the form slixmpp's stringprep gives. A JID is
normalised where it enters (the options, ``XmppClient.muc_join``) and trusted after: a lookup by
the normalised form is one dict lookup; any other form a user or a stanza names is normalised on
a miss (cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from xml.etree.ElementTree import Element

from slixmpp.jid import JID, InvalidJID

from xmpp_user.core.stanza import bare


@lru_cache(maxsize=65536)
def normalise(jid: str) -> str:
    """The normalised form of a JID (nodeprep, nameprep, resourceprep); ValueError if invalid."""
    try:
        return JID(jid).full
    except InvalidJID as exc:
        raise ValueError(f"invalid JID {jid!r}: {exc}") from None


def normalise_or_same(jid: str) -> str:
    """``normalise(jid)``, or ``jid`` itself when it is not a valid JID (a stanza's garbled 'from')."""
    try:
        return normalise(jid)
    except ValueError:
        return jid


@dataclass
class Room:
    """A room this client is in, or joining."""

    jid: str
    """The normalised bare JID."""
    nick: str
    joined: bool = False
    leaving: bool = False
    """Our leave is on its way: the self-unavailable presence that follows is expected."""
    join_stanza: str = ""
    """The join presence we sent, to send again if the room turns out to be locked."""
    join_args: tuple[int | None, str] = (None, "")
    """The join's history size and extra payload, to join again under another nick."""
    clashes: int = 0
    """Joins refused because our nick was taken (by our own session that a cut connection left behind)."""
    occupants: dict[str, str] = field(default_factory=dict)
    """Occupants by nick (ourselves included once joined), each with its tag (see ``RoomTable.tag_of``)."""
    _members: frozenset[str] | None = None

    @property
    def members(self) -> frozenset[str]:
        """The non-empty occupant tags, as one object that changes only when the occupants do."""
        if self._members is None:
            self._members = frozenset(tag for tag in self.occupants.values() if tag)
        return self._members

    def set_occupant(self, nick: str, tag: str) -> bool:
        """Add or update an occupant; True if the nick is new."""
        old = self.occupants.get(nick)
        if old != tag:
            self.occupants[nick] = tag
            self._members = None
        return old is None

    def remove_occupant(self, nick: str) -> None:
        if self.occupants.pop(nick, None) is not None:
            self._members = None


class RoomTable(dict[str, Room]):
    """Rooms by normalised bare JID; ``get``, ``[]`` and ``in`` accept any form of the JID."""

    tag_of: Callable[[Element], str] | None = None
    """Reads an occupant's tag from its room presence (e.g. the identity a load-test user announces)."""

    def __getitem__(self, jid: str) -> Room:
        room = self.get(jid)
        if room is None:
            raise KeyError(jid)
        return room

    def get(self, jid: str, default: Room | None = None) -> Room | None:  # type: ignore[override]
        room = dict.get(self, jid)
        if room is None:
            room = dict.get(self, normalise_or_same(jid), default)
        return room

    def jid(self, jid: str) -> str:
        """The normalised form of a room's JID: as the table holds it when we are in the room (the JIDs a
        scenario has from its options or from here need no normalising), normalised otherwise; ValueError if
        invalid."""
        room = self.get(jid)
        return room.jid if room is not None else normalise(jid)

    def __contains__(self, jid: object) -> bool:
        return isinstance(jid, str) and self.get(jid) is not None

    def of(self, full_jid: str) -> Room | None:
        """The room an occupant JID (room@service/nick) or a room's bare JID belongs to."""
        return self.get(bare(full_jid))
