"""Comparing request sequences, entity capabilities, and the kinds our own stanzas reduce to."""

from __future__ import annotations

import re
import time

import gevent
import pytest

from xmpp_user.features import mam, muc
from xmpp_user.features.caps import Capabilities
from xmpp_user.fidelity import kinds
from xmpp_user.fidelity.scene import compare
from xmpp_user.scenario.profiles import CONVERSE, converse_id
from xmpp_user.session.client import XmppClient


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


def test_converse_ids_are_uuid4s_with_strophes_suffix_per_purpose() -> None:
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    recorded = {"vcard": ":sendIQ", "disco_info": ":sendIQ", "roster": ":roster", "ping": ":ping", "mam": "",
                "mam_query": "", "blocklist": "", "presence": ""}  # fmt: skip
    for purpose, suffix in recorded.items():
        assert re.fullmatch(uuid4 + re.escape(suffix), converse_id(purpose)), purpose
    assert converse_id("vcard") != converse_id("vcard")
    assert (converse_id("bind"), converse_id("session")) == ("_bind_auth_2", "_session_auth_2")


def test_pace_never_sleeps_in_a_frame_callback_but_counts_its_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """XmppClient.pace: a stanza sent from a frame callback (in gevent's hub, while the connection handles what it
    read) leaves at once, and the next one sent from the user's greenlet keeps the pace after it."""
    slept: list[float] = []
    monkeypatch.setattr(gevent, "sleep", slept.append)
    client = XmppClient("ws://127.0.0.1:9/xmpp-websocket", "localhost")
    client.pace = 60.0
    client._sent_at = time.monotonic() - 30.0  # a stanza left 30 s ago: the next is due in 30 s
    client.connection._handling = True  # as if called from a frame callback
    assert client.connection.reading
    client._keep_pace()
    client._keep_pace()
    assert slept == []
    client.connection._handling = False
    client._keep_pace()
    assert len(slept) == 1 and 59.0 < slept[0] <= 60.0  # 60 s after the callback's send, not 30
