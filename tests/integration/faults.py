"""Tiny servers that inject transport faults Prosody cannot be made to produce: an HTTP 500 on
the WebSocket upgrade, an upgrade never answered, a WebSocket peer (with or without the
``xmpp`` subprotocol) that answers the client's ``<open/>`` with a chosen frame (malformed,
hostile, oversized, binary, a close frame, a redirect to itself) or with nothing, and one that
announces a huge message and streams it for as long as the client reads. They stand in for a
broken network or proxy, never for an XMPP server: every XMPP behaviour is tested on Prosody.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FaultServer:
    """Accepts connections on 127.0.0.1 and runs ``handler(conn)`` for each, in a thread."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/xmpp-websocket"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def http_500(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\nerror")


def silent_http(conn: socket.socket) -> None:
    """Accepts the TCP connection, reads the upgrade request and never answers it."""
    read_request(conn)
    while conn.recv(65536):
        pass


def websocket_answering(frame: bytes | str | None, opcode: int = 0x1, protocol: bytes | None = b"xmpp"):
    """A handler that upgrades (agreeing on ``protocol``, or on none), reads the client's <open/>,
    then sends ``frame`` (or stays silent)."""

    def handler(conn: socket.socket) -> None:
        _upgrade(conn, protocol)
        conn.recv(65536)  # the client's <open/>
        if frame is not None:
            payload = frame.encode() if isinstance(frame, str) else frame
            conn.sendall(_frame_header(opcode, len(payload)) + payload)
        while conn.recv(65536):  # hold the connection until the client closes it
            pass

    return handler


def websocket_streaming(announced: int, fragment: int = 0, budget: int = 64 << 20, seconds: float = 10.0):
    """A handler that upgrades, reads the client's <open/>, then announces a text message of
    ``announced`` bytes, in one frame or (``fragment`` > 0) in frames of ``fragment`` bytes each
    (a text frame, then continuations), and sends its payload for as long as the client reads it:
    until ``budget`` bytes or ``seconds`` have gone, or the client closes."""
    chunk = b"a" * 65536

    def send_payload(conn: socket.socket, size: int, state: dict) -> bool:
        while size > 0:
            if state["sent"] >= budget or time.monotonic() > state["deadline"]:
                return False
            part = chunk if size >= len(chunk) else chunk[:size]
            conn.sendall(part)
            state["sent"] += len(part)
            size -= len(part)
        return True

    def handler(conn: socket.socket) -> None:
        _upgrade(conn)
        conn.recv(65536)  # the client's <open/>
        state = {"sent": 0, "deadline": time.monotonic() + seconds}
        if not fragment:
            conn.sendall(_frame_header(0x1, announced))
            send_payload(conn, announced, state)
            return
        opcode, left = 0x1, announced
        while left > 0:
            size = min(fragment, left)
            left -= size
            conn.sendall(_frame_header(opcode, size, fin=left == 0))
            if not send_payload(conn, size, state):
                return
            opcode = 0x0

    return handler


def _upgrade(conn: socket.socket, protocol: bytes | None = b"xmpp") -> None:
    """Read the client's upgrade request and accept it, agreeing on ``protocol`` (or on none)."""
    request = read_request(conn)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    agreed = b"Sec-WebSocket-Protocol: " + protocol + b"\r\n" if protocol is not None else b""
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + agreed + b"\r\n"
    )


def _frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class TcpProxy:
    """A TCP relay to ``target`` (the lab's HTTP port) that can fail like a network does: ``cut()``
    resets every relayed connection (RST to the client), ``freeze()`` silently drops all bytes from
    then on (a dead link), ``stall(s)`` holds every byte for ``s`` seconds then lets them all through
    (a server or link that hangs for a while), ``delay`` adds latency to each chunk. It relays bytes
    only; the XMPP session is the lab's."""

    def __init__(self, target: tuple[str, int], path: str = "/xmpp-websocket", delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self.frozen = False
        self.stalled_until = 0.0
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}{path}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                while time.monotonic() < self.stalled_until:
                    time.sleep(0.01)
                if not self.frozen:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Reset every relayed connection at once, as a failing router or NAT does."""
        with self._lock:
            pairs, self.pairs = self.pairs, []
        for client, upstream in pairs:
            for s in (client, upstream):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                s.close()

    def freeze(self) -> None:
        """From now on, relay nothing in either direction, and say nothing."""
        self.frozen = True

    def stall(self, seconds: float) -> None:
        """Relay nothing for ``seconds``, then everything held back, in order."""
        self.stalled_until = time.monotonic() + seconds

    def close(self) -> None:
        self.sock.close()
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
