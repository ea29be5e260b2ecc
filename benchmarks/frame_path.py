"""CPU of the frames' own path in the generator: transport and protocol core, no server, no Locust.

    python benchmarks/frame_path.py [--bursts 500] [--json FILE]

A socket pair stands for the server: its end writes bursts of what Prosody sends a stream-managed
occupant of a room (a groupchat message with its truth marker, then an ack request ``<r/>``, 20 of each
per burst); our end reads them through ``WebSocketTransport.recv``, feeds them to ``XmppStream`` and
writes back what the core queues (the ack ``<a/>``) with ``WebSocketTransport.send``. The figure is this
process's CPU per delivered message: read, parse, answer, write, and nothing else (no gevent hub wake-up
per frame, no Locust, no client dispatch, no server). It shows what a change to
``xmpp_user/session/transport.py`` or ``xmpp_user/core/`` does to each frame: run the trees to compare back to
back, since other work on the machine raises every figure alike (their ratio holds).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xmpp_user.core.framing import DEFAULT_MAX_FRAME  # noqa: E402
from xmpp_user.core.stream import State, XmppStream  # noqa: E402
from xmpp_user.session import transport  # noqa: E402

PER_BURST = 20
MESSAGE = (
    "<message xmlns='jabber:client' from='room3@muc.localhost/u31' to='a1b2@localhost/r1' type='groupchat' "
    "id='a1b2c3d4'><body>hello from u31</body><t xmlns='urn:locust-xmpp:truth' s='l.31' n='17' "
    "ts='1765000000000'/><stanza-id xmlns='urn:xmpp:sid:0' id='abcdefgh-1234' by='room3@muc.localhost'/></message>"
)
ACK_REQUEST = "<r xmlns='urn:xmpp:sm:3'/>"


def server_frame(text: str) -> bytes:
    """An unmasked text frame, as a server sends it."""
    payload = text.encode()
    length = len(payload)
    header = bytes((0x81, length)) if length < 126 else bytes((0x81, 126)) + length.to_bytes(2, "big")
    return header + payload


def connected_pair() -> tuple[transport.WebSocketTransport, socket.socket]:
    """Our transport on one end of a socket pair, past its handshake; the other end is the server's."""
    ours, theirs = socket.socketpair()
    return transport.WebSocketTransport(transport._BufferedSocket(ours), DEFAULT_MAX_FRAME), theirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=500, help=f"bursts of {PER_BURST} messages and acks requests")
    parser.add_argument("--json", help="write the measurement to this file")
    args = parser.parse_args()
    ours, theirs = connected_pair()
    stream = XmppStream("localhost")
    stream.state, stream.sm_enabled = State.READY, True
    burst = (server_frame(MESSAGE) + server_frame(ACK_REQUEST)) * PER_BURST
    acks = 0
    started = time.process_time()
    for _ in range(args.bursts):
        theirs.sendall(burst)
        for _ in range(2 * PER_BURST):
            stream.receive_frame(ours.recv() or "")
            for frame in stream.data_to_send():
                ours.send(frame)
                acks += 1
        theirs.setblocking(False)
        try:
            while theirs.recv(1 << 20):  # what we wrote, read as the server would
                pass
        except BlockingIOError:
            pass
        theirs.setblocking(True)
    cpu = time.process_time() - started
    messages = args.bursts * PER_BURST
    result = {"messages": messages, "acks_sent": acks, "cpu_s": round(cpu, 4),
              "us_per_delivered_message": round(cpu / messages * 1e6, 2)}  # fmt: skip
    print(f"{messages} messages and ack requests read, {acks} acks written: "
          f"{result['us_per_delivered_message']:.1f} us of CPU per delivered message")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if acks == messages else 1


if __name__ == "__main__":
    sys.exit(main())
