"""The moving scene's pure parts: what a received frame reduces to, and the comparison's written tolerances."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from xmpp_user.fidelity import kinds, motion

ROOM = "motion-1@muc.localhost"


def _received(frame: str) -> str | None:
    return kinds.received_kind(frame, "localhost", "muc.localhost", ROOM, "Viewer-00", "me@localhost/r")


def test_what_a_client_receives_is_named_by_its_sender() -> None:
    caps = ("<iq xmlns='jabber:client' type='get' id='1' from='me@localhost' to='me@localhost/r'>"
            "<query xmlns='http://jabber.org/protocol/disco#info' node='https://conversejs.org#X'/></iq>")  # fmt: skip
    assert _received(caps) == "iq-get disco#info own#caps"
    vcard = f"<iq xmlns='jabber:client' type='result' id='2' from='{ROOM}/Viewer-03'><vCard xmlns='vcard-temp'/></iq>"
    assert _received(vcard) == "iq-result vcard occupant"
    assert _received(f"<presence xmlns='jabber:client' from='{ROOM}/Viewer-03'/>") == "presence occupant"
    assert _received(f"<presence xmlns='jabber:client' from='{ROOM}/Viewer-03' type='unavailable'/>") == (
        "presence unavailable occupant"
    )
    archived = (f"<message xmlns='jabber:client' from='{ROOM}' to='me@localhost/r'><result xmlns='urn:xmpp:mam:2' "
                "id='x'><forwarded xmlns='urn:xmpp:forward:0'/></result></message>")  # fmt: skip
    assert _received(archived) == "message mam-result"
    assert _received("<r xmlns='urn:xmpp:sm:3'/>") == "sm:r"
    assert _received("<iq xmlns='jabber:client' type='result' id='3' from='localhost'/>") == "iq-result domain"
    assert _received("  ") is None


def _recording(**first_page: Any) -> dict[str, Any]:
    received = {"presence occupant": 2, "sm:r": 10, "iq-get disco#info own#caps": 1, "iq-result domain": 2}
    page0 = {"position": 0, "sent": ["open", "presence global", "presence join", "iq-set mam room"] + ["sm:a"] * 10,
             "received": received}  # fmt: skip
    page0.update(first_page)
    page1 = {"position": 1, "sent": ["open", "presence join", "iq-get ping domain"], "received": {"sm:r": 4}}
    return {"joins": 2, "interval": 2.0, "stay": 60.0, "pages": [page0, page1]}


def test_the_same_motion_compares_equal() -> None:
    assert motion.compare_motion(_recording(), _recording()) == []


def test_a_request_counted_once_more_is_a_difference() -> None:
    ours = _recording()
    ours["pages"][1]["sent"] = ours["pages"][1]["sent"] + ["iq-get vcard occupant"]
    assert motion.compare_motion(_recording(), ours) == [
        "later page(s) sent iq-get vcard occupant: real Converse 0, the emulation 1"
    ]


def test_acks_are_compared_within_their_factor_and_no_further() -> None:
    near = _recording(sent=["open", "presence global", "presence join", "iq-set mam room"] + ["sm:a"] * 24)
    assert motion.compare_motion(_recording(), near) == []
    far = _recording(sent=["open", "presence global", "presence join", "iq-set mam room"] + ["sm:a"] * 26)
    assert motion.compare_motion(_recording(), far) == ["first page(s) sent sm:a: real Converse 10, the emulation 26"]
    few = _recording(sent=["open", "presence global", "presence join", "iq-set mam room"] + ["sm:a"] * 3)
    assert motion.compare_motion(_recording(), few) == ["first page(s) sent sm:a: real Converse 10, the emulation 3"]


def test_pings_may_differ_by_one_per_page() -> None:
    ours = _recording()
    ours["pages"][1]["sent"] = ["open", "presence join"]
    assert motion.compare_motion(_recording(), ours) == []
    ours["pages"][0]["received"] = {**ours["pages"][0]["received"], "iq-result domain": 4}
    assert motion.compare_motion(_recording(), ours) == [
        "first page(s) received iq-result domain: real Converse 2, the emulation 4"
    ]


def test_a_server_that_knew_the_caps_may_ask_less_but_not_more() -> None:
    ours = copy.deepcopy(_recording())
    ours["pages"][0]["received"]["iq-get disco#info own#caps"] = 0
    assert motion.compare_motion(_recording(), ours) == []
    ours["pages"][0]["received"]["iq-get disco#info own#caps"] = 2
    assert motion.compare_motion(_recording(), ours) == [
        "first page(s) received iq-get disco#info own#caps: real Converse 1, the emulation 2"
    ]


def test_a_join_before_the_global_presence_is_an_order_difference() -> None:
    ours = _recording(sent=["open", "presence join", "presence global", "iq-set mam room"] + ["sm:a"] * 10)
    assert motion.compare_motion(_recording(), ours) == [
        "first page 0: order: the real client sends every presence global before any presence join, the emulation "
        "after"
    ]


def test_a_cost_run_whose_second_lab_fails_to_start_stops_the_first() -> None:
    class Started:
        stopped = False

        def down(self) -> None:
            self.stopped = True

    first = Started()
    made: list[object] = []

    def factory() -> Started:
        if made:
            raise motion.MotionError("the second lab did not start")
        made.append(first)
        return first

    with pytest.raises(motion.MotionError, match="second lab"):
        motion.cost_run(factory, "converse-14", 2, 1.0, 1.0)
    assert first.stopped
