"""Requests awaiting their reply, and the Locust request events they fire.

A ``Pending`` is one round trip: it starts when the request is queued and ends exactly once,
in one of three ways:

- **completed**: the reply arrived (or an error reply whose condition the caller accepts as an
  answer); fires a successful request event with the round-trip time;
- **failed**: an error reply, no reply in time, or the connection went away; fires a failed
  request event with a one-line reason;
- **cancelled**: we closed the session ourselves (the user was stopped) while it was in
  flight; fires nothing, since nothing went wrong on the server's side.

A request that got no reply within its timeout is failed (recorded) but still recognised: its
reply may come **late**, as a saturated server's do. A late reply fires nothing more (the request
is already counted), is told to ``on_late_reply`` (the run says it once as the deviation
``late_replies``: the server was slow, not silent), and lets a caller that waits with ``patience``
carry on as a browser client would, instead of giving its session up.

``Requests`` keeps the tables by which replies are recognised (MUC room for joins, leaves and
nick changes, message id for reflections, MAM query id for archive pages, step for the
stream negotiation) and ends them all at once when a session ends. IQs are correlated by id in
the protocol core, which hands their pendings back when the session ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from xml.etree.ElementTree import Element

from gevent.event import Event
from locust.exception import RescheduleTask

REQUEST_TYPE = "XMPP"

_outstanding = 0

on_late_reply: list[Callable[[], None]] = []
"""Called once for each late reply (a reply to a request already failed for no reply in time): the run's
accounting (``xmpp_user.run.outcome``) says it as the deviation ``late_replies``."""


def outstanding() -> int:
    """Requests of this process whose reply has not come yet: those that timed out and may still be answered
    included (the server still has them), those cancelled or whose session ended not."""
    return _outstanding


def describe(condition: str, text: str) -> str:
    """A refusal as a failure's reason: the error condition, and the server's text if it gave one."""
    return f"{condition} ({text})" if text else condition


class XmppRequestFailed(RescheduleTask):
    """A request failed, or could not be sent; any failure has already been recorded.

    A subclass of Locust's ``RescheduleTask``: raised in a task, it ends the task quietly and
    the user goes on with its next task.
    """


class Pending:
    """One request awaiting its reply."""

    __slots__ = (
        "name", "start", "done", "error", "cancelled", "refused", "late", "condition", "accept", "element",
        "messages", "then", "_event", "_forget",
    )  # fmt: skip

    def __init__(self, name: str, forget: Callable[[], None] | None = None, accept: tuple[str, ...] = ()) -> None:
        self.name = name
        self.accept = accept
        """Error conditions that count as an answer (e.g. 'service-unavailable': no vCard here)."""
        self.condition = ""
        """The error condition of an accepted error reply."""
        self.start = time.perf_counter()
        self.done = False
        self.error: str | None = None
        self.cancelled = False
        self.refused = False
        """Failed by an error reply from the server (not a timeout, not a lost session)."""
        self.late = False
        """Failed for no reply in time, and its reply is still awaited."""
        self.element: Element | None = None
        self.messages: list[Element] = []
        """Archived messages collected for a MAM query."""
        self.then: Callable[[Pending], None] | None = None
        """Called once when the request ends, whichever way (from what ends it: for a reply, the connection's
        reading in the hub, where nothing may wait)."""
        self._event: Event | None = None
        self._forget = forget
        global _outstanding
        _outstanding += 1

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    def forget(self) -> None:
        """Stop recognising the reply: a late one is then ignored."""
        if self._forget is not None:
            self._forget()
            self._forget = None


def late_reply() -> None:
    """The server answered something already recorded as failed for want of a reply in time."""
    for hook in on_late_reply:
        hook()


class Requests:
    """The requests of one client, and the event hook they report to."""

    def __init__(self, request_event: Any = None) -> None:
        self._fire = request_event.fire if request_event is not None else _no_event
        self.joins: dict[str, Pending] = {}
        """Join and nick change, by room JID: ended by our own presence from the room."""
        self.leaves: dict[str, Pending] = {}
        self.messages: dict[str, Pending] = {}
        """Groupchat messages by id: ended by their reflection."""
        self.queries: dict[str, Pending] = {}
        """MAM queries by query id: collect results until the IQ result (``<fin/>``)."""
        self.negotiation: dict[str, Pending] = {}
        """Negotiation steps by name (register, auth, bind)."""
        self.frame_length = 0
        """Length of the frame being handled: the response length of a request it completes."""

    @property
    def _tables(self) -> tuple[dict[str, Pending], ...]:
        return (self.joins, self.leaves, self.messages, self.queries, self.negotiation)

    def in_flight(self, iq_keys: Iterable[Any] = ()) -> list[Pending]:
        """Every pending request not ended yet (or timed out and still awaited), the IQ ones (keys held by the
        core) included."""
        found = [k for k in iq_keys if isinstance(k, Pending)]
        for table in self._tables:
            found.extend(table.values())
        return [p for p in found if not p.done or p.late]

    def end_all(self, iq_keys: Iterable[Any], reason: str | None) -> None:
        """The session is over: fail every request with ``reason``, or cancel them all (None); a late reply
        will not come any more."""
        pendings = self.in_flight(iq_keys)
        for table in self._tables:
            table.clear()
        for p in pendings:
            if p.late:
                p.late = False
                _no_longer_awaited()
                _wake(p)
            elif reason is None:
                self.cancel(p)
            else:
                self.fail(p, reason)

    # -- ending one request ---------------------------------------------------------------

    def complete(self, pending: Pending, element: Element | None = None) -> None:
        if pending.done:
            if pending.late:
                self._answered_late(pending, element, None)
            return
        _ended(pending)
        pending.element = element
        self._fire(
            request_type=REQUEST_TYPE,
            name=pending.name,
            response_time=(time.perf_counter() - pending.start) * 1000.0,
            response_length=self.frame_length if element is not None else 0,
            exception=None,
            context={},
        )
        _wake(pending)

    def fail(self, pending: Pending, reason: str) -> None:
        if pending.done:
            return
        _ended(pending)
        pending.error = reason
        self._fire(
            request_type=REQUEST_TYPE,
            name=pending.name,
            response_time=(time.perf_counter() - pending.start) * 1000.0,
            response_length=0,
            exception=XmppRequestFailed(reason),
            context={},
        )
        _wake(pending)

    def refuse(self, pending: Pending, reason: str) -> None:
        """The server answered with an error: fail the request, marked as refused."""
        if pending.done:
            if pending.late:
                self._answered_late(pending, None, reason)
            return
        pending.refused = True
        self.fail(pending, reason)

    def time_out(self, pending: Pending, limit: float) -> None:
        """No reply within ``limit`` seconds: a recorded failure; the reply is still recognised if it comes."""
        if pending.done:
            return
        pending.late = True
        self.fail(pending, f"no reply within {limit:g} s")

    def _answered_late(self, pending: Pending, element: Element | None, error: str | None) -> None:
        pending.late = False
        _no_longer_awaited()
        pending.element = element
        pending.error = error
        pending.refused = error is not None
        late_reply()
        _wake(pending)

    def cancel(self, pending: Pending) -> None:
        if pending.done:
            return
        _ended(pending)
        pending.cancelled = True
        pending.error = "cancelled: the session was closed"
        pending.forget()
        _wake(pending)

    def record(self, name: str, reason: str) -> None:
        """A failure outside any request (e.g. the stream died while the user was idle)."""
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=0.0,
            response_length=0,
            exception=XmppRequestFailed(reason),
            context={},
        )

    # -- waiting --------------------------------------------------------------------------

    def wait(self, pending: Pending, timeout: float, limit: float | None = None, patience: float = 0.0) -> Pending:
        """Block until the request ends or ``timeout`` passes; raise XmppRequestFailed unless it completed.

        ``limit`` is the reply deadline to name in the failure, when ``timeout`` is only what is
        left of it (several requests awaited under one deadline). With ``patience``, a request that
        timed out (recorded) is awaited that many seconds more: a late reply then returns normally.
        """
        if not pending.done:
            if pending._event is None:
                pending._event = Event()
            if not pending._event.wait(timeout):
                self.time_out(pending, timeout if limit is None else limit)
        if pending.late and patience > 0:
            pending._event = Event()
            pending._event.wait(patience)
        if pending.error is not None:
            raise XmppRequestFailed(f"{pending.name}: {pending.error}")
        return pending

    def expire(self, pendings: Iterable[Pending], timeout: float) -> list[Pending]:
        """Fail the requests older than ``timeout`` (a late reply is still recognised); returns those
        still awaited."""
        limit = time.perf_counter() - timeout
        still = []
        for p in pendings:
            if p.done:
                continue
            if p.start < limit:
                self.time_out(p, timeout)
            else:
                still.append(p)
        return still


def _ended(pending: Pending) -> None:
    """The request ends; unless it timed out (a late reply may still come), nothing more is awaited for it."""
    pending.done = True
    if not pending.late:
        _no_longer_awaited()


def _no_longer_awaited() -> None:
    global _outstanding
    _outstanding -= 1


def _wake(pending: Pending) -> None:
    if pending._event is not None:
        pending._event.set()
    then, pending.then = pending.then, None
    if then is not None:
        then(pending)


def _no_event(**kwargs: Any) -> None:
    pass
