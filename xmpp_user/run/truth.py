"""Message truth: delivery latency, loss, duplicates and order of groupchat messages.

Theory of operation
-------------------
Every groupchat message a user sends carries a marker element
``<t xmlns='urn:locust-xmpp:truth' s='SENDER' n='SEQ' ts='UNIX_MS'/>``: who sent it, its
sequence number for that sender (from 1) and the wall-clock send time in milliseconds. Every
room join of a user carries a member element ``<m xmlns='urn:locust-xmpp:truth' id='MEMBER'/>``
in its presence, which the room passes on to every occupant: so each user knows which
occupants are load-test receivers (and which are not: a real client in the room is never
counted), and on which worker each one runs (the id starts with the worker's prefix).

**Who should receive a message** is decided when the room reflects it to its sender, whenever that
is: a room sends its presences and messages to each occupant in one order, the order in which it
handled them, so the members the sender knows at the reflection are exactly the occupants the room
routed the message to. The reflection is what counts, not the ``message`` request: a reflection that
comes after the request's timeout (a saturated server) still confirms the message, and a user that
stops while its messages are in flight still reads their reflections. A message is ``unconfirmed``
only when the room refused it (an error reply) or its sender's time in the room ended before the
reflection came; a planned message that could not be sent (its sender was not connected) is
``skipped``.

**A receiver's deliveries are all read** when its time in the room ends with its own leave
confirmed: the room's answer to a leave comes after everything the room routed to it before, so a
member that read its stream up to that answer has seen every delivery due to it; such a member has
``left``. A member whose time ended any other way (connection lost or closed before the answer,
kicked, a join that failed or was given up) is ``broken``: deliveries due to it may still have been
queued for it, and nobody can tell.

**Judgement.** Counts are kept per (receiving member, sending worker): expected deliveries on the
sender's side, first live deliveries on the receiver's side. A pair is judged only once its member's
time in the room ended ``GRACE`` seconds ago (the time the last counts of other workers take to
arrive), or at the end of the run; until then its shortfall is ``in_flight``. Then, what was expected
and not delivered is ``lost`` for a member that left (or that was still in the room when the run
ended), and ``unverified`` for a broken one; what was delivered beyond expectation is ``unexpected``,
except up to the number of messages of that worker whose sender never saw the reflection because its
session ended (``uncertain``): the room may or may not have routed those, so a surplus they explain
is ``unverified`` too. A worker that went missing takes its members and its messages with it: their
shortfall is ``unverified`` and their surplus is not judged, since its last counts never arrived.
Lost, unexpected and unverified never cancel each other.

All counts live in a ``Tally``: integers and dicts that merge by addition or union, so a worker can
ship its counts as deltas and the master can sum them. This module does no I/O and knows nothing
of Locust; ``xmpp_user.scenario.talk`` applies these rules to a client's stanzas and ``xmpp_user.run.outcome``
wires the process tally into a Locust run.

Latencies compare the sender's and the receiver's wall clocks: they are exact on one host
and as good as NTP across hosts.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Collection, Iterable
from xml.etree.ElementTree import Element

NS = "urn:locust-xmpp:truth"
TAG = f"{{{NS}}}t"
"""The message marker's tag in ElementTree's Clark notation."""
MEMBER_TAG = f"{{{NS}}}m"
"""The member element's tag: a room occupant that is one of our receivers."""

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_COUNTERS = ("sent", "confirmed", "unconfirmed", "skipped", "duplicated", "out_of_order")

GRACE = 10.0
"""Seconds after a member's time in the room ended before its counts are judged: a worker reports its
counts every 3 s, so by then the expectations other workers' senders formed for it have arrived."""

JUDGED = ("expected", "delivered", "in_flight", "lost", "unexpected", "unverified")
"""The keys ``Tally.summary`` adds to the counters."""


def group_of(identity: str) -> str:
    """The process prefix of a sender or member id: ``w3`` for ``w3.17.2``, ``l`` for a local run."""
    return identity.split(".", 1)[0]


