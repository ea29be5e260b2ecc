"""WebSocket transport (RFC 7395, subprotocol ``xmpp``) under gevent, without a greenlet of its own.

Only this module touches sockets. Errors come out as ``TransportError`` with one readable
line: refused connection, unknown host, timeout, TLS failure, HTTP status on upgrade. A peer
that breaks the WebSocket protocol or RFC 7395 (a frame over the size limit, invalid UTF-8,
a binary message) raises ``ProtocolViolation``, a ``TransportError`` too, after the transport
has closed the socket with the matching RFC 6455 close code.

websocket-client opens the WebSocket (the HTTP upgrade); from then on the socket is non-blocking and
the transport frames it. Reading is driven from outside: ``receive`` takes what the socket has now and
``next_message`` hands out each message once it is whole in the read-ahead buffer, so a gevent io
watcher's callback can read a connection with no greenlet waiting on it (``xmpp_user.session.connection``).
The common frame (final, unmasked text, under 64 KiB) is taken from the buffer directly; any other frame
goes through websocket-client's frame reader and its checks once it is whole.

The size limit holds before a payload is read: a frame's header is checked as soon as it is in
(``_LimitedFrameBuffer.check``), so a frame over the limit is refused before its payload is buffered.

Sending is the hot path's other half: every stanza is one text frame, so ``send`` builds the frame
itself (``text_frame``) and writes it to the socket in one call; what the socket does not take at once
waits in order and leaves when there is room, so a send from the event loop never waits.
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
from gevent import get_hub, getcurrent
from gevent.event import Event
from gevent.socket import wait_read

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
    """One open WebSocket, read and written without ever waiting in the event loop.

    Reading: ``receive`` takes what the socket has now (never waiting; the connection calls it from a gevent io
    watcher's callback, in the hub, when the socket is readable), then ``next_message`` hands out the messages
    buffered whole, one at a time. ``recv`` is the same, waiting for the socket in the calling greenlet.

    Writing: ``send`` writes a frame at once if the socket takes it; what it does not take waits in ``_out``, in
    order, and leaves when the socket has room (a write watcher). Called from the hub (acks, answers, pongs), a
    send never waits; called from any other greenlet it waits until ``_out`` has left, as a blocking write would:
    a user that sends faster than the server reads is held back.
    """

    __slots__ = ("_sock", "_buffer", "_frames", "_cont", "_out", "_reading", "_writing", "_drained", "_error",
                 "_eof", "_on_readable", "_tls")  # fmt: skip

    def __init__(self, sock: _BufferedSocket, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = sock
        self._sock = sock._sock
        """The socket itself, under the read-ahead buffer, in non-blocking mode (timeout 0)."""
        self._sock.settimeout(0.0)
        self._tls = hasattr(self._sock, "pending")
        self._frames = _LimitedFrameBuffer(sock.recv, max_frame)
        """websocket-client's frame reader, for what the fast path does not take (``next_message``)."""
        self._cont: websocket.continuous_frame | None = None
        """A message in fragments being put together (made at the first fragment)."""
        self._out = b""
        """Bytes written but not taken by the socket yet: they leave first, in order."""
        self._reading = self._writing = None
        self._drained: Event | None = None
        self._error: TransportError | None = None
        """A failure of the socket found while messages read before it were still unread: raised after them."""
        self._eof = False
        self._on_readable: Callable[[], None] | None = None

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
        # websocket-client does the opening handshake (HTTP upgrade) only; the transport frames itself.
        ws = websocket.WebSocket(sslopt={"context": ssl_context(verify_tls)}, skip_utf8_validation=True)
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
        transport = cls(sock, max_frame)
        if (ws.getheaders() or {}).get("sec-websocket-protocol", "").strip().lower() != "xmpp":
            transport.close()
            raise TransportError(f"{url} did not accept the 'xmpp' WebSocket subprotocol")
        return transport

    # -- reading ------------------------------------------------------------------------------

    def watch(self, callback: Callable[..., None], *args: object) -> None:
        """Call ``callback(*args)`` from the hub each time the socket is readable (or has failed), until
        ``close``: it should ``receive`` and take every ``next_message``."""
        if self._reading is None:
            self._reading = get_hub().loop.io(self._sock.fileno(), 1)
        self._on_readable = functools.partial(callback, *args)
        self._reading.start(self._on_readable)

    def receive(self) -> None:
        """Read what the socket has now into the buffer, without waiting. A failure (or the socket's end) is
        raised by ``next_message`` once the messages read before it are taken."""
        sock, buffer = self._sock, self._buffer
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    self._eof = True
                    break
                buffer.append(data)
                if len(data) < 65536 and not self._tls:
                    break  # the kernel has no more now (TLS: read until it says so, records may be buffered)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as exc:
            self._error = TransportError(f"receive failed: {_one_line(exc)}")
        except Exception as exc:  # noqa: BLE001 - a closed socket's own error types
            self._error = TransportError(f"receive failed: {type(exc).__name__}: {_one_line(exc)}")

    def next_message(self) -> str | None:
        """The next text message read whole, or None if none is whole in the buffer yet.

        Raises ``TransportError`` (``ProtocolViolation`` when the peer is at fault, after closing the socket with
        the matching RFC 6455 code) once the messages before the fault are taken, and ``Closed`` (a
        ``TransportError`` too) at the socket's end or the peer's close frame.
        """
        buffer = self._buffer
        while True:
            data = buffer.take_text_frame(self._frames.max_size)
            if data is not None:
                opcode = websocket.ABNF.OPCODE_TEXT
            else:
                whole = buffer.frame_whole()
                if whole is None:  # not even the header yet
                    return self._nothing_whole()
                if not whole:  # its header only: a frame the limit refuses is refused now, unread
                    self._refuse_early()
                    return self._nothing_whole()
                message = self._websocket_client_frame()
                if message is None:
                    continue  # a control frame, or a fragment of a message not whole yet
                opcode, data = message
            if opcode == websocket.ABNF.OPCODE_TEXT:
                try:
                    return data.decode()
                except UnicodeDecodeError:
                    self.close(websocket.STATUS_INVALID_PAYLOAD)
                    raise ProtocolViolation("invalid UTF-8 in a text frame") from None
            self.close(websocket.STATUS_UNSUPPORTED_DATA_TYPE)
            raise ProtocolViolation("binary WebSocket message: RFC 7395 allows text messages only")

    def recv(self) -> str | None:
        """The next text message, waiting for it in the calling greenlet; None once the WebSocket is closed.

        Raises ``TransportError`` (``ProtocolViolation`` when the peer is at fault), never anything else.
        """
        while True:
            try:
                message = self.next_message()
            except Closed:
                return None
            if message is not None:
                return message
            try:
                wait_read(self._sock.fileno())
            except OSError as exc:  # the socket was closed under us
                raise TransportError(f"receive failed: {_one_line(exc)}") from None
            self.receive()

    def _nothing_whole(self) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            raise Closed("the server closed the WebSocket")
        return None

    def _refuse_early(self) -> None:
        """The frame at the buffer's head has its header in but not its payload: refused now if over a limit."""
        try:
            self._frames.check(*self._buffer.frame_header())
        except ProtocolViolation as exc:
            self.close(websocket.STATUS_MESSAGE_TOO_BIG if isinstance(exc, FrameTooLarge) else
                       websocket.STATUS_PROTOCOL_ERROR)  # fmt: skip
            raise

    def _websocket_client_frame(self) -> tuple[int, bytes] | None:
        """The frame at the buffer's head, whole, through websocket-client's reader and its checks: a message's
        opcode and data when it ends one; None for a control frame (a ping is answered) or a fragment."""
        try:
            frame = self._frames.recv_frame()
            opcode = frame.opcode
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT):
                if frame.fin and self._cont is None and opcode != websocket.ABNF.OPCODE_CONT:
                    return opcode, frame.data
                if self._cont is None:
                    self._cont = websocket.continuous_frame(False, True)
                self._cont.validate(frame)
                self._cont.add(frame)
                if not frame.fin:
                    return None
                opcode, frame = self._cont.extract(frame)
                self._cont = None
                return opcode, frame.data
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self._eof = True
                raise Closed("the server closed the WebSocket")
            if opcode == websocket.ABNF.OPCODE_PING:
                self._write(_control_frame(websocket.ABNF.OPCODE_PONG, frame.data), wait=False)
            return None
        except TransportError:
            raise
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

    # -- writing ------------------------------------------------------------------------------

    def send(self, frame: str) -> None:
        self._write(text_frame(frame))

    def send_all(self, frames: list[str]) -> None:
        """Several frames in one write: one system call for the acks and answers a burst of frames asks for."""
        self._write(b"".join([text_frame(frame) for frame in frames]))

    def _write(self, data: bytes, wait: bool = True) -> None:
        """Write ``data`` after what waits in ``_out``; in a greenlet other than the hub, and with ``wait``, wait
        until all of it has left."""
        if self._sock is None:
            raise TransportError("send failed: socket is already closed.")
        if not self._out:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0  # TLS: the same bytes are written again when the socket has room
            except OSError as exc:
                raise TransportError(f"send failed: {exc or type(exc).__name__}") from None
            if sent == len(data):
                return
            data = data[sent:]
            if self._writing is None:
                self._writing = get_hub().loop.io(self._sock.fileno(), 2)
            self._writing.start(self._on_writable)
        self._out += data
        if wait and getcurrent() is not get_hub():
            drained = self._drained
            if drained is None:
                drained = self._drained = Event()
            while self._out and self._sock is not None:
                drained.clear()
                drained.wait()
            if self._out:  # closed under us with bytes unsent
                raise TransportError("send failed: socket is already closed.")

    def _on_writable(self) -> None:
        """The socket has room: what waits in ``_out`` goes (from the hub)."""
        out, sock = self._out, self._sock
        if sock is None:
            return
        try:
            sent = sock.send(out)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            # Told to whoever reads: the socket is broken both ways.
            self._error = self._error or TransportError(f"send failed: {exc or type(exc).__name__}")
            sent = len(out)
            if self._on_readable is not None:
                get_hub().loop.run_callback(self._on_readable)
        self._out = out[sent:]
        if not self._out:
            self._writing.stop()
            if self._drained is not None:
                self._drained.set()

    # -- closing ------------------------------------------------------------------------------

    def close(self, status: int = websocket.STATUS_NORMAL) -> None:
        """Send a WebSocket close frame if the socket takes it now, and close the socket without waiting for the
        peer's answer (a peer that reads or says nothing must not hold us). Closing twice does nothing more."""
        sock = self._sock
        if sock is None:
            return
        for watcher in (self._reading, self._writing):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._reading = self._writing = self._on_readable = None
        try:
            if not self._out:
                sock.send(_control_frame(websocket.ABNF.OPCODE_CLOSE, struct.pack("!H", status)))
        except (OSError, ValueError):
            pass
        self._sock = None
        try:
            sock.close()
        except OSError:
            pass
        if self._drained is not None:
            self._drained.set()


