"""Our WebSocket users seen from outside: an independent reference client (slixmpp 1.17, over
plain TCP c2s, in its own process so that its asyncio loop never meets gevent) watches the room,
reads its archive, and parses the JIDs our client bound.

``SlixmppObserver`` is also used by test_locust_runs.py to watch real Locust runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
import slixmpp
from recorder import Recorder

from xmpp_user.core.stanza import bare, resource
from xmpp_user.core.stream import Credentials
from xmpp_user.run.truth import Tally
from xmpp_user.scenario.accounts import register_accounts
from xmpp_user.scenario.talk import Talker
from xmpp_user.session.client import XmppClient

PASSWORD = "secret"
BODY = "{jabber:client}body"

OBSERVER_SCRIPT = r'''"""An independent XMPP observer: slixmpp over TCP c2s, run as its own process.

    python observer.py CONFIG.json

It logs in (anonymously, or as a registered account with SCRAM without TLS), joins
the rooms of "rooms" without history, writes "ready_file", then records every live
groupchat message and every room presence until "stop_file" appears or "max_seconds" pass.
It then reads the whole archive (MAM, XEP-0313, pages of 50) of each room of "archive" and
writes everything to "out". Errors are written to "out" as well; the process always ends.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

import slixmpp

TRUTH = "{urn:locust-xmpp:truth}t"


def marker(msg):
    element = msg.xml.find(TRUTH)
    return None if element is None else [element.get("s"), int(element.get("n"))]


class Observer(slixmpp.ClientXMPP):
    def __init__(self, cfg):
        super().__init__(cfg["jid"], cfg.get("password", ""))
        self.cfg = cfg
        self.result = {"jid": "", "live": {}, "presence": {}, "archive": {}, "error": None}
        for room in cfg["rooms"]:
            self.result["live"][room] = []
            self.result["presence"][room] = []
        self.register_plugin("xep_0045")
        self.register_plugin("xep_0313")
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("groupchat_presence", self.on_presence)
        self.add_event_handler("failed_auth", self.on_failed_auth)

    def on_failed_auth(self, _event):
        self.result["error"] = "authentication failed"
        self.disconnect()

    def on_groupchat(self, msg):
        room = msg["from"].bare
        if room in self.result["live"] and msg["body"] and msg["delay"]["stamp"] is None:
            self.result["live"][room].append(
                {"nick": msg["from"].resource, "body": msg["body"], "id": msg["id"], "marker": marker(msg),
                 "t": time.time()}
            )

    def on_presence(self, pr):
        room = pr["from"].bare
        if room in self.result["presence"]:
            self.result["presence"][room].append(
                {"nick": pr["from"].resource, "type": pr["type"], "codes": sorted(pr["muc"]["status_codes"]),
                 "t": time.time()}
            )

    async def start(self, _event):
        cfg = self.cfg
        try:
            self.result["jid"] = str(self.boundjid)
            for room in cfg["rooms"]:
                await self.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), cfg["nick"], maxstanzas=0, timeout=10)
            Path(cfg["ready_file"]).write_text("ready")
            deadline = time.monotonic() + cfg["max_seconds"]
            while time.monotonic() < deadline and not Path(cfg["stop_file"]).exists():
                await asyncio.sleep(0.05)
            for room in cfg["archive"]:
                items = []
                async for msg in self.plugin["xep_0313"].iterate(jid=slixmpp.JID(room), rsm={"max": 50}):
                    forwarded = msg["mam_result"]["forwarded"]
                    inner = forwarded["stanza"]
                    stamp = forwarded["delay"]["stamp"]
                    items.append({"nick": inner["from"].resource, "body": inner["body"], "marker": marker(inner),
                                  "t": stamp.timestamp() if stamp else None})
                self.result["archive"][room] = items
        except Exception as exc:  # recorded for the test to show
            self.result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.disconnect()


def main():
    cfg = json.loads(Path(sys.argv[1]).read_text())
    observer = Observer(cfg)
    observer.enable_starttls = False
    observer.enable_direct_tls = False
    observer.enable_plaintext = True
    observer.connect(cfg["host"], cfg["port"])
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(observer.disconnected, cfg["max_seconds"] + 30))
    except asyncio.TimeoutError:
        observer.result["error"] = observer.result["error"] or "observer timed out"
    Path(cfg["out"]).write_text(json.dumps(observer.result))


if __name__ == "__main__":
    main()
