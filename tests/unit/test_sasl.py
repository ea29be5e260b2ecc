"""SASL mechanisms with no server: the RFC test vectors, the choice of the strongest SCRAM, every
refusal as a one-line SaslError, and the key cache."""

from __future__ import annotations

import hashlib

import pytest
import scramp

from xmpp_user.core import sasl
from xmpp_user.core.errors import SaslError

RFC5802 = {  # RFC 5802 section 5
    "name": "SCRAM-SHA-1",
    "nonce": "fyko+d2lbbFgONRv9qkxdawL",
    "server_first": b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "client_final": b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    "server_final": b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
}
RFC7677 = {  # RFC 7677 section 3
    "name": "SCRAM-SHA-256",
    "nonce": "rOprNGfwEbeRWgbNEkqO",
    "server_first": b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "client_final": b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "server_final": b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
}


@pytest.fixture(autouse=True)
def empty_key_cache() -> None:
    sasl.clear_key_cache()


@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every PBKDF2 computation, wherever it comes from."""
    calls: list[tuple] = []
    real = hashlib.pbkdf2_hmac
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", lambda *a: calls.append(a) or real(*a))
    return calls


@pytest.mark.parametrize("vector", [RFC5802, RFC7677], ids=["rfc5802-sha1", "rfc7677-sha256"])
def test_rfc_vectors(vector: dict) -> None:
    mech = sasl.create(vector["name"], "user", "pencil")
    assert mech.name == vector["name"]
    mech = sasl.Scram(vector["name"], "user", "pencil", nonce=vector["nonce"])
    assert mech.initial() == f"n,,n=user,r={vector['nonce']}".encode()
    assert mech.challenge(vector["server_first"]) == vector["client_final"]
    mech.success(vector["server_final"])


@pytest.mark.parametrize("name", sasl.SCRAM_MECHANISMS)
def test_every_scram_variant_against_a_scram_server(name: str) -> None:
    server_mech = scramp.ScramMechanism(name)
    auth_info = server_mech.make_auth_info("pässword", iteration_count=4096)
    asked: list[str] = []
    server = server_mech.make_server(lambda username: asked.append(username) or auth_info)
    mech = sasl.create(name, "user,=odd", "pässword")
    server.set_client_first(mech.initial().decode())
    assert asked == ["user,=odd"]  # escaped on the wire, as RFC 5802 says
    server.set_client_final(mech.challenge(server.get_server_first().encode()).decode())
    mech.success(server.get_server_final().encode())


@pytest.mark.parametrize(
    ("requested", "offered", "chosen"),
    [
        ("SCRAM", ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], "SCRAM-SHA-256"),
        ("SCRAM", ["SCRAM-SHA-1", "SCRAM-SHA-512", "SCRAM-SHA-256"], "SCRAM-SHA-512"),
        ("SCRAM", ["SCRAM-SHA-1"], "SCRAM-SHA-1"),
        ("SCRAM", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1"], "SCRAM-SHA-1"),  # no channel binding
        ("SCRAM", ["SCRAM-SHA-256-PLUS", "PLAIN"], None),
        ("SCRAM", [], None),
        ("SCRAM-SHA-256", ["SCRAM-SHA-1", "SCRAM-SHA-512"], None),  # an exact choice is exact
        ("SCRAM-SHA-1", ["SCRAM-SHA-512", "SCRAM-SHA-1"], "SCRAM-SHA-1"),
        ("PLAIN", ["PLAIN"], "PLAIN"),
    ],
)
def test_choice_of_mechanism(requested: str, offered: list[str], chosen: str | None) -> None:
    assert sasl.choose(requested, offered) == chosen


def test_a_bad_server_signature_is_refused() -> None:
    mech = sasl.Scram("SCRAM-SHA-256", "user", "pencil", nonce=RFC7677["nonce"])
    mech.initial()
    mech.challenge(RFC7677["server_first"])
    with pytest.raises(SaslError) as raised:
        mech.success(b"v=" + b"A" * 43 + b"=")
    assert str(raised.value) == (
        "SCRAM-SHA-256 server signature does not verify: the server does not know the password"
    )


NONCE = "fyko+d2lbbFgONRv9qkxdawL"


@pytest.mark.parametrize(
    ("server_first", "reason"),
    [
        (b"garbage", "Malformed server first message"),
        (b"r=" + NONCE.encode() + b"x,s=QSXCR+Q6sek8bf92", "Malformed server first message"),
        (b"r=someone-else,s=QSXCR+Q6sek8bf92,i=4096", "Client nonce doesn't match"),
        (b"r=" + NONCE.encode() + b",s=QSXCR+Q6sek8bf92,i=4096", "The nonce must be longer than the client nonce"),
        (b"r=" + NONCE.encode() + b"x,s=not*base64,i=4096", "Invalid base 64 encoding"),
        (b"r=" + NONCE.encode() + b"x,s=QSXCR+Q6sek8bf92,i=many", "The iteration count can only contain ASCII digits"),
        (b"r=" + NONCE.encode() + b"x,s=QSXCR+Q6sek8bf92,i=12", "The value must not be < 4096"),
        (b"e=other-error", "The server returned an error: other-error"),
        (b"r=" + NONCE.encode() + b"\xff,s=QSXCR+Q6sek8bf92,i=4096", "not UTF-8"),
    ],
    ids=[
        "garbage",
        "no-iterations",
        "foreign-nonce",
        "same-nonce",
        "bad-salt",
        "bad-count",
        "low-count",
        "server-error",
        "not-utf8",
    ],  # fmt: skip
)
def test_malformed_server_first_messages(server_first: bytes, reason: str) -> None:
    mech = sasl.Scram("SCRAM-SHA-1", "user", "pencil", nonce=NONCE)
    mech.initial()
    with pytest.raises(SaslError) as raised:
        mech.challenge(server_first)
    message = str(raised.value)
    assert message.startswith(f"SCRAM-SHA-1 server-first message refused ({reason}")
    assert message.endswith(repr(server_first[:80]))
    assert "\n" not in message


def test_an_iteration_count_too_costly_for_a_load_generator(pbkdf2_calls: list[tuple]) -> None:
    mech = sasl.Scram("SCRAM-SHA-1", "user", "pencil", nonce=NONCE)
    mech.initial()
    with pytest.raises(SaslError, match="^SCRAM-SHA-1 iteration count 5000000 is above 1000000$"):
        mech.challenge(b"r=" + NONCE.encode() + b"x,s=QSXCR+Q6sek8bf92,i=5000000")
    assert pbkdf2_calls == []


def test_exchanges_out_of_order() -> None:
    mech = sasl.Scram("SCRAM-SHA-1", "user", "pencil", nonce=RFC5802["nonce"])
    mech.initial()
    with pytest.raises(SaslError, match="^SCRAM-SHA-1 success before the exchange completed$"):
        mech.success(RFC5802["server_final"])
    mech.challenge(RFC5802["server_first"])
    with pytest.raises(SaslError, match="^unexpected second SCRAM-SHA-1 challenge$"):
        mech.challenge(RFC5802["server_first"])
    with pytest.raises(SaslError, match=r"^SCRAM-SHA-1 server-final message refused \(Malformed server final"):
        mech.success(b"x=1")
    with pytest.raises(SaslError, match=r"^unsupported SASL mechanism 'SCRAM-SHA-1-PLUS'"):
        sasl.create("SCRAM-SHA-1-PLUS", "user", "pencil")
    with pytest.raises(SaslError, match="^SCRAM-SHA-1 cannot use these credentials: control characters forbidden$"):
        sasl.create("SCRAM-SHA-1", "user", "bad\u0007password")


def test_key_derivation_is_cached_per_account_and_hash(pbkdf2_calls: list[tuple]) -> None:
    def login(name: str, password: str, salt: bytes = b"QSXCR+Q6sek8bf92") -> None:
        mech = sasl.Scram(name, "cache-user", password, nonce="abc")
        mech.initial()
        mech.challenge(b"r=abcdef,s=" + salt + b",i=4096")

    for _ in range(3):
        login("SCRAM-SHA-1", "pw-cache-test")
    assert len(pbkdf2_calls) == 1
    login("SCRAM-SHA-256", "pw-cache-test")  # another hash, another key
    login("SCRAM-SHA-1", "other password")
    login("SCRAM-SHA-1", "pw-cache-test", salt=b"W22ZaJ0SNY7soEsUEjb6gQ==")
    assert len(pbkdf2_calls) == 4
    for _ in range(3):
        login("SCRAM-SHA-256", "pw-cache-test")
    assert len(pbkdf2_calls) == 4


def test_the_cache_leaves_other_users_of_scramp_alone(pbkdf2_calls: list[tuple]) -> None:
    for _ in range(2):
        client = scramp.ScramClient(["SCRAM-SHA-1"], "user", "pencil", c_nonce=RFC5802["nonce"])
        client.get_client_first()
        client.set_server_first(RFC5802["server_first"].decode())
        client.get_client_final()
    assert len(pbkdf2_calls) == 2
