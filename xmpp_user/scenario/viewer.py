"""What a client profile (``xmpp_user.scenario.profiles``) needs of the livechat viewer it drives.

Two kinds of viewer are one: the livechat locustfile's ``Viewer`` (a Locust user, its switches from the
options and the phase) and the fidelity scene's ``EmulatedViewer`` (outside Locust, every feature on).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from xmpp_user.session.client import Pending, XmppClient


class Joiner(Protocol):
    """Joins rooms for the viewer: ``scenario.talk.Talker`` (a truth member), or the client alone."""

    def join(self, room: str, nick: str, *, extra: str = "", **kwargs: Any) -> Pending:
        """``XmppClient.muc_join``'s arguments; ``wait=False`` returns the pending join."""
        ...


@runtime_checkable
class Viewer(Protocol):
    """A viewer as its profile drives it: its client and room, this batch's switches, and the answers it
    judges itself (what a server does not offer is a deviation of the run, not a failure)."""

    xmpp: XmppClient
    talker: Joiner
    domain: str
    room: str
    """The room's normalised JID."""
    nick: str
    vcards: bool
    """Whether this batch asks for vCards (avatars) at all."""
    mam: bool
    """Whether this batch reads the room's archive."""
    carbons: bool
    disco: bool
    """Whether the disco and roster queries are made."""
    mam_max: int
    """Page size of the archive query."""
    visible_occupants: int | None
    """Rows of the occupant list on screen (None: the profile's own number)."""
    background: list[Pending]
    """Requests fired from callbacks, awaited by nobody: the viewer's task loop expires them."""

    def avatar_update(self, empty: bool = False) -> str:
        """Our avatar's hash for a presence (XEP-0153); ``empty``: the bare element when there is none."""
        ...

    def room_vcard_answered(self, answer: Pending) -> None:
        """The answer to the room's vCard (none is a deviation to note, not a failure)."""
        ...

    def carbons_answered(self, answer: Pending) -> None: ...

    def archive_read(self, archive: Pending) -> None:
        """The latest page of the room's archive, as the profile asked for it on opening the room."""
        ...
