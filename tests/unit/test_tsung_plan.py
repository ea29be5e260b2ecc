"""benchmarks/tsung_compare.py: the Tsung configuration it writes is XML that names the plan's numbers, the plan
counts its deliveries, and the totals are read from a tsung.log as Tsung 1.7 writes it. No Tsung is run here (the
benchmark's integration test runs it)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from tsung_compare import ROOM, Plan, tsung_stats, tsung_xml

PLAN = Plan(users=500, occupants=10, interval=10.0, messages=6, arrival_rate=50.0)


def parse(plan: Plan = PLAN, transport: str = "websocket") -> ET.Element:
    return ET.fromstring(tsung_xml(plan, "127.0.0.1", 15280, transport, "vm").encode())


def test_the_configuration_names_the_plan() -> None:
    root = parse()
    client = root.find("clients/client")
    assert client.attrib == {"host": "vm", "use_controller_vm": "true", "maxusers": "500"}
    assert root.find("servers/server").attrib == {"host": "127.0.0.1", "port": "15280", "type": "websocket"}
    users = root.find("load/arrivalphase/users")
    assert (users.get("maxnumber"), users.get("arrivalrate"), users.get("unit")) == ("500", "50", "second")
    options = {o.get("name"): o.get("value") for o in root.iter("option")}
    assert options["websocket_path"] == "/xmpp-websocket"
    assert options["websocket_subprotocols"] == "xmpp"
    assert options["websocket_frame"] == "text"
    assert (options["domain"], options["muc_service"], options["userid_max"]) == ("localhost", "muc.localhost", "500")


def test_the_session_joins_a_room_of_ten_and_talks_six_times_every_ten_seconds() -> None:
    session = parse().find("sessions/session")
    assert (session.get("type"), session.get("bidi")) == ("ts_jabber", "true")
    kinds = [j.get("type") for j in session.iter("jabber")]
    assert kinds == ["connect", "auth_sasl_anonymous", "connect", "auth_sasl_bind", "muc:join", "muc:chat", "close"]
    code = session.find("setdynvars").get("code")
    assert "(Id - 1) div 10" in code and code.startswith("fun(") and code.endswith("end.")
    join = next(j for j in session.iter("jabber") if j.get("type") == "muc:join")
    assert join.get("room") == f"{ROOM}%%_room%%"
    loop = session.find("for")
    assert (loop.get("from"), loop.get("to")) == ("1", "6")
    assert [t.get("value") for t in loop.iter("thinktime")] == ["10"]
    chat = loop.find("transaction/request/jabber")
    assert (chat.get("type"), chat.get("stamped"), chat.get("ack"), chat.get("room")) == (
        "muc:chat",
        "true",
        "no_ack",
        f"{ROOM}%%_room%%",
    )
    # One interval after the last message, then the stream closes.
    children = [c.tag for c in session]
    assert children[-3:] == ["for", "thinktime", "request"]
    assert session.findall("thinktime")[-1].get("value") == "10"


def test_tcp_uses_the_c2s_port() -> None:
    server = parse(transport="tcp").find("servers/server")
    assert server.get("type") == "tcp"


@pytest.mark.parametrize(
    ("plan", "rooms", "deliveries"),
    [
        (PLAN, 50, 50 * 10 * 10 * 6),  # every message to its ten occupants, the sender's reflection included
        (Plan(users=25, occupants=10, interval=1, messages=2, arrival_rate=5), 3, (100 + 100 + 25) * 2),
    ],
)
def test_planned_deliveries(plan: Plan, rooms: int, deliveries: int) -> None:
    assert (plan.rooms, plan.deliveries) == (rooms, deliveries)


def test_totals_are_the_last_field_of_each_name_s_last_line() -> None:
    log = """# stats: dump at 1796577946
stats: users 2 2
stats: {cpu,"tsung_controller@vm"} 1 62.6 0.0 62.6 38.9 38.9 1
stats: tr_chat 6 0.2378 0.0325 0.281 0.196 0 0
stats: xmpp_msg_latency 6 3341.2 927.4 4003.7 2028.3 0 0
stats: size_rcv 7011 7011
# stats: dump at 1796577956
stats: users 0 2
stats: users_count 0 2
stats: finish_users_count 0 2
stats: tr_chat 0 0 0 0.281 0.196 0.2378333333333333 6
stats: xmpp_msg_latency 0 0 0 4003.755 2028.348 3341.268 6
stats: error_connect_econnrefused 0 3
stats: size_rcv 0 7011
EndMonitor:{1796,577956,328898}
"""
    assert tsung_stats(log) == {
        "users": 2,
        "users_count": 2,
        "finish_users_count": 2,
        "tr_chat": 6,
        "xmpp_msg_latency": 6,
        "error_connect_econnrefused": 3,
        "size_rcv": 7011,
    }
