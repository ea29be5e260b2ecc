"""The transport holds its limits against a hostile WebSocket peer: a frame or fragmented message
larger than the limit is refused from its header, before its payload is read (the generator's
memory does not grow), and invalid UTF-8 in a text frame is a named protocol violation. Each
ends as one recorded failure with a one-line message, and the client can connect again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from faults import FaultServer, websocket_answering, websocket_streaming
from recorder import Recorder
from test_failures import assert_still_works, attempt

from xmpp_user.core.framing import DEFAULT_MAX_FRAME
from xmpp_user.session.client import XmppClient, XmppRequestFailed
from xmpp_user.session.transport import FrameTooLarge, TransportError, WebSocketTransport, _BufferedSocket

MIB = 1 << 20
HUGE = 400 * MIB
MEMORY_SLACK = 8 * MIB
"""Peak RSS growth allowed while a hostile message is refused: the limit plus buffers, not the message."""


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a list that receives the peak RSS growth in bytes of the block (VmHWM after a reset
    of the high-water mark through clear_refs; VmRSS after the block where that reset is refused)."""
    growth: list[int] = []
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        field = "VmHWM"
    except OSError:
        field = "VmRSS"
    yield growth
    growth.append((_status_kib(field) - before) * 1024)


def test_a_400_mb_frame_is_refused_from_its_header(lab) -> None:
    with FaultServer(websocket_streaming(HUGE)) as server, peak_rss_growth() as growth:
        events, message = attempt(server.url)
    assert message == f"frame of {HUGE} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit"
    assert events.records == [("connect", None), ("stream", message)]
    assert growth[0] < MEMORY_SLACK, f"RSS grew by {growth[0] / MIB:.1f} MiB"
    assert_still_works(lab)


def test_fragments_summing_past_the_limit_are_refused(lab) -> None:
    fragment = 512 * 1024  # each fragment is far below the limit; the third takes the message past it
    with FaultServer(websocket_streaming(HUGE, fragment=fragment)) as server, peak_rss_growth() as growth:
        events, message = attempt(server.url)
    assert message == f"fragmented message of {3 * fragment} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit"
    assert events.records == [("connect", None), ("stream", message)]
    assert growth[0] < MEMORY_SLACK, f"RSS grew by {growth[0] / MIB:.1f} MiB"
    assert_still_works(lab)


def test_the_limit_is_exact_and_set_per_transport() -> None:
    for size, refused in ((1000, False), (1001, True)):
        frame = "<x>" + "a" * (size - 7) + "</x>"
        with FaultServer(websocket_answering(frame)) as server:
            transport = WebSocketTransport.open(server.url, timeout=5, max_frame=1000)
            try:
                transport.send("<open/>")
                if refused:
                    with pytest.raises(FrameTooLarge, match="^frame of 1001 bytes exceeds the 1000-byte limit$"):
                        transport.recv()
                else:
                    assert transport.recv() == frame
            finally:
                transport.close()


def test_invalid_utf8_in_a_text_frame(lab) -> None:
    events = Recorder()
    client = XmppClient("ws://unused.invalid/", "localhost", request_event=events, timeout=2, connect_timeout=2)
    with FaultServer(websocket_answering(b"<message>\xff\xfe</message>")) as server:
        client.url = server.url
        with pytest.raises(XmppRequestFailed) as raised:
            client.connect()
    assert str(raised.value) == "invalid UTF-8 in a text frame"
    # A protocol violation by the peer, recorded as such (not as a lost connection).
    assert events.records == [("connect", None), ("stream", "invalid UTF-8 in a text frame")]
    # The same client object connects again, to a sound server.
    client.url, client.domain = lab.websocket_url, lab.domain
    client.connect()
    client.ping()
    client.close()
    assert events.failures == [("stream", "invalid UTF-8 in a text frame")]


def test_a_control_frame_longer_than_125_bytes_is_refused(lab) -> None:
    # RFC 6455 section 5.5: a ping of 400 MB would otherwise be read whole before being refused.
    with FaultServer(websocket_answering(b"p" * 200, opcode=0x9)) as server:
        events, message = attempt(server.url, timeout=2)
    assert message == "control frame of 200 bytes exceeds the 125-byte limit of RFC 6455"
    assert events.records == [("connect", None), ("stream", message)]
    assert_still_works(lab)


def test_a_websocket_protocol_error_is_a_protocol_violation(lab) -> None:
    rsv1_text = 0x40 | 0x1  # a text frame with RSV1 set, for an extension never negotiated
    with FaultServer(websocket_answering("<x/>", opcode=rsv1_text)) as server:
        events, message = attempt(server.url, timeout=2)
    assert message == "WebSocket protocol violation: rsv is not implemented, yet"
    assert events.records == [("connect", None), ("stream", message)]
    assert_still_works(lab)


def test_any_other_exception_from_websocket_client_is_a_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args) -> None:  # an exception websocket-client does not wrap, over two lines
        raise ValueError("bufsize must be an integer\nand more")

    with FaultServer(websocket_answering("<x/>")) as server:
        transport = WebSocketTransport.open(server.url, timeout=5)
        # The frame is a plain text frame, which the transport reads itself: make it websocket-client's.
        monkeypatch.setattr(_BufferedSocket, "take_text_frame", lambda _self, _size: None)
        monkeypatch.setattr(transport._frames, "recv_strict", broken)
        try:
            transport.send("<open/>")  # the server answers it with the frame
            expected = "^receive failed: ValueError: bufsize must be an integer and more$"
            with pytest.raises(TransportError, match=expected):
                transport.recv()
        finally:
            transport.close()
