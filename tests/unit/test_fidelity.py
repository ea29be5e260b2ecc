"""Comparing request sequences, entity capabilities, and the kinds our own stanzas reduce to."""

from __future__ import annotations

from xmpp_user.features import mam, muc
from xmpp_user.features.caps import Capabilities
from xmpp_user.fidelity import kinds
from xmpp_user.fidelity.scene import compare
from xmpp_user.scenario.profiles import CONVERSE


def test_pipelined_requests_may_come_in_any_order() -> None:
    real = ["open", "iq-get roster", "iq-get vcard own", "presence join", "iq-set mam room"]
    ours = ["open", "iq-get vcard own", "iq-get roster", "presence join", "iq-set mam room"]
    assert compare(real, ours) == []


def test_an_order_the_real_client_always_keeps_must_be_kept() -> None:
    real = ["presence global", "presence join", "iq-set mam room"]
    ours = ["presence join", "presence global", "iq-set mam room"]
    assert compare(real, ours) == [
        "order: the real client sends every presence global before any presence join, the emulation after"
    ]


def test_counts_must_match() -> None:
    assert compare(["iq-get vcard room"] * 3, ["iq-get vcard room"]) == [
        "iq-get vcard room: the real client sent 3, the emulation 1"
    ]


def test_caps_verification_string_is_xep_0115s() -> None:
    # The simple example of XEP-0115 section 5.2.
    exodus = Capabilities("http://code.google.com/p/exodus", "Exodus 0.9.1", (
        "http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc",
    ), type_="pc")  # fmt: skip
    assert exodus.ver == "QgayPKawpkPSDYmwT/WM94uAlu0="
    assert CONVERSE.ver == "MarGFLKSS3ltZoL5//XHmrF42Wc="  # what Converse.js 14 itself advertised


def test_an_archive_query_without_a_form() -> None:
    frame = f"<iq xmlns='jabber:client' type='set' id='1'>{mam.query('q1', 50, '', form=False)}</iq>"
    details = kinds.mam_details(frame)
    assert (details["form"], details["max"], details["before"]) == (False, 50, "")
    with_form = f"<iq xmlns='jabber:client' type='set' id='1'>{mam.query('q1', 50, '')}</iq>"
    assert kinds.mam_details(with_form)["form"] is True


def test_our_join_reduces_as_converses() -> None:
    frame = muc.join("r@muc.localhost", "Viewer-fidelity", 0, CONVERSE.element())
    assert kinds.kind(frame, "localhost", "muc.localhost", "r@muc.localhost", "Viewer-fidelity") == "presence join"
    details = kinds.join_details(frame)
    assert details["history_maxstanzas"] == 0 and details["caps_node"] == "https://conversejs.org"
