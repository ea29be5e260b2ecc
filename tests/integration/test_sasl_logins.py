"""SCRAM logins against the lab servers: the protocol core over the WebSocket transport shows which
mechanism it chose and used; the client logs in with each. Which SCRAM each account host offers is
the lab's to say (``lab.sasl_mechanisms``): Prosody's ``reg.localhost`` SCRAM-SHA-1 (it keeps SHA-1
keys) and ``scram.localhost`` SCRAM-SHA-1 and SCRAM-SHA-256; ejabberd's ``reg.localhost``
SCRAM-SHA-256."""

from __future__ import annotations

import re
import time

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from recorder import Recorder

from xmpp_user.core import events as ev
from xmpp_user.core.stream import Credentials, StreamSettings, XmppStream
from xmpp_user.scenario.accounts import register_accounts
from xmpp_user.session.client import XmppClient
from xmpp_user.session.transport import WebSocketTransport

PASSWORD = "sésame"  # not ASCII: SASLprep and UTF-8 on both sides
ACCOUNT = "login-0"
STRONGEST_FIRST = ("SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1")


def account_hosts(lab) -> dict[str, list[str]]:
    """The lab's account hosts, each with the SCRAM mechanisms it offers, strongest first."""
    return {
        host: [m for m in STRONGEST_FIRST if m in offered]
        for host, offered in lab.sasl_mechanisms.items()
        if host != lab.domain
    }


@pytest.fixture(scope="module")
def accounts(lab) -> str:
    for host in account_hosts(lab):
        assert register_accounts(lab.websocket_url, host, pattern="login-{n}", count=1, password=PASSWORD) == 1
    return ACCOUNT


def negotiate(url: str, domain: str, credentials: Credentials, timeout: float = 10) -> list[ev.Event]:
    """Drive the core over a WebSocket until the session is ready or refused; returns its events."""
    stream = XmppStream(domain, credentials, StreamSettings(stream_management=False))
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


def test_each_offered_scram_logs_in_and_scram_takes_the_strongest(lab, accounts: str) -> None:
    for host, offered in account_hosts(lab).items():
        assert offered, host
        for requested, used in [(m, m) for m in offered] + [("SCRAM", offered[0])]:
            events = negotiate(lab.websocket_url, host, Credentials(requested, accounts, PASSWORD))
            assert auth_events(events) == [ev.AuthRequested(used), ev.Authenticated(used)], (host, requested)
            assert isinstance(events[-1], ev.Ready) and events[-1].jid.startswith(f"{accounts}@{host}/")


def test_scram_wrong_password(lab, accounts: str) -> None:
    for host, offered in account_hosts(lab).items():
        for requested in offered:
            events = negotiate(lab.websocket_url, host, Credentials(requested, accounts, "not it"))
            (requested_event, failed) = auth_events(events)
            assert requested_event == ev.AuthRequested(requested)
            assert (failed.step, failed.condition) == ("auth", "not-authorized"), (host, requested)


def test_a_scram_not_offered_is_refused_in_one_line(lab, accounts: str) -> None:
    host = lab.registered_domain
    missing = next(m for m in STRONGEST_FIRST if m not in lab.sasl_mechanisms[host])
    events = negotiate(lab.websocket_url, host, Credentials(missing, accounts, PASSWORD))
    (failed,) = auth_events(events)
    assert (failed.step, failed.condition) == ("auth", "unsupported-mechanism")
    # Servers list their mechanisms in no fixed order.
    match = re.fullmatch(rf"{missing} is not offered by the server \(it offers (.*)\)", failed.text)
    assert match and sorted(match[1].split(", ")) == sorted(lab.sasl_mechanisms[host]), failed.text


def test_client_logs_in_with_the_strongest_scram(lab, accounts: str) -> None:
    rec = Recorder()
    client = XmppClient(lab.websocket_url, lab.registered_domain, Credentials("SCRAM", accounts, PASSWORD),
                        request_event=rec)  # fmt: skip
    try:
        client.connect()
        client.ping()
    finally:
        client.close()
    assert client.mechanism == account_hosts(lab)[lab.registered_domain][0]
    assert rec.names == ["connect", "auth", "bind", "ping"]
    assert rec.failures == []
