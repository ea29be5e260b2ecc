"""WebSocket transport (RFC 7395, subprotocol ``xmpp``): websocket-client under gevent.

Only this module touches sockets. Errors come out as ``TransportError`` with one readable
line: refused connection, unknown host, timeout, TLS failure, HTTP status on upgrade.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

import websocket

_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}


class TransportError(Exception):
    """The WebSocket could not be opened or broke."""


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

    @classmethod
    def open(
        cls,
        url: str,
        timeout: float = 10.0,
        verify_tls: bool = True,
        source_address: str | None = None,
    ) -> WebSocketTransport:
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
        ws = websocket.WebSocket(
            sslopt={"context": ssl_context(verify_tls)},
            enable_multithread=True,
            skip_utf8_validation=True,
        )
        options: dict = {"subprotocols": ["xmpp"], "timeout": timeout, "suppress_origin": True}
        try:
            if source_address:
                options["socket"] = _bound_socket(parts, source_address, timeout, verify_tls)
            ws.connect(url, **options)
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
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"cannot open WebSocket {url}: {exc}") from None
        if ws.getsubprotocol() != "xmpp":
            ws.close()
            raise TransportError(f"{url} did not accept the 'xmpp' WebSocket subprotocol")
        ws.settimeout(None)  # reply deadlines are kept per request by the client
        return cls(ws)

    def send(self, frame: str) -> None:
        try:
            self._ws.send(frame)
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"send failed: {exc or type(exc).__name__}") from None

    def recv(self) -> str | None:
        """The next text message, or None once the WebSocket is closed."""
        try:
            data = self._ws.recv()
        except websocket.WebSocketConnectionClosedException:
            return None
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"receive failed: {exc or type(exc).__name__}") from None
        if isinstance(data, bytes):
            raise TransportError("binary WebSocket message: RFC 7395 allows text messages only")
        return data or None

    def close(self) -> None:
        try:
            self._ws.close(timeout=1)
        except (OSError, websocket.WebSocketException):
            pass


def _bound_socket(parts, source: str, timeout: float, verify_tls: bool) -> socket.socket:
    """A TCP socket leaving from ``source``: one worker host per IP multiplies the port range."""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=timeout, source_address=(source, 0))
    if parts.scheme == "wss":
        sock = ssl_context(verify_tls).wrap_socket(sock, server_hostname=parts.hostname)
    return sock