class Closed(TransportError):
    """The peer closed the WebSocket (a close frame, or the socket's end)."""


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


def _control_frame(opcode: int, payload: bytes) -> bytes:
    """A masked control frame (close, ping, pong): at most 125 bytes of payload."""
    key = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + mask(key, payload)


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
        opcode, length = self.header[4], self.length
        self.check(opcode, length)
        if opcode == websocket.ABNF.OPCODE_CONT:
            self._message_size += length
        elif opcode < websocket.ABNF.OPCODE_CLOSE:
            self._message_size = length

    def check(self, opcode: int, length: int) -> None:
        """Raise ``ProtocolViolation`` if a frame of ``opcode`` and ``length`` would pass a limit (nothing read)."""
        if opcode >= websocket.ABNF.OPCODE_CLOSE:  # control frames: close, ping, pong
            if length > _MAX_CONTROL_FRAME:
                raise ProtocolViolation(
                    f"control frame of {length} bytes exceeds the {_MAX_CONTROL_FRAME}-byte limit of RFC 6455"
                )
        elif opcode == websocket.ABNF.OPCODE_CONT:
            if self._message_size + length > self.max_size:
                raise FrameTooLarge(
                    f"fragmented message of {self._message_size + length} bytes exceeds the {self.max_size}-byte limit"
                )
        elif length > self.max_size:
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

    websocket-client reads the handshake response one byte per ``recv``; under gevent each read is a syscall
    plus a hub switch. Reading ahead into a buffer makes that one read. Once the WebSocket is open the transport
    fills the buffer itself (``append``), takes the common frame (whole, final, unmasked text) straight out of it
    (``take_text_frame``), and lets websocket-client's frame reader ``recv`` any other frame once it is whole.
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
        return bytes(buffer[start : start + size]) if type(buffer) is bytearray else buffer[start : start + size]

    def empty(self) -> bool:
        return self._start >= len(self._buffer)

    def append(self, data: bytes) -> None:
        """Bytes read from the socket, after those not taken yet. A frame that comes in several reads grows a
        bytearray in place (amortised): joining bytes at each read would copy it again and again, and the
        freed copies of a large frame fragment the heap (the RSS grew by megabytes)."""
        buffer, start = self._buffer, self._start
        if start >= len(buffer):
            self._buffer, self._start = data, 0
            return
        if isinstance(buffer, bytearray):
            del buffer[:start]  # from the front: CPython moves the start, copies nothing
        else:
            buffer = self._buffer = bytearray(buffer[start:])
        buffer += data
        self._start = 0

    def frame_header(self) -> tuple[int, int]:
        """The opcode and payload length of the frame at the head (its header is in: ``frame_whole`` said so)."""
        buffer, start = self._buffer, self._start
        length = buffer[start + 1] & 0x7F
        if length == 126:
            length = int.from_bytes(buffer[start + 2 : start + 4], "big")
        elif length == 127:
            length = int.from_bytes(buffer[start + 2 : start + 10], "big")
        return buffer[start] & 0x0F, length

    def frame_whole(self) -> bool | None:
        """Whether the frame at the head is wholly in the buffer: None when not even its header is."""
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < 2:
            return None
        code = buffer[start + 1]
        header = (2, 4, 10)[(code & 0x7F > 125) + (code & 0x7F > 126)] + (4 if code & 0x80 else 0)
        if available < header:
            return None
        return available >= header + self.frame_header()[1]

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
