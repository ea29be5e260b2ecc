"""Every request of XmppClient against the lab Prosody: one event per round trip, with the
right name, a positive response time and no exception; failures are events too, with the
server's condition in the message; pipelined, expired and late replies are counted once."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from xml.etree.ElementTree import Element, fromstring

import gevent
import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from recorder import Recorder

from xmpp_user.core.stanza import bare
from xmpp_user.core.stream import Credentials
from xmpp_user.features import disco, mam
from xmpp_user.features import vcard as vcard_feature
from xmpp_user.scenario.accounts import register_accounts
from xmpp_user.session import requests
from xmpp_user.session.client import NICK_CLASHES, NO_VCARD, XmppClient, XmppRequestFailed
from xmpp_user.session.requests import outstanding

PASSWORD = "secret"
ACCOUNTS = [f"it-{n}" for n in range(3)]
BODY = "{jabber:client}body"
LOGINS = ["anonymous", "scram", "plain"]


@pytest.fixture(scope="module")
def accounts(lab) -> list[str]:
    assert register_accounts(lab.websocket_url, lab.registered_domain, pattern="it-{n}", count=3,
                             password=PASSWORD) == 3  # fmt: skip
    return ACCOUNTS


def make_client(lab, login: str, recorder: Recorder, **kwargs: Any) -> XmppClient:
    if login == "anonymous":
        return XmppClient(lab.websocket_url, lab.domain, request_event=recorder, **kwargs)
    mechanism, account = {"scram": ("SCRAM", ACCOUNTS[0]), "plain": ("PLAIN", ACCOUNTS[1])}[login]
    credentials = Credentials(mechanism, account, PASSWORD)
    return XmppClient(lab.websocket_url, lab.registered_domain, credentials, request_event=recorder, **kwargs)


def new_room(lab, prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@{lab.muc_domain}"


def assert_one_success(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    assert [e["name"] for e in events] == [name], events
    event = events[0]
    assert event["request_type"] == "XMPP"
    assert event["exception"] is None, event["exception"]
    assert event["response_time"] > 0
    return event


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.02)
    return True


@pytest.mark.parametrize("login", LOGINS)
def test_every_request_fires_exactly_one_successful_event(lab, accounts, login: str) -> None:
    rec = Recorder()
    client = make_client(lab, login, rec)
    other_rec = Recorder()
    other = XmppClient(lab.websocket_url, lab.domain, request_event=other_rec)
    room = new_room(lab)
    try:
        client.connect()
        negotiation = rec.take()
        assert [e["name"] for e in negotiation] == ["connect", "auth", "bind"]
        for event in negotiation:
            assert event["exception"] is None and event["response_time"] > 0
        domain = client.domain
        if login == "anonymous":
            assert bare(client.jid).endswith(f"@{lab.domain}") and client.jid.count("/") == 1
        else:
            assert bare(client.jid) == f"{ACCOUNTS[0 if login == 'scram' else 1]}@{lab.registered_domain}"
        assert client.connection.stream.sm_enabled  # stream management is on: acks must keep the session alive

        info = client.disco_info(domain)
        event = assert_one_success(rec.take(), "disco_info")
        assert event["response_length"] > 0
        assert {"urn:xmpp:ping", "urn:xmpp:carbons:2", "vcard-temp"} <= disco.features(info.element)

        items = client.disco_items(domain)
        assert_one_success(rec.take(), "disco_items")
        if login == "anonymous":
            assert lab.muc_domain in disco.items(items.element)

        client.roster()
        assert_one_success(rec.take(), "roster")
        client.enable_carbons()
        assert_one_success(rec.take(), "carbons")
        own = client.vcard(accept=NO_VCARD)
        assert_one_success(rec.take(), "vcard")
        assert own.ok
        client.ping()
        assert_one_success(rec.take(), "ping")

        joined = client.muc_join(room, "first")
        codes = {s.get("code") for s in joined.element.iter("{http://jabber.org/protocol/muc#user}status")}
        assert {"110", "201"} <= codes
        # We created the room: like Converse, the client accepts its default configuration (an instant room).
        assert wait_until(lambda: "muc_configure" in rec.names)
        events = rec.take()
        assert_one_success([e for e in events if e["name"] == "muc_join"], "muc_join")
        assert_one_success([e for e in events if e["name"] != "muc_join"], "muc_configure")
        assert client.rooms[room].joined and set(client.rooms[room].occupants) == {"first"}

        bodies = [f"archived {i} <&> '\"' ✓" for i in range(5)]
        for body in bodies:
            reflected = client.groupchat(room, body)
            assert_one_success(rec.take(), "message")
            assert reflected.element.findtext(BODY) == body

        archive = client.mam(room)
        event = assert_one_success(rec.take(), "mam")
        assert [m.findtext(BODY) for m in archive.messages] == bodies
        assert {m.get("from") for m in archive.messages} == {f"{room}/first"}
        fin = mam.fin(archive.element)
        assert (fin.complete, fin.count) == (True, 5)

        # A nick change needs a second occupant (Prosody 0.12 destroys a non-persistent room whose sole
        # occupant changes nick; lab rooms are persistent, but a second occupant makes the test independent).
        other.connect()
        other.muc_join(room, "second")
        assert wait_until(lambda: set(client.rooms[room].occupants) == {"first", "second"})
        client.muc_nick(room, "renamed")
        assert_one_success(rec.take(), "muc_nick")
        assert client.rooms[room].nick == "renamed"
        assert wait_until(lambda: set(other.rooms[room].occupants) == {"renamed", "second"}), other.rooms[room]
        client.groupchat(room, "after the nick change")
        assert_one_success(rec.take(), "message")

        client.muc_leave(room)
        assert_one_success(rec.take(), "muc_leave")
        assert room not in client.rooms
        assert wait_until(lambda: set(other.rooms[room].occupants) == {"second"})
        other.muc_leave(room)
    finally:
        client.close()
        other.close()
    assert rec.events == []  # closing fires nothing
    assert other_rec.failures == []


@pytest.mark.parametrize("mechanism", ["SCRAM", "PLAIN"])
def test_wrong_password_is_a_readable_auth_failure(lab, accounts, mechanism: str) -> None:
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.registered_domain, Credentials(mechanism, ACCOUNTS[2], "not-it"),
                        request_event=rec)  # fmt: skip
    with pytest.raises(XmppRequestFailed) as raised:
        client.connect()
    client.close()
    assert str(raised.value).startswith("auth: not-authorized")
    assert rec.names == ["connect", "auth"]
    assert rec.events[0]["exception"] is None
    ((name, message),) = rec.failures
    assert name == "auth" and message.startswith("not-authorized") and "\n" not in message
    assert not client.connected
    # The right password still works on the same client object.
    client.credentials = Credentials(mechanism, ACCOUNTS[2], PASSWORD)
    client.connect()
    assert bare(client.jid) == f"{ACCOUNTS[2]}@{lab.registered_domain}"
    client.close()


def test_in_band_registration_is_a_request(lab) -> None:
    username = f"it-new-{uuid.uuid4().hex[:8]}"
    rec = Recorder()

    def login(password: str, register: bool = True) -> XmppClient:
        client = XmppClient(lab.websocket_url, lab.registered_domain, Credentials("SCRAM", username, password),
                            request_event=rec, register=register)  # fmt: skip
        try:
            client.connect()
        finally:
            client.close()
        return client

    assert bare(login("first").jid) == f"{username}@{lab.registered_domain}"
    assert [(e["name"], e["exception"]) for e in rec.take()] == [
        ("connect", None), ("register", None), ("auth", None), ("bind", None),
    ]  # fmt: skip
    # Registering again is a no-op (the server answers conflict): the account is there, the login works.
    login("first")
    assert [(e["name"], e["exception"]) for e in rec.take()] == [
        ("connect", None), ("register", None), ("auth", None), ("bind", None),
    ]  # fmt: skip
    # ... and it did not change the password.
    with pytest.raises(XmppRequestFailed, match="^auth: not-authorized"):
        login("second")
    assert [(e["name"], e["exception"] is None) for e in rec.take()] == [
        ("connect", True), ("register", True), ("auth", False),
    ]  # fmt: skip
    login("first", register=False)
    assert [e["name"] for e in rec.take()] == ["connect", "auth", "bind"]


def test_vcard_set_by_a_registered_user_is_read_by_another(lab, accounts) -> None:
    rec = Recorder()
    owner = make_client(lab, "scram", rec)
    reader = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    photo = b"\x89PNG\r\n\x1a\n fake avatar"
    name = f"Load Tester {uuid.uuid4().hex[:6]}"
    try:
        owner.connect()
        reader.connect()
        rec.take()
        owner.set_vcard(vcard_feature.set_payload(name, "tester", photo))
        assert_one_success(rec.take(), "vcard_set")
        seen = vcard_feature.fields(reader.vcard(f"{ACCOUNTS[0]}@{lab.registered_domain}").element)
        assert_one_success(rec.take(), "vcard")
    finally:
        owner.close()
        reader.close()
    assert (seen["FN"], seen["NICKNAME"]) == (name, "tester")
    assert seen["PHOTO"] == base64.b64encode(photo).decode()


def test_twenty_pipelined_vcards_fire_twenty_events(lab) -> None:
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    client.connect()
    rec.take()
    try:
        pendings = [client.vcard(wait=False, accept=NO_VCARD) for _ in range(20)]
        assert not any(p.done for p in pendings)  # all twenty were sent before any reply was read
        client.wait_all(pendings)
    finally:
        client.close()
    assert all(p.ok for p in pendings)
    assert rec.names == ["vcard"] * 20
    assert rec.failures == []
    assert all(e["response_time"] > 0 for e in rec.events)


def test_iq_error_is_a_failure_event_with_the_condition(lab) -> None:
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    room = new_room(lab, "err")
    client.connect()
    try:
        client.muc_join(room, "member")
        rec.take()
        with pytest.raises(XmppRequestFailed) as raised:
            client.vcard(f"{room}/nobody")
        # The condition, the server's own words, and who answered (the texts differ between servers).
        said = str(raised.value)
        assert re.fullmatch(rf"vcard: item-not-found \(Recipient [^)]+\) from {re.escape(room)}/nobody", said), said
        assert rec.failures == [("vcard", said.removeprefix("vcard: "))]
        rec.take()
        # The same reply counts as an answer where "no vCard here" is normal.
        accepted = client.vcard(f"{room}/nobody", accept=NO_VCARD)
        assert_one_success(rec.take(), "vcard")
        assert accepted.condition == "item-not-found"
        # A groupchat message to a room we are not in comes back as an error message.
        with pytest.raises(XmppRequestFailed, match="^message: item-not-found"):
            client.groupchat(new_room(lab, "absent"), "hello?")
        assert [n for n, _ in rec.failures] == ["message"]
        client.ping()  # the session survived every error
    finally:
        client.close()


def test_nick_conflict_is_a_failure_event(lab) -> None:
    rec = Recorder()
    a, b = (XmppClient(lab.websocket_url, lab.domain, request_event=rec, timeout=3) for _ in range(2))
    room = new_room(lab, "nick")
    others = [XmppClient(lab.websocket_url, lab.domain, timeout=3) for _ in range(NICK_CLASHES)]
    try:
        a.connect()
        b.connect()
        a.muc_join(room, "alpha")
        b.muc_join(room, "beta")
        rec.take()
        with pytest.raises(XmppRequestFailed, match="^muc_nick: conflict"):
            a.muc_nick(room, "beta")
        ((name, reason),) = rec.failures
        assert name == "muc_nick" and reason.startswith("conflict"), reason
        # The refused change leaves the old nick in place: our messages, reflected from it, still match.
        assert a.rooms[room].nick == "alpha"
        a.groupchat(room, "still here as alpha")
        # Joining under a taken nick tries beta-2, beta-3, ...; with those taken too it fails the same way and
        # leaves no room state behind.
        for k, other in enumerate(others, 2):
            other.connect()
            other.muc_join(room, f"beta-{k}")
        c = XmppClient(lab.websocket_url, lab.domain, request_event=rec, timeout=3)
        c.connect()
        with pytest.raises(XmppRequestFailed, match="^muc_join: conflict"):
            c.muc_join(room, "beta")
        assert room not in c.rooms
        c.close()
    finally:
        for client in (a, b, *others):
            client.close()


@contextmanager
def asker_and_silent_peer(lab, rec: Recorder) -> Iterator[tuple[XmppClient, XmppClient, list[Element]]]:
    """Two connected clients: ``asker`` records its events; ``silent`` takes the IQs sent to it (they
    pile up in the list) and answers none until the test tells it to."""
    asker = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    silent = XmppClient(lab.websocket_url, lab.domain)
    held: list[Element] = []
    silent.on_iq_request = lambda iq: held.append(iq) is None
    asker.connect()
    silent.connect()
    rec.take()
    try:
        yield asker, silent, held
    finally:
        asker.close()
        silent.close()


def test_expire_fails_an_unanswered_request_and_counts_its_late_reply_once(lab, monkeypatch) -> None:
    rec = Recorder()
    late: list[int] = []
    monkeypatch.setattr(requests, "on_late_reply", [lambda: late.append(1)])
    with asker_and_silent_peer(lab, rec) as (asker, silent, held):
        slow = asker.send_iq("custom", "get", "<query xmlns='urn:example:slow'/>", silent.jid)
        assert wait_until(lambda: len(held) == 1)
        fresh = asker.send_iq("custom", "get", "<query xmlns='urn:example:slow'/>", silent.jid)
        gevent.sleep(0.3)
        young = asker.send_iq("custom", "get", "<query xmlns='urn:example:slow'/>", silent.jid)
        awaited = outstanding()
        assert asker.expire([slow, fresh, young], timeout=0.2) == [young]
        assert [(e["name"], str(e["exception"])) for e in rec.take()] == [
            ("custom", "no reply within 0.2 s"), ("custom", "no reply within 0.2 s"),
        ]  # fmt: skip
        assert not slow.ok and slow.error == "no reply within 0.2 s"
        # Failed, yet still awaited from the server (a phase that settles waits for them).
        assert outstanding() == awaited
        assert wait_until(lambda: len(held) == 3)
        # Now the peer answers all three: the young one completes; the expired ones, already recorded as failures,
        # fire nothing more and are counted as late replies (the server was slow, not silent).
        for iq in held:
            silent.reply_result(iq)
        asker.wait(young)
        asker.ping()  # one more round trip: any late event would have fired by now
        assert rec.names == ["custom", "ping"]
        assert rec.failures == []
        assert young.ok and slow.element is not None and not slow.late
        assert len(late) == 2
        assert outstanding() == awaited - 3


def test_expire_with_a_tiny_timeout_and_a_late_vcard_reply(lab) -> None:
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    client.connect()
    rec.take()
    try:
        pending = client.vcard(wait=False, accept=NO_VCARD)
        while time.perf_counter() - pending.start < 0.00001:
            pass  # let time pass without yielding to the reader greenlet: the reply stays unread
        assert client.expire([pending], timeout=0.000001) == []
        client.ping()
        client.ping()
    finally:
        client.close()
    assert [(e["name"], None if e["exception"] is None else str(e["exception"])) for e in rec.events] == [
        ("vcard", "no reply within 1e-06 s"), ("ping", None), ("ping", None),
    ]  # fmt: skip
    assert client.connection.stream.pending_count == 0


def test_wait_timeout_fails_once(lab) -> None:
    rec = Recorder()
    with asker_and_silent_peer(lab, rec) as (asker, silent, held):
        pending = asker.send_iq("custom", "get", "<query xmlns='urn:example:slow'/>", silent.jid)
        with pytest.raises(XmppRequestFailed, match=r"^custom: no reply within 0\.3 s$"):
            asker.wait(pending, timeout=0.3)
        with pytest.raises(XmppRequestFailed):
            asker.wait(pending)  # waiting again raises the same failure without a second event
        assert wait_until(lambda: len(held) == 1)
        silent.reply_result(held[0])
        asker.ping()
    assert [(e["name"], e["exception"] is None) for e in rec.events] == [("custom", False), ("ping", True)]


def test_stream_management_acks_count_every_stanza(lab) -> None:
    """Prosody asks for acks (<r/>) as it sends stanzas; each answer must carry the number of
    stanzas received since <enabled/>. Too high and Prosody ends the session, too low and it would
    resend them on resumption."""
    rec = Recorder()
    watcher = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    talker = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    room = new_room(lab, "sm")
    log: list[tuple[str, str]] = []
    watcher.connection.on_frame_received.append(lambda frame: log.append(("in", frame)))
    watcher.connection.on_frame_sent.append(lambda frame: log.append(("out", frame)))
    try:
        watcher.connect()
        talker.connect()
        watcher.muc_join(room, "watcher")
        talker.muc_join(room, "talker")
        for i in range(30):
            talker.groupchat(room, f"counted {i}")
        assert wait_until(lambda: sum(">counted 29</body>" in f for _, f in log) == 1)
        watcher.ping()
        watcher.disco_info(lab.domain)
        gevent.sleep(0.2)
        assert watcher.connected
    finally:
        watcher.close()
        talker.close()
    assert rec.failures == []
    enabled = next(i for i, (way, f) in enumerate(log) if way == "in" and f.startswith("<enabled"))
    stanzas, asked, answered = 0, [], []
    for way, frame in log[enabled + 1 :]:
        tag = fromstring(frame).tag
        if way == "in" and tag in ("{jabber:client}message", "{jabber:client}presence", "{jabber:client}iq"):
            stanzas += 1
        elif way == "in" and tag == "{urn:xmpp:sm:3}r":
            asked.append(stanzas)
        elif way == "out" and tag == "{urn:xmpp:sm:3}a":
            answered.append(int(fromstring(frame).get("h")))
    # Prosody asks again only once its previous request is answered: a burst gets fewer requests.
    assert len(asked) >= 5 and asked[-1] >= 30
    assert answered == asked


def test_frame_hooks_see_every_frame_of_each_session_in_order(lab) -> None:
    """Connection.on_frame_sent and on_frame_received: every frame as the transport took it and as it came,
    from the stream's opening to its closing, in every session of the connection."""
    sent: list[str] = []
    received: list[str] = []
    client = XmppClient(lab.websocket_url, lab.domain)
    client.connection.on_frame_sent.append(sent.append)
    client.connection.on_frame_received.append(received.append)
    for _ in range(2):
        sent.clear()
        received.clear()
        client.connect()
        ping = client.ping()
        assert ping.element is not None and 0 < client.last_received <= time.monotonic()
        client.close()
        assert sent[0].startswith("<open") and received[0].startswith("<open")
        assert any(frame.startswith("<auth") for frame in sent)
        ids_out = [fromstring(f).get("id") for f in sent if f.startswith("<iq")]
        ids_in = [fromstring(f).get("id") for f in received if f.startswith("<iq")]
        assert ping.element.get("id") in ids_out and ping.element.get("id") in ids_in
        # The server may still ask for an ack while the stream closes: ours follows our <close/>.
        assert [f for f in sent if not f.startswith("<a ")][-1].startswith("<close")


