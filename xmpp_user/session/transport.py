"""WebSocket transport (RFC 7395, subprotocol ``xmpp``): websocket-client under gevent.

Only this module touches sockets. Errors come out as ``TransportError`` with one readable
line: refused connection, unknown host, timeout, TLS failure, HTTP status on upgrade. A peer
that breaks the WebSocket protocol or RFC 7395 (a frame over the size limit, invalid UTF-8,
a binary message) raises ``ProtocolViolation``, a ``TransportError`` too, after the transport
has closed the socket with the matching RFC 6455 close code.

The size limit holds before a payload is read: websocket-client reads a whole frame, then
joins and decodes it, before its caller sees a byte, so the frame header is checked inside
websocket-client's own frame reader (``_LimitedFrameBuffer``).

Sending is the hot path's other half: every stanza is one text frame, so ``send`` builds the frame
itself (``text_frame``) and writes it to the socket in one call, under websocket-client's send lock.
websocket-client's own path (a frame object, a byte array per mask, a selector per write) cost
three times as much CPU per frame (``benchmarks/generator_cost.py``).
"""

from __future__ import annotations

import errno
import functools
import os
import resource
import socket
import ssl
import struct
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

import websocket

from xmpp_user.core.framing import DEFAULT_MAX_FRAME

_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}
_ASK_XMPP = "Sec-WebSocket-Protocol: xmpp"
_CLOSE_SEND_TIMEOUT = 1.0
"""Seconds a close frame may wait for room in the send buffer: a peer that reads nothing must not hold us."""
_MAX_CONTROL_FRAME = 125
"""RFC 6455 section 5.5: the longest payload of a ping, pong or close frame."""


class TransportError(Exception):
    """The WebSocket could not be opened or broke."""


class ProtocolViolation(TransportError):
    """The peer broke the WebSocket protocol (RFC 6455) or RFC 7395; the socket is closed."""


class FrameTooLarge(ProtocolViolation):
    """A frame, or a message in fragments, longer than the limit: refused from its header, unread."""


def ssl_context(verify: bool = True) -> ssl.SSLContext:
    """One shared context per verification mode: building one per connection costs milliseconds."""
    context = _SSL_CONTEXTS.get(verify)
    if context is None:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS[verify] = context
    return context


