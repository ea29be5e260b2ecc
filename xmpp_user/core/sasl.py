"""SASL mechanisms: ANONYMOUS, PLAIN and SCRAM-SHA-1 (RFC 5802), client side.

SCRAM's key derivation (PBKDF2, 4096 to 10,000 iterations) would cost several milliseconds of
client CPU per login; the derived keys are cached per (password, salt, iterations), so a run
that logs the same accounts in thousands of times pays it once per account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from xmpp_user.core.errors import SaslError

MECHANISMS = ("ANONYMOUS", "PLAIN", "SCRAM-SHA-1")

_KEY_CACHE: dict[tuple[str, bytes, int], tuple[bytes, bytes, bytes]] = {}
_KEY_CACHE_MAX = 100_000


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(client key, stored key, server key), cached."""
    key = (password, salt, iterations)
    keys = _KEY_CACHE.get(key)
    if keys is None:
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        keys = (client_key, hashlib.sha1(client_key).digest(), hmac.digest(salted, b"Server Key", "sha1"))
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        _KEY_CACHE[key] = keys
    return keys


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


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


class ScramSha1(Mechanism):
    name = "SCRAM-SHA-1"

    def __init__(self, username: str, password: str, nonce: str | None = None) -> None:
        self._password = password
        self._nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n={_saslname(username)},r={self._nonce}"
        self._server_signature = b""

    def initial(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def challenge(self, data: bytes) -> bytes:
        if self._server_signature:
            raise SaslError("unexpected second SCRAM challenge")
        try:
            fields = dict(item.split("=", 1) for item in data.decode().split(","))
            nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise SaslError(f"malformed SCRAM server-first message: {data[:80]!r}") from exc
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise SaslError("SCRAM server nonce does not extend the client nonce")
        if not 1 <= iterations <= 1_000_000:
            raise SaslError(f"SCRAM iteration count {iterations} out of range")
        client_key, stored_key, server_key = _scram_keys(self._password, salt, iterations)
        final_bare = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{data.decode()},{final_bare}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = hmac.digest(server_key, auth_message, "sha1")
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    def success(self, data: bytes) -> None:
        if not self._server_signature:
            raise SaslError("SCRAM success before the exchange completed")
        text = data.decode(errors="replace")
        try:
            signature = base64.b64decode(text[2:], validate=True) if text.startswith("v=") else b""
        except ValueError:
            signature = b""
        if not hmac.compare_digest(signature, self._server_signature):
            raise SaslError("SCRAM server signature does not verify: the server does not know the password")


def create(name: str, username: str = "", password: str = "") -> Mechanism:
    if name == "ANONYMOUS":
        return Anonymous()
    if name == "PLAIN":
        return Plain(username, password)
    if name == "SCRAM-SHA-1":
        return ScramSha1(username, password)
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
