"""Every kind of bad input ends as a recorded failure with a readable one-line message, the
client raises XmppRequestFailed, and the process carries on (a new session works)."""

from __future__ import annotations

import socket
import uuid

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from faults import FaultServer, http_500, websocket_answering

from xmpp_user.client import XmppClient, XmppRequestFailed
from xmpp_user.core.stream import Credentials
from xmpp_user.lab.lab import free_port

BILLION_LAUGHS = (
    "<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>"
)


class Events:
    def __init__(self) -> None:
        self.records: list[tuple[str, str | None]] = []

    def fire(self, name: str, exception=None, **_kw) -> None:
        self.records.append((name, None if exception is None else str(exception)))

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(n, e) for n, e in self.records if e is not None]


def attempt(url: str, domain: str = "localhost", credentials: Credentials | None = None, timeout: float = 5):
    events = Events()
    client = XmppClient(url, domain, credentials, request_event=events, timeout=timeout, connect_timeout=timeout)
    with pytest.raises(XmppRequestFailed) as raised:
        client.connect()
    client.close()
    return events, str(raised.value)


def assert_still_works(lab) -> None:
    events = Events()
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


def test_http_500_on_upgrade(lab) -> None:
    with FaultServer(http_500) as server:
        events, message = attempt(server.url)
    assert message == f"HTTP 500 on WebSocket upgrade at {server.url}"
    assert events.failures == [("connect", message)]
    assert_still_works(lab)


def test_stream_error_for_an_unknown_domain(lab) -> None:
    events, message = attempt(lab.websocket_url, domain="unknown.example")
    assert message.startswith("stream error host-unknown")
    assert ("stream", message) in events.failures


def test_unsupported_auth_and_wrong_password(lab) -> None:
    events, message = attempt(lab.websocket_url, credentials=Credentials("PLAIN", "u", "p"))
    assert message == "auth: unsupported-mechanism (PLAIN is not offered by the server (it offers ANONYMOUS))"
    assert [n for n, _ in events.failures] == ["auth"]
    events, message = attempt(
        lab.websocket_url, lab.registered_domain, Credentials("SCRAM-SHA-1", f"nobody-{uuid.uuid4().hex[:6]}", "x")
    )
    assert message.startswith("auth: not-authorized")


@pytest.mark.parametrize(
    ("frame", "opcode", "expected"),
    [
        ("<open xmlns=", 0x1, "malformed XML frame"),
        (BILLION_LAUGHS, 0x1, "DTDs and entity declarations are forbidden in XMPP"),
        ("<x>" + "a" * (1 << 20) + "</x>", 0x1, "exceeds the 1048576 limit"),
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


def test_silent_server_times_out(lab) -> None:
    with FaultServer(websocket_answering(None)) as server:
        events, message = attempt(server.url, timeout=0.5)
    assert message == "negotiation did not finish within 0.5 s"
    assert [n for n, _ in events.records] == ["connect"]


def test_iq_error_and_lost_connection(lab) -> None:
    events = Events()
    client = XmppClient(lab.websocket_url, lab.domain, request_event=events)
    client.connect()
    with pytest.raises(XmppRequestFailed, match="item-not-found"):
        client.vcard(f"no-room-{uuid.uuid4().hex[:6]}@{lab.muc_domain}/nobody")
    assert events.failures[-1][0] == "vcard"
    # The network drops mid-session: a recorded stream failure, and the request in flight fails.
    pending = client.ping(wait=False)
    client._transport._ws.sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(XmppRequestFailed):
        client.wait(pending, timeout=5)
    assert any(n == "stream" and "connection lost" in e for n, e in events.failures)
    assert not client.connected
    client.connect()  # the same client reconnects
    client.ping()
    client.close()