def check_url(url: str) -> str:
    """Validate a WebSocket URL given by a user; returns it or raises ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"WebSocket URL without a host: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in WebSocket URL {url!r}: {exc}") from None
    return url


class WebSocketTransport:
    """One open WebSocket. ``recv`` blocks the calling greenlet only."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self._ws = ws
        self._sock = ws.sock._sock if isinstance(ws.sock, _BufferedSocket) else ws.sock
        """The socket itself, under the read-ahead buffer: frames are written to it directly."""

    @classmethod
    def open(
        cls,
        url: str,
        timeout: float = 10.0,
        verify_tls: bool = True,
        source_address: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> WebSocketTransport:
        """Connect and upgrade; ``max_frame`` is the longest message accepted, in bytes.

        In bytes of UTF-8, a message within the limit is within the core's limit in characters too.
        """
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
        ws = websocket.WebSocket(
            sslopt={"context": ssl_context(verify_tls)},
            enable_multithread=True,
            skip_utf8_validation=True,  # its validator is pure Python; recv decodes in C and names the error
        )
        ws.frame_buffer = _LimitedFrameBuffer(ws.frame_buffer.recv, max_frame)
        try:
            sock = _BufferedSocket(_open_socket(parts, where, source_address, timeout, verify_tls))
            # The subprotocol goes as a plain header: asked through ``subprotocols``, websocket-client
            # refuses an answer without it as an "Invalid WebSocket Header", which names nothing.
            ws.connect(url, socket=sock, header=[_ASK_XMPP], timeout=timeout, suppress_origin=True)
        except websocket.WebSocketBadStatusException as exc:
            raise TransportError(f"HTTP {exc.status_code} on WebSocket upgrade at {url}") from None
        except ConnectionRefusedError:
            raise TransportError(f"connection refused by {where}") from None
        except socket.gaierror:
            raise TransportError(f"cannot resolve host {parts.hostname!r}") from None
        except (TimeoutError, websocket.WebSocketTimeoutException):
            raise TransportError(f"connect to {where} timed out after {timeout:g} s") from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
        except OSError as exc:
            reason = _limit_reached(exc, where, source_address) or f"cannot open WebSocket {url}: {exc}"
            raise TransportError(reason) from None
        except websocket.WebSocketException as exc:
            raise TransportError(f"cannot open WebSocket {url}: {exc}") from None
        if (ws.getheaders() or {}).get("sec-websocket-protocol", "").strip().lower() != "xmpp":
            cls(ws).close()
            raise TransportError(f"{url} did not accept the 'xmpp' WebSocket subprotocol")
        ws.handshake_response = None  # its headers, read once above, took 1.4 KiB of every idle connection
        ws.settimeout(None)  # reply deadlines are kept per request by the client
        return cls(ws)

    def send(self, frame: str) -> None:
        ws = self._ws
        if ws.sock is None:
            raise TransportError("send failed: socket is already closed.")
        data = text_frame(frame)
        sock = self._sock
        try:
            with ws.lock:  # a write that blocks halfway must not let another greenlet's frame in
                # send, not gevent's sendall: that asks the kernel for the send buffer's size at every call.
                sent = sock.send(data)
                while sent < len(data):  # the send buffer was full: the rest waits for room
                    sent += sock.send(memoryview(data)[sent:])
        except OSError as exc:
            raise TransportError(f"send failed: {exc or type(exc).__name__}") from None

    def recv(self) -> str | None:
        """The next text message, or None once the WebSocket is closed.

        Raises ``TransportError`` (``ProtocolViolation`` when the peer is at fault), never anything else.
        """
        ws = self._ws
        try:
            with ws.readlock:
                data = self._buffered_text()
                opcode = websocket.ABNF.OPCODE_TEXT
                if data is None:
                    opcode, data = ws.recv_data()
        except websocket.WebSocketConnectionClosedException:
            return None
        except ProtocolViolation as exc:  # from _LimitedFrameBuffer
            too_large = isinstance(exc, FrameTooLarge)
            self.close(websocket.STATUS_MESSAGE_TOO_BIG if too_large else websocket.STATUS_PROTOCOL_ERROR)
            raise
        except (websocket.WebSocketProtocolException, websocket.WebSocketPayloadException) as exc:
            self.close(websocket.STATUS_PROTOCOL_ERROR)
            raise ProtocolViolation(f"WebSocket protocol violation: {_one_line(exc)}") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"receive failed: {_one_line(exc)}") from None
        except Exception as exc:  # a defect of websocket-client, or a state it did not expect
            self.close(websocket.STATUS_UNEXPECTED_CONDITION)
            raise TransportError(f"receive failed: {type(exc).__name__}: {_one_line(exc)}") from None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            try:
                return data.decode()
            except UnicodeDecodeError:
                self.close(websocket.STATUS_INVALID_PAYLOAD)
                raise ProtocolViolation("invalid UTF-8 in a text frame") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return None
        self.close(websocket.STATUS_UNSUPPORTED_DATA_TYPE)
        raise ProtocolViolation("binary WebSocket message: RFC 7395 allows text messages only")

    def _buffered_text(self) -> bytes | None:
        """The next message if it is a whole text frame in one piece within the size limit: read from the
        read-ahead buffer (the socket read once if the buffer is empty), without websocket-client. None when
        anything else comes next (a control frame, fragments, a frame not read whole yet, a frame over the
        limit, the socket's end): websocket-client's reader then takes it from the same buffer, with its
        checks. Between two messages websocket-client's reader holds nothing: it reads a message whole."""
        sock = self._ws.sock
        if not isinstance(sock, _BufferedSocket):
            return None
        if sock.empty() and not sock.fill():
            return None
        return sock.take_text_frame(self._ws.frame_buffer.max_size)

    def close(self, status: int = websocket.STATUS_NORMAL) -> None:
        """Send a WebSocket close frame and close the socket without waiting for the answer.

        websocket-client's own ``close()`` reads the peer's close frame under the read lock,
        which the reader greenlet holds while it waits: against a silent peer they deadlock.
        Closing the socket instead wakes the reader with an error, which ends it. Closing twice
        does nothing more.
        """
        ws = self._ws
        try:
            if ws.sock is not None:
                ws.sock.settimeout(_CLOSE_SEND_TIMEOUT)
            ws.send_close(status)
        except (OSError, websocket.WebSocketException):
            pass
        ws.shutdown()


def text_frame(text: str) -> bytes:
    """``text`` as one masked text frame, as a client sends it (RFC 6455 section 5.2): FIN and the text
    opcode, the length, a mask key fresh from the system's random source (section 5.3), the masked payload."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 0xFE, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0xFF, length)
    key = os.urandom(4)
    return header + key + mask(key, payload)


def mask(key: bytes, payload: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated: both as one big integer, which is done in C."""
    length = len(payload)
    keys = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(length, "big")


class _LimitedFrameBuffer(websocket.frame_buffer):
    """websocket-client's frame reader, refusing a frame from its header, before reading its
    payload, when the payload would take the message past ``max_size`` bytes (the running total
    of a message in fragments counts), or a control frame past RFC 6455's 125 bytes."""

    def __init__(self, recv_fn: Callable[[int], bytes], max_size: int) -> None:
        super().__init__(recv_fn, skip_utf8_validation=True)
        self.max_size = max_size
        self._message_size = 0

    def recv_length(self) -> None:
        super().recv_length()
        _fin, _rsv1, _rsv2, _rsv3, opcode, _mask, _bits = self.header
        length = self.length
        if opcode >= websocket.ABNF.OPCODE_CLOSE:  # control frames: close, ping, pong
            if length > _MAX_CONTROL_FRAME:
                raise ProtocolViolation(
                    f"control frame of {length} bytes exceeds the {_MAX_CONTROL_FRAME}-byte limit of RFC 6455"
                )
        elif opcode == websocket.ABNF.OPCODE_CONT:
            self._message_size += length
            if self._message_size > self.max_size:
                raise FrameTooLarge(
                    f"fragmented message of {self._message_size} bytes exceeds the {self.max_size}-byte limit"
                )
        else:
            self._message_size = length
            if length > self.max_size:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the {self.max_size}-byte limit")


