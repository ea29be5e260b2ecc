"""Message archive management (XEP-0313, urn:xmpp:mam:2) with result set management (XEP-0059)."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_attr, escape_text

_RESULT = ns.clark(ns.MAM, "result")
_FORWARDED = ns.clark(ns.FORWARD, "forwarded")
_FIN = ns.clark(ns.MAM, "fin")
_SET = ns.clark(ns.RSM, "set")


def query(
    queryid: str,
    max_: int = 50,
    before: str | None = None,
    after: str | None = None,
    with_: str | None = None,
    form: bool = True,
) -> str:
    """A MAM query. ``before=''`` asks for the last page, as a client opening a room does.

    Without ``form`` (and ``with_``) the query carries no data form: the archive unfiltered."""
    fields = f"<field var='FORM_TYPE' type='hidden'><value>{ns.MAM}</value></field>"
    if with_:
        fields += f"<field var='with'><value>{escape_text(with_)}</value></field>"
    rsm = ""  # <before/> first, as Converse.js writes it (the order means nothing to a server)
    if before is not None:
        rsm += f"<before>{escape_text(before)}</before>" if before else "<before/>"
    if after:
        rsm += f"<after>{escape_text(after)}</after>"
    rsm += f"<max>{int(max_)}</max>"
    x = f"<x xmlns='{ns.DATA_FORMS}' type='submit'>{fields}</x>" if form or with_ else ""
    return f"<query xmlns='{ns.MAM}' queryid='{escape_attr(queryid)}'>{x}<set xmlns='{ns.RSM}'>{rsm}</set></query>"


def result(message: Element) -> tuple[str, Element] | None:
    """(queryid, forwarded message) if ``message`` carries an archive result, else None."""
    res = message.find(_RESULT)
    if res is None:
        return None
    forwarded = res.find(_FORWARDED)
    inner = forwarded.find(ns.MESSAGE) if forwarded is not None else None
    if inner is None:
        return None
    return res.get("queryid", ""), inner


@dataclass(frozen=True, slots=True)
class Fin:
    complete: bool
    first: str
    last: str
    count: int | None


def fin(iq_result: Element) -> Fin:
    element = iq_result.find(_FIN)
    if element is None:
        return Fin(False, "", "", None)
    rsm = element.find(_SET)
    first = last = ""
    count = None
    if rsm is not None:
        first = rsm.findtext(ns.clark(ns.RSM, "first"), "")
        last = rsm.findtext(ns.clark(ns.RSM, "last"), "")
        text = rsm.findtext(ns.clark(ns.RSM, "count"))
        count = int(text) if text and text.isdigit() else None
    return Fin(element.get("complete") == "true", first, last, count)
