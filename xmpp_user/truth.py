"""Message truth: delivery latency, loss, duplicates and order of groupchat messages.

Theory of operation. Every groupchat message a user sends carries a marker element
``<t xmlns='urn:locust-xmpp:truth' s='SENDER' n='SEQ' ts='UNIX_MS'/>``: who sent it, its
sequence number for that sender (from 1) and the wall-clock send time in milliseconds.
The sender also counts how many deliveries it expects (the room's occupants at send time,
itself included, since MUC reflects a message to its author). Each receiving user feeds the
markers it gets to its ``Receiver``, which returns the delivery latency of a first live
delivery and counts duplicates and late (out-of-order) arrivals. Whatever was expected and
never delivered is lost.

All counts go to a ``Tally``: plain integers that merge by addition, so a worker can ship
its counts as deltas and the master can sum them. This module does no I/O and knows nothing
of Locust; ``xmpp_user.truth_locust`` wires the process tally into a Locust run.

Latencies compare the sender's and the receiver's wall clocks: they are exact on one host
and as good as NTP across hosts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from xml.etree.ElementTree import Element

NS = "urn:locust-xmpp:truth"
TAG = f"{{{NS}}}t"
"""The marker's tag in ElementTree's Clark notation."""

_SENDER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass
class Tally:
    """Message counters of one process (deltas on a worker, totals on the master)."""

    sent: int = 0
    """Messages sent with a marker."""
    expected: int = 0
    """Deliveries expected: for each message, the room's occupants at send time."""
    delivered: int = 0
    """First live deliveries of a marker to a receiver."""
    duplicated: int = 0
    """Deliveries of a (sender, seq) that this receiver had already seen."""
    out_of_order: int = 0
    """First deliveries that arrived after a later message of the same sender."""

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.delivered)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def merge(self, other: dict[str, int]) -> None:
        """Add counters from ``as_dict()`` of another tally; unknown keys are ignored."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + int(other.get(f.name, 0)))

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    def summary(self) -> dict[str, int]:
        """The counters plus the derived ``lost``."""
        return {**self.as_dict(), "lost": self.lost}


TALLY = Tally()
"""The tally shared by every user of this process."""


def marker(sender: str, seq: int, ts_ms: int) -> str:
    """The marker element as XML text, to embed in a ``<message>``."""
    return f"<t xmlns='{NS}' s='{sender}' n='{seq}' ts='{ts_ms}'/>"


def find_marker(message: Element) -> Element | None:
    """The marker child of a parsed ``<message>``, if it has one."""
    return message.find(TAG)


class Sender:
    """Numbers the messages of one sending user and counts what it sends."""

    def __init__(self, sender_id: str, tally: Tally | None = None) -> None:
        if not _SENDER_ID.fullmatch(sender_id):
            raise ValueError(f"sender id must match {_SENDER_ID.pattern}: {sender_id!r}")
        self.sender_id = sender_id
        self.tally = TALLY if tally is None else tally
        self.sent = 0
        """Messages this sender has marked; also the last sequence number used."""

    def next_marker(self, now_ms: float, expected: int) -> str:
        """Marker for the next message, sent at ``now_ms``, that ``expected`` occupants should get."""
        self.sent += 1
        self.tally.sent += 1
        self.tally.expected += expected
        return marker(self.sender_id, self.sent, int(now_ms))


class _Seen:
    """What one receiver has seen from one sender: the highest seq and a window below it."""

    __slots__ = ("highest", "window")

    def __init__(self) -> None:
        self.highest = 0
        self.window = 0
        """Bit i set: seq ``highest - i`` has been seen (bit 0 is ``highest`` itself)."""


class Receiver:
    """Checks the markers one receiving user gets.

    Memory per sender is one small int: the highest seq seen and a bitmap of the
    ``WINDOW`` seqs below it. A marker more than ``WINDOW`` seqs behind the highest can no
    longer be told from a duplicate; it is counted as a late first delivery.
    """

    WINDOW = 1024
    """How many seqs below the highest one are remembered per sender."""

    def __init__(self, tally: Tally | None = None) -> None:
        self.tally = TALLY if tally is None else tally
        self._senders: dict[str, _Seen] = {}
        self._mask = (1 << self.WINDOW) - 1

    def receive(self, element: Element, now_ms: float, live: bool = True) -> float | None:
        """Check a marker received at ``now_ms``; return the latency in ms of a first live delivery.

        Returns None for a duplicate. Pass ``live=False`` for replayed messages (MUC join
        history, MAM results, anything with a ``urn:xmpp:delay`` stamp): they were not
        expected by this receiver, so they are neither counted nor remembered.
        Raises ValueError if the marker lacks or garbles an attribute.
        """
        try:
            sender, seq, ts = element.attrib["s"], int(element.attrib["n"]), int(element.attrib["ts"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"malformed truth marker: {element.attrib!r}") from e
        if seq < 1:
            raise ValueError(f"malformed truth marker: {element.attrib!r}")
        if not live:
            return None
        seen = self._senders.get(sender)
        if seen is None:
            seen = self._senders[sender] = _Seen()
        if seq > seen.highest:
            gap = seq - seen.highest
            seen.window = ((seen.window << gap) | 1) & self._mask if gap < self.WINDOW else 1
            seen.highest = seq
        else:
            if seen.highest - seq < self.WINDOW:
                bit = 1 << (seen.highest - seq)
                if seen.window & bit:
                    self.tally.duplicated += 1
                    return None
                seen.window |= bit
            self.tally.out_of_order += 1
        self.tally.delivered += 1
        # Clocks of two hosts may disagree by a few ms; a negative latency means "instant".
        return max(0.0, float(now_ms - ts))

    @property
    def senders(self) -> int:
        """How many senders this receiver keeps state for."""
        return len(self._senders)
