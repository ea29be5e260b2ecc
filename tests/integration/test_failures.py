"""Every kind of bad input ends as a recorded failure with a readable one-line message, the
client raises XmppRequestFailed, and the process carries on (a new session works)."""

from __future__ import annotations

import re
import socket
import struct
import time
import uuid

import gevent
import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from faults import FaultServer, TcpProxy, http_500, silent_http, websocket_answering
from recorder import Recorder

from xmpp_user.core.stream import Credentials
from xmpp_user.lab.lab import free_port
from xmpp_user.session import requests
from xmpp_user.session.client import XmppClient, XmppRequestFailed

BILLION_LAUGHS = (
    "<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>"
)


def attempt(url: str, domain: str = "localhost", credentials: Credentials | None = None, timeout: float = 5):
    events = Recorder()
    client = XmppClient(url, domain, credentials, request_event=events, timeout=timeout, connect_timeout=timeout)
    with pytest.raises(XmppRequestFailed) as raised:
        client.connect()
    client.close()
    return events, str(raised.value)


def assert_still_works(lab) -> None:
    events = Recorder()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=events)
    client.connect()
    client.ping()
    client.close()
    assert events.failures == []


def test_server_down(lab) -> None:
    port = free_port()
    events, message = attempt(f"ws://127.0.0.1:{port}/xmpp-websocket")
    assert message == f"connection refused by 127.0.0.1:{port}"
    assert events.failures == [("connect", message)]
    assert_still_works(lab)


def test_wrong_path_and_unknown_host(lab) -> None:
    events, message = attempt(lab.websocket_url.replace("/xmpp-websocket", "/nope"))
    assert message.startswith("HTTP 404 on WebSocket upgrade")
    assert events.failures == [("connect", message)]
    events, message = attempt("ws://no-such-host.invalid/xmpp-websocket")
    assert message == "cannot resolve host 'no-such-host.invalid'"
    assert events.failures == [("connect", message)]
    assert_still_works(lab)


def test_a_source_address_not_of_this_host_is_named(lab) -> None:
    events = Recorder()
    # 192.0.2.1 (TEST-NET-1) is no address of ours: bind refuses it, nothing is sent.
    client = XmppClient(lab.websocket_url, lab.domain, request_event=events, source_address="192.0.2.1")
    with pytest.raises(XmppRequestFailed) as raised:
        client.connect()
    client.close()
    assert str(raised.value) == "cannot connect from 192.0.2.1: not an address of this host (--xmpp-source-ips)"
    assert events.failures == [("connect", str(raised.value))]
    assert_still_works(lab)


def test_http_500_on_upgrade(lab) -> None:
    with FaultServer(http_500) as server:
        events, message = attempt(server.url)
    assert message == f"HTTP 500 on WebSocket upgrade at {server.url}"
    assert events.failures == [("connect", message)]
    assert_still_works(lab)


def test_stream_error_for_an_unknown_domain(lab) -> None:
    events, message = attempt(lab.websocket_url, domain="unknown.example")
    assert message.startswith("stream error host-unknown")  # Prosody adds "(This server does not serve ...)"
    assert events.records == [("connect", None), ("stream", message)]
    assert_still_works(lab)


def test_unsupported_auth_and_wrong_password(lab) -> None:
    events, message = attempt(lab.websocket_url, credentials=Credentials("SCRAM-SHA-512", "u", "p"))
    pattern = r"auth: unsupported-mechanism \(SCRAM-SHA-512 is not offered by the server \(it offers (.*)\)\)"
    found = re.fullmatch(pattern, message)
    assert found and set(found[1].split(", ")) == set(lab.sasl_mechanisms[lab.domain]), message
    assert [n for n, _ in events.failures] == ["auth"]
    events, message = attempt(
        lab.websocket_url, lab.registered_domain, Credentials("SCRAM", f"nobody-{uuid.uuid4().hex[:6]}", "x")
    )
    assert message.startswith("auth: not-authorized")
    assert [n for n, _ in events.failures] == ["auth"]
    assert_still_works(lab)


