"""The protocol core fed with frames as Prosody 0.12 sends them: no socket anywhere."""

from __future__ import annotations

import pytest
import scramp

from xmpp_user.core import events as ev
from xmpp_user.core import sasl
from xmpp_user.core.errors import FrameError, ProtocolError
from xmpp_user.core.framing import parse_frame
from xmpp_user.core.stream import Credentials, State, StreamSettings, XmppStream

OPEN = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='s1' version='1.0' xml:lang='en'/>"


def features(*mechanisms: str, register: bool = False) -> str:
    mechs = "".join(f"<mechanism>{m}</mechanism>" for m in mechanisms)
    reg = "<register xmlns='http://jabber.org/features/iq-register'/>" if register else ""
    return (
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
        f"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{mechs}</mechanisms>{reg}</stream:features>"
    )


def bind_features(sm: bool = True) -> str:
    return (
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        + ("<sm xmlns='urn:xmpp:sm:3'/>" if sm else "")
        + "</stream:features>"
    )


def bind_result(id_: str, jid: str = "anon@localhost/r1") -> str:
    return (
        f"<iq xmlns='jabber:client' type='result' id='{id_}'>"
        f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{jid}</jid></bind></iq>"
    )


def iq_id(frame: str) -> str:
    return parse_frame(frame).get("id")