class Tally:
    """Message counters of one process (deltas on a worker, totals on the master)."""

    def __init__(self) -> None:
        self.sent = 0
        """Messages that left with a marker."""
        self.confirmed = 0
        """Messages the room reflected to their sender."""
        self.unconfirmed = 0
        """Messages never reflected: refused with an error, or their sender's time in the room ended first."""
        self.skipped = 0
        """Messages a scenario planned and did not send because its user was not connected."""
        self.duplicated = 0
        """Deliveries of a (sender, seq) that this receiver had already seen."""
        self.out_of_order = 0
        """First deliveries that arrived after a later message of the same sender."""
        self.expected: Counter[str] = Counter()
        """Deliveries expected, by 'member|sending group'."""
        self.delivered: Counter[str] = Counter()
        """First live deliveries, by 'member|sending group'."""
        self.left: dict[str, float] = {}
        """Members whose own leave the room confirmed, with the time (every delivery due to them was read)."""
        self.broken: dict[str, float] = {}
        """Members whose time in the room ended any other way, with the time."""
        self.uncertain: Counter[str] = Counter()
        """Messages by sending group whose reflection their sender never saw because its session ended."""
        self._confirmations: Counter[tuple[frozenset[str], str]] = Counter()

    def confirm(self, members: frozenset[str], group: str) -> None:
        """A message from ``group`` was reflected while ``members`` were in the room: O(1) now,
        spread over the members when the counts are next read."""
        self.confirmed += 1
        self._confirmations[(members, group)] += 1

    def ended(self, member: str, left: bool, now: float) -> None:
        """``member``'s time in the room ended at ``now``: with its own leave confirmed, or not."""
        (self.left if left else self.broken)[member] = now

    def _settle(self) -> None:
        if self._confirmations:
            confirmations, self._confirmations = self._confirmations, Counter()
            expected = self.expected
            for (members, group), count in confirmations.items():
                for member in members:
                    expected[f"{member}|{group}"] += count

    def as_dict(self) -> dict[str, object]:
        """The counts as plain msgpack-able data (``merge`` takes it back)."""
        self._settle()
        data: dict[str, object] = {name: getattr(self, name) for name in _COUNTERS}
        data.update(expected=dict(self.expected), delivered=dict(self.delivered), left=dict(self.left),
                    broken=dict(self.broken), uncertain=dict(self.uncertain))  # fmt: skip
        return data

    def merge(self, other: dict[str, object]) -> None:
        """Add counts from ``as_dict()`` of another tally; unknown keys are ignored."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + int(other.get(name, 0)))  # type: ignore[call-overload]
        self.expected.update(other.get("expected") or {})  # type: ignore[arg-type]
        self.delivered.update(other.get("delivered") or {})  # type: ignore[arg-type]
        self.uncertain.update(other.get("uncertain") or {})  # type: ignore[arg-type]
        for name in ("left", "broken"):
            ended = other.get(name) or {}
            if isinstance(ended, dict):
                getattr(self, name).update(ended)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def judge(self, key: str, gone: Collection[str] = (), now: float | None = None, final: bool = False) -> str:
        """How the pair ``key`` ('member|group') stands: 'missing' (``gone`` names its worker), 'in_flight',
        'broken' or 'left' (which includes a member still in the room when the run ended: ``final``)."""
        member, _, group = key.partition("|")
        if group in gone or group_of(member) in gone:
            return "missing"
        ended = self.broken.get(member)
        state = "broken"
        if ended is None:
            ended, state = self.left.get(member), "left"
        if final:
            return state
        if ended is None or (now if now is not None else time.time()) - ended < GRACE:
            return "in_flight"
        return state

    def summary(self, missing: Iterable[str] = (), now: float | None = None, final: bool = False) -> dict[str, int]:
        """The totals, judged (see the theory of operation): ``missing`` names the groups (workers) that went
        missing; ``final`` judges every pair, as at the end of a run."""
        self._settle()
        gone = set(missing)
        now = time.time() if now is None else now
        in_flight = lost = unexpected = unverified = 0
        for key in self.expected.keys() | self.delivered.keys():
            shortfall = self.expected[key] - self.delivered[key]
            state = self.judge(key, gone, now, final)
            if state == "missing":
                unverified += max(0, shortfall)  # half of the counts went with the worker
            elif state == "in_flight":
                in_flight += max(0, shortfall)
            elif shortfall < 0:
                explained = min(-shortfall, self.uncertain[key.partition("|")[2]])
                unverified += explained
                unexpected += -shortfall - explained
            elif state == "broken":
                unverified += shortfall
            else:
                lost += shortfall
        totals = {name: getattr(self, name) for name in _COUNTERS}
        totals.update(
            expected=sum(self.expected.values()),
            delivered=sum(self.delivered.values()),
            in_flight=in_flight,
            lost=lost,
            unexpected=unexpected,
            unverified=unverified,
        )
        return totals

    def members(self, missing: Iterable[str] = (), final: bool = True) -> list[dict[str, object]]:
        """One row per (member, sending group): its counts and how it was judged, for the run's files."""
        self._settle()
        gone, now = set(missing), time.time()
        rows = []
        for key in sorted(self.expected.keys() | self.delivered.keys()):
            member, _, group = key.partition("|")
            rows.append({"member": member, "group": group, "expected": self.expected[key],
                         "delivered": self.delivered[key], "state": self.judge(key, gone, now, final)})  # fmt: skip
        return rows


