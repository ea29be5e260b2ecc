"""The frames the transport writes itself are the frames websocket-client would have written: read back by
websocket-client's own frame reader, each is one final, masked text frame holding the text, at every length
encoding of RFC 6455 (7-bit, 16-bit, 64-bit)."""

from __future__ import annotations

import os

import pytest
import websocket

from xmpp_user.session.transport import mask, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70001])
def test_a_text_frame_reads_back_as_sent(size: int) -> None:
    text = ("é" + "x" * size)[:size] if size else ""
    data = text_frame(text)
    buffer = websocket.frame_buffer(_reader(data), skip_utf8_validation=False)
    frame = buffer.recv_frame()
    assert (frame.fin, frame.opcode, frame.mask_value) == (1, websocket.ABNF.OPCODE_TEXT, 1)
    assert frame.data == text.encode()


def test_the_mask_is_the_xor_of_the_repeated_key() -> None:
    key, payload = os.urandom(4), os.urandom(1003)
    assert mask(key, payload) == websocket.ABNF.mask(key, payload)
    assert mask(key, mask(key, payload)) == payload


def test_every_frame_has_its_own_key() -> None:
    keys = {text_frame("<r xmlns='urn:xmpp:sm:3'/>")[2:6] for _ in range(50)}
    assert len(keys) > 45  # 4 random bytes each: a repeat is a one-in-a-billion event


def _reader(data: bytes):
    position = 0

    def recv(size: int) -> bytes:
        nonlocal position
        chunk = data[position : position + size]
        position += len(chunk)
        return chunk

    return recv
