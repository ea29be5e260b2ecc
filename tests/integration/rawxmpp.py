"""A bare XMPP-over-WebSocket session for the lab's own tests: frames sent and received verbatim.

Room behaviour that differs between the lab servers (locking, temporary rooms, stream features) is
checked with it, so that these tests prove the lab's configuration whatever the project's client does
with those differences. Every wait is bounded in frames and seconds.
"""

from __future__ import annotations

import re
import time

import websocket

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
MUC = "http://jabber.org/protocol/muc"


class RawSession:
    def __init__(self, url: str, domain: str, timeout: float = 5) -> None:
        self.domain = domain
        self.ws = websocket.create_connection(url, subprotocols=["xmpp"], timeout=timeout)
        self.jid = ""

    def send(self, xml: str) -> None:
        self.ws.send(xml)

    def frames(self, until: str | None = None, quiet: float = 1.0, limit: int = 200, within: float = 10) -> list[str]:
        """Frames received until one matches ``until`` (a regex), ``quiet`` s of silence, or ``within`` s."""
        got: list[str] = []
        deadline = time.monotonic() + within
        while len(got) < limit and time.monotonic() < deadline:
            self.ws.settimeout(quiet)
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            got.append(frame)
            if until and re.search(until, frame):
                break
        return got

    def open(self) -> str:
        """Open the stream; the stream features frame."""
        self.send(f"<open xmlns='{FRAMING}' to='{self.domain}' version='1.0'/>")
        return self.frames(until="features")[-1]

    def login_anonymous(self) -> str:
        self.open()
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        assert "<success" in self.frames(until="success|failure")[-1]
        self.open()
        bind = "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        self.send(f"<iq xmlns='jabber:client' type='set' id='bind'>{bind}</iq>")
        bound = self.frames(until="<jid>")[-1]
        self.jid = re.search(r"<jid>([^<]+)</jid>", bound).group(1)
        return self.jid

    def join(self, occupant: str) -> list[str]:
        """Join a room as ``room@service/nick``; the frames that answer (quiet after 1 s)."""
        self.send(f"<presence xmlns='jabber:client' to='{occupant}'><x xmlns='{MUC}'/></presence>")
        return self.frames()

    def leave(self, occupant: str) -> list[str]:
        self.send(f"<presence xmlns='jabber:client' to='{occupant}' type='unavailable'/>")
        return self.frames()

    def iq(self, to: str, payload: str, id_: str, type_: str = "get") -> str:
        """Send an IQ; its reply (the frame that is an iq with this id)."""
        self.send(f"<iq xmlns='jabber:client' type='{type_}' id='{id_}' to='{to}'>{payload}</iq>")
        frames = self.frames(until=rf"<iq\b[^>]*\sid='{id_}'")
        return frames[-1] if frames else ""

    def close(self) -> None:
        try:
            self.send(f"<close xmlns='{FRAMING}'/>")
            self.frames(quiet=0.5, limit=20, within=2)
        except (OSError, websocket.WebSocketException):
            pass
        self.ws.close()


def mechanisms(features: str) -> set[str]:
    return set(re.findall(r"<mechanism>([^<]+)</mechanism>", features))


def status_codes(frames: list[str]) -> set[str]:
    return set(re.findall(r"<status code=['\"](\d+)", " ".join(frames)))