def _one_line(exc: BaseException, size: int = 200) -> str:
    """An exception's message on one line, cut to ``size`` characters (some quote whole payloads)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= size else text[: size - 3] + "..."


def _open_socket(parts: SplitResult, where: str, source: str | None, timeout: float,
                 verify_tls: bool) -> socket.socket:  # fmt: skip
    """TCP (and TLS for wss) to the server, from ``source`` if given: one IP per worker host
    multiplies the ephemeral port range."""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    family, address = _resolve(parts.hostname or "", port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            _bind(sock, where, source)
        sock.connect(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    if parts.scheme == "wss":
        sock = ssl_context(verify_tls).wrap_socket(sock, server_hostname=parts.hostname)
    return sock


def _bind(sock: socket.socket, where: str, source: str) -> None:
    """Take a port on ``source`` before connecting. The kernel picks it here, for no destination in
    particular, so its errors differ from connect's: EADDRINUSE when the range is used up,
    EADDRNOTAVAIL when ``source`` is not an address of this host."""
    try:
        sock.bind((source, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise TransportError(_no_port_left(where, source)) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            reason = f"cannot connect from {source}: not an address of this host (--xmpp-source-ips)"
            raise TransportError(reason) from None
        raise


def _no_port_left(where: str, source: str | None) -> str:
    low, high = local_port_range()
    return (f"no local port left to connect to {where} from {source or 'this host'}: its {high - low + 1} "
            "ephemeral ports are in use (add source addresses with --xmpp-source-ips, or workers)")  # fmt: skip


def _limit_reached(exc: OSError, where: str, source: str | None) -> str:
    """The one-line reason when a connection fails on a limit of this machine, not of the server."""
    if exc.errno == errno.EADDRNOTAVAIL:  # connect() found no free port for this destination
        return _no_port_left(where, source)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return f"no file descriptor left in this process (open-file limit {soft}): run more worker processes"
    return ""


def local_port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The ephemeral port range connections are made from (Linux), e.g. (32768, 60999)."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


@functools.lru_cache(maxsize=64)
def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """The server's first address, resolved once per process.

    Under gevent each lookup goes through a thread pool; thousands of users connecting to
    the same host need it once.
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, address


class _BufferedSocket:
    """A socket whose ``recv`` reads ahead.

    websocket-client reads the handshake response one byte per ``recv`` and each frame in
    two or three exact-size reads; under gevent each read is a syscall plus a hub switch.
    Reading ahead into a buffer makes that one read per burst of frames, and lets the transport take
    the common frame (whole, final, unmasked text) straight out of it (``take_text_frame``).
    """

    __slots__ = ("_sock", "_buffer", "_start")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._start = 0
        """Where the unread bytes of ``_buffer`` begin."""

    def recv(self, size: int) -> bytes:
        if self.empty():
            data = self._sock.recv(65536)
            if len(data) <= size:
                return data
            self._buffer, self._start = data, 0
        start, buffer = self._start, self._buffer
        self._start = start + size
        if self._start >= len(buffer):
            self._buffer, self._start = b"", 0  # an idle connection keeps no burst read long ago
        return buffer[start : start + size]

    def empty(self) -> bool:
        return self._start >= len(self._buffer)

    def fill(self) -> bool:
        """Read into the empty buffer what the socket has, waiting for it; False at the socket's end."""
        self._buffer, self._start = self._sock.recv(65536), 0
        return bool(self._buffer)

    def take_text_frame(self, max_size: int) -> bytes | None:
        """The payload of the next frame if it is a final, unmasked text frame without extension bits, of
        at most ``max_size`` bytes (and less than 64 KiB), wholly in the buffer; otherwise None, and nothing
        is consumed."""
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < 2 or buffer[start] != 0x81:  # FIN, no RSV bits, text
            return None
        length = buffer[start + 1]  # the mask bit is the top one: a masked frame falls through
        header = 2
        if length == 126:
            if available < 4:
                return None
            length, header = int.from_bytes(buffer[start + 2 : start + 4], "big"), 4
        elif length > 126:
            return None
        end = start + header + length
        if length > max_size or end > len(buffer):
            return None
        self._start = end
        if end == len(buffer):
            self._buffer, self._start = b"", 0
        return buffer[start + header : end]

    def __getattr__(self, name: str):
        return getattr(self._sock, name)