def test_occupants_are_the_nicks_in_the_room_and_nothing_else(lab) -> None:
    """Some servers (ejabberd) send presence from the room's own bare JID (its entity caps): that is
    the room speaking, not an occupant with an empty nick."""
    rec = Recorder()
    a, b = (XmppClient(lab.websocket_url, lab.domain, request_event=rec) for _ in range(2))
    room = new_room(lab, "occ")
    try:
        a.connect()
        b.connect()
        a.muc_join(room, "alpha")
        b.muc_join(room, "beta")
        assert wait_until(lambda: set(a.rooms[room].occupants) == {"alpha", "beta"})
        gevent.sleep(0.3)  # anything else the room says on a join has arrived by now
        assert set(a.rooms[room].occupants) == set(b.rooms[room].occupants) == {"alpha", "beta"}
    finally:
        a.close()
        b.close()
    assert rec.failures == []


def test_a_taken_nick_joins_under_another_as_converse_does(lab) -> None:
    """After a cut connection, a server that keeps the old session for resumption keeps its occupant under
    our nick, and the rejoin is refused with ``conflict``: the client joins as ``nick-2``, as Converse.js
    does, and nothing failed on the server's side."""
    rec = Recorder()
    a, b = (XmppClient(lab.websocket_url, lab.domain, request_event=rec) for _ in range(2))
    room = new_room(lab, "clash")
    try:
        a.connect()
        b.connect()
        a.muc_join(room, "viewer")
        b.muc_join(room, "viewer")
        assert b.rooms[room].nick == "viewer-2"
        assert wait_until(lambda: set(a.rooms[room].occupants) == {"viewer", "viewer-2"})
        b.groupchat(room, "reflected to the new nick")
    finally:
        a.close()
        b.close()
    assert rec.failures == []