'''


class SlixmppObserver:
    """Runs OBSERVER_SCRIPT in a subprocess: ``start()`` returns once it has joined its rooms,
    ``stop()`` lets it read the archives and returns what it saw. Bounded in time throughout."""

    def __init__(
        self,
        lab: Any,
        workdir: Path,
        rooms: list[str],
        archive: list[str] | None = None,
        jid: str | None = None,
        password: str = "",
        nick: str = "observer",
        max_seconds: float = 60,
    ) -> None:
        self.dir = workdir / f"observer-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir(parents=True)
        self.out = self.dir / "out.json"
        self.ready = self.dir / "ready"
        self.stop_file = self.dir / "stop"
        self.max_seconds = max_seconds
        config = {
            "host": lab.c2s_address[0], "port": lab.c2s_address[1], "jid": jid or lab.domain, "password": password,
            "rooms": rooms, "archive": rooms if archive is None else archive, "nick": nick,
            "max_seconds": max_seconds, "stop_file": str(self.stop_file), "ready_file": str(self.ready),
            "out": str(self.out),
        }  # fmt: skip
        (self.dir / "observer.py").write_text(OBSERVER_SCRIPT)
        (self.dir / "config.json").write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> SlixmppObserver:
        with open(self.dir / "stderr.txt", "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.dir / "observer.py"), str(self.dir / "config.json")],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the slixmpp observer did not join: {self.report()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        """Ask the observer to finish; returns its record (jid, live, presence, archive, error)."""
        self.stop_file.write_text("stop")
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        finally:
            self.kill()
        if not self.out.exists():
            pytest.fail(f"the slixmpp observer wrote nothing: {self.report()}")
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def report(self) -> str:
        err = self.dir / "stderr.txt"
        return err.read_text()[-3000:] if err.exists() else "(no stderr)"

    def __enter__(self) -> SlixmppObserver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@pytest.fixture(scope="module")
def accounts(lab) -> None:
    register_accounts(lab.websocket_url, lab.registered_domain, pattern="it-{n}", count=3, password=PASSWORD)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_marked_messages_reach_the_observer_and_the_archive_in_order(lab, accounts, tmp_path: Path) -> None:
    room = f"obs-{uuid.uuid4().hex[:10]}@{lab.muc_domain}"
    observer = SlixmppObserver(lab, tmp_path, [room], jid=f"it-2@{lab.registered_domain}", password=PASSWORD)
    rec, tally = Recorder(), Tally()
    anon = XmppClient(lab.websocket_url, lab.domain, request_event=rec)
    reg = XmppClient(
        lab.websocket_url, lab.registered_domain, Credentials("SCRAM", "it-0", PASSWORD), request_event=rec
    )
    talkers = {"anon": Talker(anon, "obs-anon", rec, tally), "reg": Talker(reg, "obs-reg", rec, tally)}
    sent = [(("anon", "reg")[i % 2], f"marked {i} <&> '\"' \u2713") for i in range(10)]
    with observer:
        try:
            anon.connect()
            reg.connect()
            talkers["anon"].join(room, "anon")
            talkers["reg"].join(room, "reg")
            everyone = {"anon", "reg", "observer"}
            assert wait_until(lambda: set(anon.rooms[room].occupants) == set(reg.rooms[room].occupants) == everyone)
            for nick, body in sent:
                talkers[nick].say(room, body)
            assert wait_until(lambda: sum(tally.delivered.values()) == 20), tally.as_dict()
            ours = anon.mam(room)
            anon.muc_leave(room)
            reg.muc_leave(room)
        finally:
            anon.close()
            reg.close()
        seen = observer.stop()
    assert seen["error"] is None, observer.report()
    assert bare(seen["jid"]) == f"it-2@{lab.registered_domain}"
    assert rec.failures == []
    assert rec.names.count("message") == 10 and rec.names.count("message_delivery") == 20

    live = seen["live"][room]
    assert [(m["nick"], m["body"]) for m in live] == sent
    expected_markers = [[f"obs-{nick}", i // 2 + 1] for i, (nick, _) in enumerate(sent)]
    assert [m["marker"] for m in live] == expected_markers
    assert len({m["id"] for m in live}) == 10 and all(m["id"] for m in live)
    # The room is new: its whole archive is these ten messages, markers included.
    archive = seen["archive"][room]
    assert [(a["nick"], a["body"]) for a in archive] == sent
    assert [a["marker"] for a in archive] == expected_markers
    # Our own MAM query read the same archive.
    assert [(resource(m.get("from", "")), m.findtext(BODY)) for m in ours.messages] == sent
    # The observer saw each of our users arrive, then leave.
    for nick in ("anon", "reg"):
        assert [p["type"] for p in seen["presence"][room] if p["nick"] == nick] == ["available", "unavailable"]
    # Message truth: each message is expected by our two members, not by the observer (a client that is
    # not ours, whose deliveries we cannot see); all 20 arrived. The observer got its 10 copies anyway.
    judged = tally.summary()
    assert {k: judged[k] for k in ("sent", "confirmed", "expected", "delivered", "lost", "unexpected")} == {
        "sent": 10, "confirmed": 10, "expected": 20, "delivered": 20, "lost": 0, "unexpected": 0,
    }  # fmt: skip
    assert len([m for m in live if m["marker"]]) == 10


@pytest.mark.parametrize(
    ("login", "requested"),
    [("anonymous", ""), ("anonymous", "locust 1"), ("scram", ""), ("plain", "load test \u2713/x")],
)
def test_bound_jids_are_valid_for_slixmpp(lab, accounts, login: str, requested: str) -> None:
    if login == "anonymous":
        client = XmppClient(lab.websocket_url, lab.domain, resource=requested)
    else:
        mechanism = {"scram": "SCRAM", "plain": "PLAIN"}[login]
        client = XmppClient(
            lab.websocket_url, lab.registered_domain, Credentials(mechanism, "it-1", PASSWORD), resource=requested
        )
    client.connect()
    try:
        client.ping()
    finally:
        client.close()
    jid = slixmpp.JID(client.jid)
    assert jid.full == client.jid
    assert jid.bare == bare(client.jid) and jid.resource == resource(client.jid) != ""
    if requested:
        assert jid.resource == requested
    if login == "anonymous":
        assert jid.domain == lab.domain and jid.user
    else:
        assert (jid.user, jid.domain) == ("it-1", lab.registered_domain)
