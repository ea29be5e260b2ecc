"""A session over wss:// (TLS): the transport reads a TLS socket without a greenlet of its own, where a readable
socket is not a whole record and OpenSSL may hold decrypted bytes the kernel no longer signals. Through a
TLS-terminating relay (a self-signed certificate made with openssl) to the lab's HTTP port."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import gevent
import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from gevent.server import StreamServer
from recorder import Recorder

from xmpp_user.features import vcard
from xmpp_user.session.client import XmppClient, XmppRequestFailed


def _relay(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        source.close()
        target.close()


@pytest.fixture
def wss_url(lab, tmp_path: Path) -> Iterator[str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
               "-days", "1", "-subj", "/CN=127.0.0.1"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def handle(client: socket.socket, _address: object) -> None:
        upstream = socket.create_connection(("127.0.0.1", lab.http_port))
        gevent.spawn(_relay, upstream, client)
        _relay(client, upstream)

    server = StreamServer(("127.0.0.1", 0), handle, ssl_context=context)
    server.start()
    try:
        yield f"wss://127.0.0.1:{server.server_port}/xmpp-websocket"
    finally:
        server.stop()


def test_a_session_over_tls(lab, wss_url: str) -> None:
    events = Recorder()
    client = XmppClient(wss_url, lab.domain, request_event=events, verify_tls=False)
    client.connect()
    client.wait_all([client.ping(wait=False) for _ in range(200)])  # replies in bursts of records
    photo = bytes(range(256)) * 240  # a 60 KiB avatar: the reply is one frame over 64 KiB, many records
    client.set_vcard(vcard.set_payload(nickname="tls", photo=photo))
    assert base64.b64decode(vcard.fields(client.vcard().element)["PHOTO"]) == photo
    room = f"tls@{lab.muc_domain}"
    client.muc_join(room, "tls")
    client.groupchat(room, "x" * 40000)
    client.close()
    assert events.failures == []
    assert [name for name, _ in events.records].count("ping") == 200
    assert client.last_error == ""


def test_an_unverified_certificate_is_one_line(lab, wss_url: str) -> None:
    events = Recorder()
    client = XmppClient(wss_url, lab.domain, request_event=events)
    with pytest.raises(XmppRequestFailed) as raised:
        client.connect()
    port = wss_url.split(":")[2].split("/")[0]
    assert str(raised.value) == f"TLS handshake with 127.0.0.1:{port} failed: CERTIFICATE_VERIFY_FAILED"
    assert events.records == [("connect", str(raised.value))]
