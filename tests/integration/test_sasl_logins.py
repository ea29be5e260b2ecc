"""SCRAM logins against the lab Prosody: the protocol core over the WebSocket transport shows which
mechanism it chose and used; the client logs in with each. ``reg.localhost`` offers SCRAM-SHA-1
alone (it keeps SHA-1 keys), ``scram.localhost`` SCRAM-SHA-1 and SCRAM-SHA-256."""

from __future__ import annotations

import re
import time

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from recorder import Recorder

from xmpp_user.accounts import register_accounts
from xmpp_user.client import XmppClient
from xmpp_user.core import events as ev
from xmpp_user.core.stream import Credentials, XmppStream
from xmpp_user.transport import WebSocketTransport

PASSWORD = "sésame"  # not ASCII: SASLprep and UTF-8 on both sides
ACCOUNT = "login-0"


@pytest.fixture(scope="module")
def accounts(lab) -> str:
    for domain in (lab.registered_domain, lab.scram_domain):
        assert register_accounts(lab.websocket_url, domain, pattern="login-{n}", count=1, password=PASSWORD) == 1
    return ACCOUNT


def negotiate(url: str, domain: str, credentials: Credentials, timeout: float = 10) -> list[ev.Event]:
    """Drive the core over a WebSocket until the session is ready or refused; returns its events."""
    stream = XmppStream(domain, credentials, stream_management=False)
    transport = WebSocketTransport.open(url, timeout)
    seen: list[ev.Event] = []
    deadline = time.monotonic() + timeout
    try:
        stream.start()
        for _ in range(50):
            for frame in stream.data_to_send():
                transport.send(frame)
            if any(isinstance(e, ev.Ready | ev.NegotiationFailed) for e in seen):
                return seen
            assert time.monotonic() < deadline, f"negotiation unfinished after {timeout} s: {seen}"
            frame = transport.recv()
            assert frame is not None, f"the server closed the WebSocket: {seen}"
            seen += stream.receive_frame(frame)
        raise AssertionError(f"negotiation unfinished after 50 frames: {seen}")
    finally:
        transport.close()


def auth_events(events: list[ev.Event]) -> list[ev.Event]:
    return [e for e in events if isinstance(e, ev.AuthRequested | ev.Authenticated | ev.NegotiationFailed)]


@pytest.mark.parametrize(
    ("where", "requested", "used"),
    [
        ("scram_domain", "SCRAM-SHA-1", "SCRAM-SHA-1"),
        ("scram_domain", "SCRAM-SHA-256", "SCRAM-SHA-256"),
        ("scram_domain", "SCRAM", "SCRAM-SHA-256"),
        ("registered_domain", "SCRAM", "SCRAM-SHA-1"),
    ],
)
def test_scram_login_uses_the_mechanism_asked_for(lab, accounts: str, where: str, requested: str, used: str) -> None:
    domain = getattr(lab, where)
    events = negotiate(lab.websocket_url, domain, Credentials(requested, accounts, PASSWORD))
    assert auth_events(events) == [ev.AuthRequested(used), ev.Authenticated(used)]
    assert isinstance(events[-1], ev.Ready) and events[-1].jid.startswith(f"{accounts}@{domain}/")


@pytest.mark.parametrize("requested", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_wrong_password(lab, accounts: str, requested: str) -> None:
    events = negotiate(lab.websocket_url, lab.scram_domain, Credentials(requested, accounts, "not it"))
    (requested_event, failed) = auth_events(events)
    assert requested_event == ev.AuthRequested(requested)
    assert (failed.step, failed.condition) == ("auth", "not-authorized")


def test_scram_sha_512_is_not_offered_by_prosody(lab, accounts: str) -> None:
    events = negotiate(lab.websocket_url, lab.scram_domain, Credentials("SCRAM-SHA-512", accounts, PASSWORD))
    (failed,) = auth_events(events)
    assert (failed.step, failed.condition) == ("auth", "unsupported-mechanism")
    # Prosody lists its mechanisms in no fixed order.
    match = re.fullmatch(r"SCRAM-SHA-512 is not offered by the server \(it offers (.*)\)", failed.text)
    assert match and sorted(match[1].split(", ")) == ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], failed.text


@pytest.mark.parametrize("requested", ["SCRAM", "SCRAM-SHA-256"])
def test_client_logs_in_with_scram(lab, accounts: str, requested: str) -> None:
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.scram_domain, Credentials(requested, accounts, PASSWORD),
                        request_event=rec)  # fmt: skip
    try:
        client.connect()
        client.ping()
    finally:
        client.close()
    assert rec.names == ["connect", "auth", "bind", "ping"]
    assert rec.failures == []