TALLY = Tally()
"""The tally shared by every user of this process."""

_member_numbers = itertools.count(1)


def marker(sender: str, seq: int, ts_ms: int) -> str:
    """The marker element as XML text, to embed in a ``<message>``."""
    return f"<t xmlns='{NS}' s='{sender}' n='{seq}' ts='{ts_ms}'/>"


def member_element(member: str) -> str:
    """The member element as XML text, to embed in a room join presence."""
    return f"<m xmlns='{NS}' id='{member}'/>"


def member_of(presence: Element) -> str:
    """The member id a room presence carries, or '' for an occupant that is not ours."""
    element = presence.find(MEMBER_TAG)
    if element is None:
        return ""
    member = element.get("id", "")
    return member if _ID.fullmatch(member) else ""


def find_marker(message: Element) -> Element | None:
    """The marker child of a parsed ``<message>``, if it has one."""
    return message.find(TAG)


def check_id(identity: str) -> str:
    if not _ID.fullmatch(identity):
        raise ValueError(f"truth ids must match {_ID.pattern}: {identity!r}")
    return identity


def new_member(sender_id: str) -> str:
    """A member id for one room join of the user ``sender_id``, unique in the run."""
    return check_id(f"{sender_id}.{next(_member_numbers)}")


class Sender:
    """Numbers the messages of one sending user."""

    def __init__(self, sender_id: str, tally: Tally | None = None) -> None:
        self.sender_id = check_id(sender_id)
        self.group = group_of(sender_id)
        self.tally = TALLY if tally is None else tally
        self.seq = 0
        """The last sequence number used."""

    def next_marker(self, now_ms: float) -> str:
        """Marker for the next message, about to be sent at ``now_ms``."""
        self.seq += 1
        return marker(self.sender_id, self.seq, int(now_ms))


class _Seen:
    """What one receiver has seen from one sender: the highest seq and a window below it."""

    __slots__ = ("highest", "window", "key")

    def __init__(self, key: str) -> None:
        self.highest = 0
        self.window = 0
        """Bit i set: seq ``highest - i`` has been seen (bit 0 is ``highest`` itself)."""
        self.key = key
        """The tally key of deliveries from this sender: 'member|sending group'."""


class Receiver:
    """Checks the markers one member (one user's time in one room) gets.

    Memory per sender is one small int: the highest seq seen and a bitmap of the
    ``WINDOW`` seqs below it. A marker more than ``WINDOW`` seqs behind the highest can no
    longer be told from a duplicate; it is counted as a late first delivery.
    """

    WINDOW = 1024
    """How many seqs below the highest one are remembered per sender."""

    def __init__(self, member: str, tally: Tally | None = None) -> None:
        self.member = check_id(member)
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
            seen = self._senders[sender] = _Seen(f"{self.member}|{group_of(sender)}")
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
        self.tally.delivered[seen.key] += 1
        # Clocks of two hosts may disagree by a few ms; a negative latency means "instant".
        return max(0.0, float(now_ms - ts))

    @property
    def senders(self) -> int:
        """How many senders this receiver keeps state for."""
        return len(self._senders)
