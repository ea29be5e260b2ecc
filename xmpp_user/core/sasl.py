"""SASL mechanisms, client side: ANONYMOUS, PLAIN, and SCRAM-SHA-1, SCRAM-SHA-256 and
SCRAM-SHA-512 (RFC 5802, RFC 7677) computed by ``scramp``.

The SCRAM -PLUS variants (channel binding, RFC 5929) are left out on purpose: binding proves
that no one sits between client and server, which a load generator has no use for, and it
would need the TLS socket in this sans-IO core.

SCRAM's key derivation (PBKDF2, 4096 iterations or more) would cost milliseconds of client
CPU per login. RFC 5802 lets a client keep the salted password, and here it is kept per
(hash, password, salt, iterations), so a run that logs the same accounts in thousands of
times pays it once per account. scramp takes no precomputed keys (1.4.7 removed its hook for
a custom key derivation), so the cache wraps the one function through which scramp derives
them, ``scramp.core.hi``, and is consulted only while one of our exchanges computes its
proof: any other user of scramp in the process is untouched.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import scramp
import scramp.core

from xmpp_user.core.errors import SaslError

SCRAM = "SCRAM"
"""Not a mechanism: asks for the strongest SCRAM mechanism the server offers."""
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1")
"""Strongest first."""
MECHANISMS = ("ANONYMOUS", "PLAIN", SCRAM, *SCRAM_MECHANISMS)
"""What a user may ask for."""
MAX_ITERATIONS = 1_000_000
"""A server asking for more PBKDF2 rounds than this is refused: each login would cost seconds of CPU."""

_KEY_CACHE: dict[tuple[str, bytes, bytes, int], bytes] = {}
_KEY_CACHE_MAX = 100_000
_caching: ContextVar[bool] = ContextVar("scram_key_caching", default=False)
_scramp_hi = scramp.core.hi


def _hi(hf: Callable[[], Any], password: bytes, salt: bytes, iterations: int) -> bytes:
    """scramp's key derivation, remembered for our own exchanges."""
    if not _caching.get():
        return _scramp_hi(hf, password, salt, iterations)
    key = (hf().name, password, salt, int(iterations))
    salted = _KEY_CACHE.get(key)
    if salted is None:
        salted = _scramp_hi(hf, password, salt, iterations)
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        _KEY_CACHE[key] = salted
    return salted


scramp.core.hi = _hi


def clear_key_cache() -> None:
    """Forget every derived key (for measurements, and after passwords change)."""
    _KEY_CACHE.clear()


def choose(requested: str, offered: list[str]) -> str | None:
    """The mechanism to use: ``requested`` if the server offers it, for ``SCRAM`` the strongest
    SCRAM mechanism offered; None when nothing fits."""
    if requested == SCRAM:
        return next((name for name in SCRAM_MECHANISMS if name in offered), None)
    return requested if requested in offered else None


class Mechanism:
    """One authentication exchange: ``initial()`` then ``challenge()`` per server challenge."""

    name = ""

    def initial(self) -> bytes:
        return b""

    def challenge(self, data: bytes) -> bytes:
        raise SaslError(f"unexpected SASL challenge for {self.name}")

    def success(self, data: bytes) -> None:
        """Check the additional data carried by ``<success/>``."""


class Anonymous(Mechanism):
    name = "ANONYMOUS"


class Plain(Mechanism):
    name = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        self._message = b"\0" + username.encode() + b"\0" + password.encode()

    def initial(self) -> bytes:
        return self._message


class Scram(Mechanism):
    """One SCRAM exchange, computed by scramp; every refusal is a one-line SaslError."""

    def __init__(self, name: str, username: str, password: str, nonce: str | None = None) -> None:
        if name not in SCRAM_MECHANISMS:
            raise SaslError(f"unsupported SCRAM mechanism {name!r}; choose one of {', '.join(SCRAM_MECHANISMS)}")
        self.name = name
        try:
            self._client = scramp.ScramClient([name], username, password, c_nonce=nonce)
        except scramp.ScramException as exc:
            raise SaslError(f"{name} cannot use these credentials: {_reason(exc)}") from None
        self._proof_sent = False

    def initial(self) -> bytes:
        return self._client.get_client_first().encode()

    def challenge(self, data: bytes) -> bytes:
        if self._proof_sent:
            raise SaslError(f"unexpected second {self.name} challenge")
        try:
            self._client.set_server_first(data.decode())
            iterations = int(self._client.iterations)
            if iterations > MAX_ITERATIONS:
                raise SaslError(f"{self.name} iteration count {iterations} is above {MAX_ITERATIONS}")
            token = _caching.set(True)
            try:
                final = self._client.get_client_final()
            finally:
                _caching.reset(token)
        except (scramp.ScramException, UnicodeDecodeError) as exc:
            raise SaslError(f"{self.name} server-first message refused ({_reason(exc)}): {data[:80]!r}") from None
        self._proof_sent = True
        return final.encode()

    def success(self, data: bytes) -> None:
        if not self._proof_sent:
            raise SaslError(f"{self.name} success before the exchange completed")
        try:
            self._client.set_server_final(data.decode())
        except (scramp.ScramException, UnicodeDecodeError) as exc:
            reason = _reason(exc)
            if "signature" in reason:
                raise SaslError(
                    f"{self.name} server signature does not verify: the server does not know the password"
                ) from None
            raise SaslError(f"{self.name} server-final message refused ({reason}): {data[:80]!r}") from None


def _reason(exc: Exception) -> str:
    """scramp's message on one line, without the error class it appends for a server's use,
    unless that class came from the server itself (an ``e=`` attribute)."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    if getattr(exc, "server_error", None) is not None and "returned an error" in message:
        message = str(exc)
    return " ".join(message.split()).rstrip(".")


def create(name: str, username: str = "", password: str = "") -> Mechanism:
    if name == "ANONYMOUS":
        return Anonymous()
    if name == "PLAIN":
        return Plain(username, password)
    if name in SCRAM_MECHANISMS:
        return Scram(name, username, password)
    raise SaslError(f"unsupported SASL mechanism {name!r}; choose one of {', '.join(MECHANISMS)}")


def b64(data: bytes) -> str:
    """SASL payload encoding: '=' stands for an empty response (RFC 6120 section 6.4.2)."""
    return base64.b64encode(data).decode() if data else "="


def unb64(text: str | None) -> bytes:
    if not text or text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise SaslError(f"invalid base64 in SASL payload: {text[:40]!r}") from exc