def test_room_names_with_capitals_are_joined_and_used(lab) -> None:
    """Servers answer from the normalised (lower-case) room JID; the client must recognise it."""
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=rec, timeout=3)
    room = f"CpuA20-{uuid.uuid4().hex[:6].upper()}@{lab.muc_domain.upper()}"
    sent: list[str] = []
    client.connection.on_frame_sent.append(sent.append)
    try:
        client.connect()
        client.muc_join(room, "Mixed Case")
        assert room in client.rooms and client.rooms[room].jid == room.lower()
        client.groupchat(room, "reflected from the lower-case JID")
        # Normalised once, at the join: the message goes to the JID the room table holds.
        assert [fromstring(f).get("to") for f in sent if f.startswith("<message")] == [room.lower()]
        client.muc_leave(room)
    finally:
        client.close()
    assert rec.failures == []
    assert [n for n in rec.names if n != "muc_configure"] == ["connect", "auth", "bind", "muc_join", "message",
                                                              "muc_leave"]  # fmt: skip


def test_close_cancels_what_is_in_flight_without_failures(lab) -> None:
    """A user stopped by Locust closes its session with requests in flight: nothing went wrong on the
    server's side, so nothing is recorded, and nothing fires later either."""
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    client.connect()
    room = new_room(lab, "stop")
    client.muc_join(room, "leaving")
    assert wait_until(lambda: "muc_configure" in rec.names)
    rec.take()
    in_flight = [client.ping(wait=False), client.mam(room, wait=False), client.groupchat(room, "bye", wait=False),
                 client.vcard(wait=False, accept=NO_VCARD)]  # fmt: skip
    client.close()
    gevent.sleep(0.5)
    assert rec.events == []
    assert all(p.cancelled and not p.ok for p in in_flight)
    with pytest.raises(XmppRequestFailed, match=r"^ping: cancelled"):
        client.wait(in_flight[0])
    assert not client.connected


def test_wait_all_names_the_deadline_it_ran_out_of(lab) -> None:
    rec = Recorder()
    with asker_and_silent_peer(lab, rec) as (asker, silent, _):
        pendings = [asker.send_iq("custom", "get", "<query xmlns='urn:example:slow'/>", silent.jid) for _ in range(3)]
        with pytest.raises(XmppRequestFailed, match=r"^custom: no reply within 0\.3 s$"):
            asker.wait_all(pendings, timeout=0.3)
    assert [e for _, e in rec.failures] == ["no reply within 0.3 s"] * 3