@pytest.mark.parametrize(
    ("frame", "opcode", "expected"),
    [
        ("<open xmlns=", 0x1, "malformed XML frame"),
        (BILLION_LAUGHS, 0x1, "DTDs and entity declarations are forbidden in XMPP"),
        ("<x>" + "a" * (1 << 20) + "</x>", 0x1, "frame of 1048583 bytes exceeds the 1048576-byte limit"),
        (b"\x00\x01binary", 0x2, "binary WebSocket message: RFC 7395 allows text messages only"),
    ],
    ids=["malformed", "billion-laughs", "oversized", "binary"],
)
def test_malformed_and_hostile_frames(lab, frame, opcode: int, expected: str) -> None:
    with FaultServer(websocket_answering(frame, opcode)) as server:
        events, message = attempt(server.url)
    assert expected in message
    stream_failures = [e for n, e in events.failures if n == "stream"]
    assert len(stream_failures) == 1 and expected in stream_failures[0]
    assert "\n" not in stream_failures[0]
    assert_still_works(lab)


def test_silent_server_times_out_and_says_so(lab) -> None:
    with FaultServer(websocket_answering(None)) as server:
        events, message = attempt(server.url, timeout=0.5)
    assert message == "negotiation did not finish within 0.5 s"
    # The WebSocket opened; the stream never did: that is a recorded failure, not a silent reconnect.
    assert events.records == [("connect", None), ("stream", message)]
    assert_still_works(lab)


def test_upgrade_never_answered_times_out(lab) -> None:
    with FaultServer(silent_http) as server:
        events, message = attempt(server.url, timeout=0.5)
    assert message == f"connect to 127.0.0.1:{server.port} timed out after 0.5 s"
    assert events.records == [("connect", message)]
    assert_still_works(lab)


def test_server_closing_the_websocket_after_open(lab) -> None:
    close_frame = struct.pack("!H", 1000)  # normal closure, sent right after the client's <open/>
    with FaultServer(websocket_answering(close_frame, opcode=0x8)) as server:
        events, message = attempt(server.url)
    assert message == "connection lost: the server closed the WebSocket"
    assert events.records == [("connect", None), ("stream", message)]
    assert_still_works(lab)


@pytest.mark.parametrize("protocol", [None, b"mqtt"], ids=["no-subprotocol", "other-subprotocol"])
def test_websocket_without_the_xmpp_subprotocol(lab, protocol: bytes | None) -> None:
    with FaultServer(websocket_answering(None, protocol=protocol)) as server:
        events, message = attempt(server.url)
    assert message == f"{server.url} did not accept the 'xmpp' WebSocket subprotocol"
    assert events.records == [("connect", message)]
    assert_still_works(lab)


def test_missing_xmpp_subprotocol_is_named(lab) -> None:
    with FaultServer(websocket_answering(None, protocol=None)) as server:
        _, message = attempt(server.url)
    assert message == f"{server.url} did not accept the 'xmpp' WebSocket subprotocol"


def test_redirect_loop_ends_as_a_recorded_failure(lab) -> None:
    with FaultServer(websocket_answering(None)) as server:
        # RFC 7395 section 3.6.1: <close see-other-uri/> before the session starts; here, to itself.
        server.handler = websocket_answering(
            f"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing' see-other-uri='{server.url}'/>"
        )
        events, message = attempt(server.url)
    assert message == "more than 3 redirects"
    assert events.records == [("connect", None)] * 4 + [("stream", message)]
    assert_still_works(lab)