def until_bind(stream: XmppStream, sm: bool = True) -> tuple[list[ev.Event], str]:
    """Drive an ANONYMOUS stream up to its bind request; returns every event seen and the bind IQ sent."""
    seen: list[ev.Event] = []
    stream.start()
    stream.data_to_send()
    seen += stream.receive_frame(OPEN)
    seen += stream.receive_frame(features("ANONYMOUS"))
    stream.data_to_send()
    seen += stream.receive_frame("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    stream.data_to_send()
    seen += stream.receive_frame(OPEN)
    seen += stream.receive_frame(bind_features(sm))
    (bind,) = stream.data_to_send()
    return seen, bind


def negotiate(stream: XmppStream, sm: bool = True) -> list[ev.Event]:
    """Drive an ANONYMOUS stream to READY; returns every event seen."""
    seen, bind = until_bind(stream, sm)
    seen += stream.receive_frame(bind_result(iq_id(bind)))
    if sm:
        assert stream.data_to_send() == ["<enable xmlns='urn:xmpp:sm:3'/>"]
        seen += stream.receive_frame("<enabled xmlns='urn:xmpp:sm:3' id='x'/>")
    return seen


def test_anonymous_negotiation_frames_and_events() -> None:
    stream = XmppStream("localhost")
    stream.start()
    assert stream.data_to_send() == [
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0' xml:lang='en'/>"
    ]
    assert stream.receive_frame(OPEN) == [ev.StreamOpened("s1", "localhost")]
    assert stream.receive_frame(features("PLAIN", "ANONYMOUS")) == [ev.AuthRequested("ANONYMOUS")]
    assert stream.data_to_send() == ["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'>=</auth>"]
    assert stream.receive_frame("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>") == [
        ev.Authenticated("ANONYMOUS")
    ]
    assert stream.state == State.RESTARTING
    assert stream.data_to_send()[0].startswith("<open ")
    stream.receive_frame(OPEN)
    assert stream.receive_frame(bind_features(sm=False)) == [ev.BindRequested()]
    (bind,) = stream.data_to_send()
    assert "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'></bind>" in bind
    assert "xmlns='jabber:client'" in bind
    assert stream.receive_frame(bind_result(iq_id(bind))) == [
        ev.Bound("anon@localhost/r1"),
        ev.Ready("anon@localhost/r1", False),
    ]
    assert stream.state == State.READY


def test_stream_management_enabled_and_acks_count_stanzas() -> None:
    stream = XmppStream("localhost")
    seen = negotiate(stream, sm=True)
    assert seen[-1] == ev.Ready("anon@localhost/r1", True)
    stream.receive_frame("<message xmlns='jabber:client' from='a@localhost/x'><body>1</body></message>")
    stream.receive_frame("<presence xmlns='jabber:client' from='a@localhost/x'/>")
    assert stream.receive_frame("<r xmlns='urn:xmpp:sm:3'/>") == []
    assert stream.data_to_send() == ["<a xmlns='urn:xmpp:sm:3' h='2'/>"]
    # Written otherwise than Prosody does (the text fast path misses it), it is parsed and answered all the same.
    for ack_request in ('<r xmlns="urn:xmpp:sm:3"/>', "<r xmlns='urn:xmpp:sm:3'></r>", "<r xmlns='urn:xmpp:sm:3' />"):
        assert stream.receive_frame(ack_request) == []
        assert stream.data_to_send() == ["<a xmlns='urn:xmpp:sm:3' h='2'/>"]


def test_stream_management_failure_is_not_fatal() -> None:
    stream = XmppStream("localhost")
    stream.start()
    stream.receive_frame(OPEN)
    stream.receive_frame(features("ANONYMOUS"))
    stream.receive_frame("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    stream.receive_frame(OPEN)
    stream.receive_frame(bind_features(sm=True))
    (bind,) = [f for f in stream.data_to_send() if "bind" in f]
    stream.receive_frame(bind_result(iq_id(bind)))
    assert stream.receive_frame("<failed xmlns='urn:xmpp:sm:3'/>") == [ev.Ready("anon@localhost/r1", False)]


def scram_server(mechanism: str, password: str) -> scramp.ScramServer:
    """A SCRAM server side (scramp's) that knows ``password`` for any user."""
    server_mech = scramp.ScramMechanism(mechanism)
    auth_info = server_mech.make_auth_info(password, iteration_count=4096)
    return server_mech.make_server(lambda _username: auth_info)


def sasl_frame(name: str, payload: str) -> str:
    return f"<{name} xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{sasl.b64(payload.encode())}</{name}>"


def sasl_payload(frame: str) -> str:
    return sasl.unb64(parse_frame(frame).text).decode()


@pytest.mark.parametrize(
    ("requested", "offered", "used"),
    [
        ("SCRAM", ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], "SCRAM-SHA-256"),
        ("SCRAM", ["SCRAM-SHA-512", "SCRAM-SHA-1"], "SCRAM-SHA-512"),
        ("SCRAM-SHA-1", ["SCRAM-SHA-1", "SCRAM-SHA-256"], "SCRAM-SHA-1"),
    ],
)
def test_scram_negotiation_over_frames(requested: str, offered: list[str], used: str) -> None:
    stream = XmppStream("reg.localhost", Credentials(requested, "user", "pencil"))
    stream.start()
    stream.data_to_send()
    stream.receive_frame(OPEN)
    assert stream.receive_frame(features(*offered)) == [ev.AuthRequested(used)]
    (auth,) = stream.data_to_send()
    assert parse_frame(auth).get("mechanism") == used
    server = scram_server(used, "pencil")
    server.set_client_first(sasl_payload(auth))
    assert stream.receive_frame(sasl_frame("challenge", server.get_server_first())) == []
    (response,) = stream.data_to_send()
    server.set_client_final(sasl_payload(response))
    assert stream.receive_frame(sasl_frame("success", server.get_server_final())) == [ev.Authenticated(used)]
    assert stream.state == State.RESTARTING


def test_scram_refuses_a_server_that_does_not_know_the_password() -> None:
    stream = XmppStream("reg.localhost", Credentials("SCRAM", "user", "pencil"))
    stream.start()
    stream.receive_frame(OPEN)
    stream.receive_frame(features("SCRAM-SHA-1"))
    (_, auth) = stream.data_to_send()
    # A server with another password's keys: it accepts no proof, but here it claims success with its signature.
    server = scram_server("SCRAM-SHA-1", "not pencil")
    server.set_client_first(sasl_payload(auth))
    stream.receive_frame(sasl_frame("challenge", server.get_server_first()))
    (response,) = stream.data_to_send()
    with pytest.raises(scramp.ScramException):
        server.set_client_final(sasl_payload(response))
    events = stream.receive_frame(sasl_frame("success", "v=" + sasl.b64(b"\0" * 20)))
    assert events == [
        ev.NegotiationFailed(
            "auth",
            "client-error",
            "SCRAM-SHA-1 server signature does not verify: the server does not know the password",
        )
    ]
    assert stream.data_to_send() == [
        "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
    ]


@pytest.mark.parametrize(
    ("requested", "offered", "text"),
    [
        (
            "SCRAM",
            ["PLAIN", "SCRAM-SHA-1-PLUS"],
            "SCRAM is not offered by the server (it offers PLAIN, SCRAM-SHA-1-PLUS)",
        ),
        ("SCRAM-SHA-256", ["SCRAM-SHA-1"], "SCRAM-SHA-256 is not offered by the server (it offers SCRAM-SHA-1)"),
        ("SCRAM-SHA-512", [], "SCRAM-SHA-512 is not offered by the server (it offers none)"),
    ],
)
def test_no_acceptable_scram_offered(requested: str, offered: list[str], text: str) -> None:
    stream = XmppStream("reg.localhost", Credentials(requested, "u", "p"))
    stream.start()
    stream.receive_frame(OPEN)
    assert stream.receive_frame(features(*offered)) == [ev.NegotiationFailed("auth", "unsupported-mechanism", text)]
    assert stream.state == State.CLOSING


def test_credentials_scramp_refuses_fail_the_auth_step() -> None:
    stream = XmppStream("reg.localhost", Credentials("SCRAM", "user", "bad\u0007password"))
    stream.start()
    stream.receive_frame(OPEN)
    assert stream.receive_frame(features("SCRAM-SHA-1")) == [
        ev.NegotiationFailed(
            "auth", "client-error", "SCRAM-SHA-1 cannot use these credentials: control characters forbidden"
        )
    ]


def test_sasl_failure_and_missing_mechanism() -> None:
    stream = XmppStream("reg.localhost", Credentials("PLAIN", "u", "p"))
    stream.start()
    stream.receive_frame(OPEN)
    assert stream.receive_frame(features("ANONYMOUS")) == [
        ev.NegotiationFailed(
            "auth", "unsupported-mechanism", "PLAIN is not offered by the server (it offers ANONYMOUS)"
        )
    ]
    stream = XmppStream("reg.localhost", Credentials("PLAIN", "u", "p"))
    stream.start()
    stream.receive_frame(OPEN)
    stream.receive_frame(features("PLAIN"))
    assert (
        stream.data_to_send()[-1] == "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHUAcA==</auth>"
    )
    failure = (
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
        "<text xml:lang='en'>Invalid username or password</text></failure>"
    )
    assert stream.receive_frame(failure) == [
        ev.NegotiationFailed("auth", "not-authorized", "Invalid username or password")
    ]
    assert stream.state == State.CLOSING


def test_in_band_registration_then_auth() -> None:
    stream = XmppStream("reg.localhost", Credentials("SCRAM-SHA-1", "u1", "pw"), StreamSettings(register=True))
    stream.start()
    stream.receive_frame(OPEN)
    assert stream.receive_frame(features("SCRAM-SHA-1", register=True)) == [ev.RegisterRequested()]
    (_, reg) = stream.data_to_send()
    assert "<username>u1</username><password>pw</password>" in reg
    conflict = (
        f"<iq xmlns='jabber:client' type='error' id='{iq_id(reg)}'><error type='cancel'>"
        "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    assert stream.receive_frame(conflict) == [ev.Registered(already_existed=True), ev.AuthRequested("SCRAM-SHA-1")]


def test_iq_correlation_ping_and_requests() -> None:
    stream = XmppStream("localhost")
    negotiate(stream, sm=False)
    key = object()
    id_ = stream.send_iq("get", "<query xmlns='jabber:iq:roster'/>", None, key)
    assert stream.data_to_send() == [
        f"<iq xmlns='jabber:client' type='get' id='{id_}'><query xmlns='jabber:iq:roster'/></iq>"
    ]
    assert stream.send_iq("get") != id_
    result = stream.receive_frame(f"<iq xmlns='jabber:client' type='result' id='{id_}'/>")
    assert len(result) == 1 and result[0].key is key
    assert stream.receive_frame(f"<iq xmlns='jabber:client' type='result' id='{id_}'/>") == []  # not pending any more
    error_id = stream.send_iq("get", "<vCard xmlns='vcard-temp'/>", "room@muc.localhost/x", key)
    (error,) = stream.receive_frame(
        f"<iq xmlns='jabber:client' type='error' id='{error_id}' from='room@muc.localhost/x'><error type='cancel'>"
        "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Recipient not in room</text></error></iq>"
    )
    assert (error.condition, error.text, error.key) == ("item-not-found", "Recipient not in room", key)
    forgotten = stream.send_iq("get")
    stream.forget(forgotten)
    assert stream.receive_frame(f"<iq xmlns='jabber:client' type='result' id='{forgotten}'/>") == []
    stream.data_to_send()
    ping = "<iq xmlns='jabber:client' type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    assert stream.receive_frame(ping) == []
    assert stream.data_to_send() == ["<iq xmlns='jabber:client' type='result' id='p1' to='localhost'/>"]
    other = "<iq xmlns='jabber:client' type='set' id='j1' from='focus'><jingle xmlns='urn:xmpp:jingle:1'/></iq>"
    assert isinstance(stream.receive_frame(other)[0], ev.IqRequest)


def test_stream_error_and_redirects() -> None:
    stream = XmppStream("nohost.example")
    stream.start()
    stream.receive_frame(OPEN)
    error = (
        "<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"
        "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>other.example:5281</see-other-host>"
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>moved</text></stream:error>"
    )
    assert stream.receive_frame(error) == [ev.StreamError("see-other-host", "moved", "other.example:5281")]
    assert stream.data_to_send()[-1] == "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
    stream = XmppStream("localhost")
    stream.start()
    closed = stream.receive_frame(
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing' see-other-uri='wss://other.example/ws'/>"
    )
    assert closed == [ev.StreamClosed("wss://other.example/ws")]
    assert stream.state == State.CLOSED


def test_protocol_violations_raise() -> None:
    stream = XmppStream("localhost")
    stream.start()
    with pytest.raises(ProtocolError, match="before negotiation ended"):
        stream.receive_frame("<message xmlns='jabber:client'><body>x</body></message>")
    with pytest.raises(ProtocolError, match="cannot send stanzas"):
        stream.send("<presence xmlns='jabber:client'/>")
    with pytest.raises(ProtocolError, match="unexpected top-level element"):
        stream.receive_frame("<foo xmlns='bar'/>")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("<open xmlns=", "malformed XML"),
        ("<a/><b/>", "malformed XML"),
        ("<!DOCTYPE x [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]><x>&b;</x>", "DTDs and entity declarations"),
        ("<x><!-- comment --></x>", "comments"),
        ("<x><?pi data?></x>", "processing instructions"),
        ("<x>&undefined;</x>", "malformed XML"),
        ("<x>" + "a" * (1 << 20) + "</x>", "exceeds"),
    ],
)
def test_hostile_frames_are_refused(frame: str, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        parse_frame(frame)


def test_cdata_and_xml_declaration_are_accepted() -> None:
    assert parse_frame("<?xml version='1.0'?><x><![CDATA[a<b]]></x>").text == "a<b"


def test_a_browser_like_stream_sends_the_session_iq_asks_for_resumption_and_requests_acks() -> None:
    """As Converse.js (Strophe) does: the legacy session IQ after binding, SM with resume='true', and an
    ack request after every 5th stanza sent; the session IQ's answer ends nowhere."""
    stream = XmppStream("localhost", settings=StreamSettings(sm_resume=True, ack_every=5, legacy_session=True))
    _, bind = until_bind(stream)
    stream.receive_frame(bind_result(iq_id(bind)))
    session, enable = stream.data_to_send()
    assert "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>" in session
    assert enable == "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
    assert stream.receive_frame(f"<iq xmlns='jabber:client' type='result' id='{iq_id(session)}'/>") == []
    assert stream.receive_frame("<enabled xmlns='urn:xmpp:sm:3' id='x' resume='true'/>") == [
        ev.Ready("anon@localhost/r1", True)
    ]
    for n in range(11):
        stream.send(f"<presence xmlns='jabber:client' id='p{n}'/>")
    sent = stream.data_to_send()
    requests = [i for i, frame in enumerate(sent) if frame == "<r xmlns='urn:xmpp:sm:3'/>"]
    assert requests == [5, 11] and len(sent) == 13


def test_a_plain_stream_requests_no_acks() -> None:
    stream = XmppStream("localhost")
    negotiate(stream)
    for n in range(11):
        stream.send(f"<presence xmlns='jabber:client' id='p{n}'/>")
    assert len(stream.data_to_send()) == 11


def test_an_id_factory_names_every_stanza_by_its_purpose_and_the_default_stays_a_short_counter() -> None:
    """StreamSettings.ids: bind, session, each IQ (by the request's name) and presences get the factory's ids, and
    'from' is written where asked; without it ids are short, unique, and presences carry none."""
    asked: list[str] = []

    def ids(purpose: str) -> str:
        asked.append(purpose)
        return f"{purpose}-{len(asked)}"

    stream = XmppStream("localhost", settings=StreamSettings(legacy_session=True, ids=ids))
    negotiate_frames = negotiate_legacy(stream)
    assert [iq_id(f) for f in negotiate_frames] == ["bind-1", "session-2"]
    assert stream.send_iq("get", "<ping xmlns='urn:xmpp:ping'/>", "localhost", "k", "ping") == "ping-3"
    assert stream.send_iq("get", "<vCard xmlns='vcard-temp'/>", None, "k", frm="a@localhost/r") == "-4"
    assert stream.presence_id() == "presence-5"
    ping, vcard = stream.data_to_send()
    assert ping == "<iq xmlns='jabber:client' type='get' id='ping-3' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    assert vcard == "<iq xmlns='jabber:client' type='get' id='-4' from='a@localhost/r'><vCard xmlns='vcard-temp'/></iq>"
    assert asked == ["bind", "session", "ping", "", "presence"]

    plain = XmppStream("localhost")
    negotiate(plain, sm=False)
    first, second = plain.send_iq("get"), plain.send_iq("get", purpose="roster")
    assert first != second and len(first) == len(second) == 7 and first[:6] == second[:6]
    assert plain.presence_id() == ""
    assert "from=" not in "".join(plain.data_to_send())


def negotiate_legacy(stream: XmppStream) -> list[str]:
    """Drive a stream with the legacy session IQ to READY (no SM); returns the bind and session IQs sent."""
    _, bind = until_bind(stream, sm=False)
    stream.receive_frame(bind_result(iq_id(bind)))
    (session,) = stream.data_to_send()
    assert stream.state == State.READY
    return [bind, session]