def test_iq_error_and_lost_connection(lab) -> None:
    with TcpProxy(("127.0.0.1", lab.http_port)) as proxy:
        events = Recorder()
        client = XmppClient(proxy.url, lab.domain, request_event=events)
        client.connect()
        with pytest.raises(XmppRequestFailed, match="item-not-found"):
            client.vcard(f"no-room-{uuid.uuid4().hex[:6]}@{lab.muc_domain}/nobody")
        assert events.failures[-1][0] == "vcard"
        # The network drops mid-session: a recorded stream failure, and the request in flight fails. (The link
        # is frozen first: a reply already on its way could otherwise be read before the socket's end.)
        proxy.freeze()
        pending = client.ping(wait=False)
        client.connection._transport._sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(XmppRequestFailed, match="^ping: connection lost: "):
            client.wait(pending, timeout=5)
        # Whichever saw the socket's end first, the reading or a frame on its way out, names it.
        ((_, reason), *_) = events.failures[1:]
        assert reason in ("connection lost: the server closed the WebSocket",
                          "connection lost: send failed: [Errno 32] Broken pipe")  # fmt: skip
        assert events.failures[1:] == [("stream", reason), ("ping", reason)]
        assert not client.connected
    client.url = lab.websocket_url
    client.connect()  # the same client reconnects
    client.ping()
    client.close()


def test_network_reset_mid_session(lab) -> None:
    with TcpProxy(("127.0.0.1", lab.http_port)) as proxy:
        events = Recorder()
        client = XmppClient(proxy.url, lab.domain, request_event=events)
        client.connect()
        room = f"reset-{uuid.uuid4().hex[:8]}@{lab.muc_domain}"
        client.muc_join(room, "victim")
        deadline = time.monotonic() + 5
        while ("muc_configure", None) not in events.records and time.monotonic() < deadline:
            gevent.sleep(0.01)  # the room is new: let the client's configuration of it finish first
        in_flight = [client.ping(wait=False), client.groupchat(room, "in flight", wait=False)]
        proxy.cut()
        for pending in in_flight:
            with pytest.raises(XmppRequestFailed, match=r"Connection reset by peer$"):
                client.wait(pending, timeout=5)
        # Whichever saw the reset first, the reader or an acknowledgement on its way out, names it.
        ((_, reason), *_) = events.failures
        assert reason in {f"connection lost: {way} failed: [Errno 104] Connection reset by peer"
                          for way in ("receive", "send")}  # fmt: skip
        assert events.failures == [("stream", reason), ("ping", reason), ("message", reason)]
        assert not client.connected
        with pytest.raises(XmppRequestFailed, match=r"^not connected \(connection lost: (receive|send) failed"):
            client.ping()
        # The same client object reconnects through the same (working again) path.
        client.connect()
        client.ping()
        client.close()
    assert_still_works(lab)


def test_dead_link_mid_session(lab) -> None:
    with TcpProxy(("127.0.0.1", lab.http_port)) as proxy:
        events = Recorder()
        client = XmppClient(proxy.url, lab.domain, request_event=events, timeout=0.5)
        client.connect()
        proxy.freeze()
        with pytest.raises(XmppRequestFailed, match=r"^ping: no reply within 0\.5 s$"):
            client.ping()
        started = time.monotonic()
        client.close(timeout=1)
        assert time.monotonic() - started < 3
    assert events.failures == [("ping", "no reply within 0.5 s")]
    assert_still_works(lab)


def test_a_negotiation_that_finishes_late_is_a_late_reply(lab) -> None:
    """A server too slow to answer the stream's opening within the timeout: the negotiation is a recorded failure
    (no step of it was asked yet), and when it finishes within the patience that is a late reply, as for any
    request answered late (the run says ``late_replies``); it once was a failure the server never answered."""
    late = []
    with TcpProxy(("127.0.0.1", lab.http_port), delay=0.6) as proxy:  # every chunk each way 0.6 s late
        events = Recorder()
        client = XmppClient(proxy.url, lab.domain, request_event=events, timeout=1, patience=20)
        requests.on_late_reply.append(lambda: late.append(1))
        try:
            client.connect()
        finally:
            requests.on_late_reply.pop()
        assert client.connected
        client.close()
    assert events.failures == [("stream", "negotiation did not finish within 1 s")]
    assert late == [1]
