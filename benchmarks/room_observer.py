"""An independent observer of a load test's rooms: what the server really sent, to check the message truth.

    python benchmarks/room_observer.py CONFIG.json      (run by RoomObserver below, in its own process)

The observer is slixmpp over plain c2s (another client library, another transport than the generator's):
it joins the rooms before the run, then records, in the order its stream brings them, every room presence
(with the truth member id a load-test user announces in it) and every live groupchat message that carries a
truth marker, until told to stop; then it writes them as JSON.

A room sends its presences and messages to every occupant in the one order in which it handled them, so
the observer's record replays the room: ``deliveries_due`` walks it and, for each message, counts one
delivery due to each member then in the room. That is what the truth's ``expected`` must be, member by
member, derived here without anything the generator computed; and since the observer was in the room from
before the first message to after the last, the messages it got are every message the room accepted.

``RoomObserver`` starts it, waits until it has joined, and stops it; it is bounded in time throughout.
Used by tests/integration/test_report_run.py and benchmarks/seeds.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

TRUTH_MARKER = "{urn:locust-xmpp:truth}t"
TRUTH_MEMBER = "{urn:locust-xmpp:truth}m"


def main(config_path: str) -> None:
    import asyncio

    import slixmpp

    cfg = json.loads(Path(config_path).read_text())

    class Observer(slixmpp.ClientXMPP):
        def __init__(self) -> None:
            super().__init__(cfg["jid"], cfg.get("password", ""))
            self.events: list[list[Any]] = []
            self.error: str | None = None
            self.register_plugin("xep_0045")
            self.add_event_handler("session_start", self.start)
            self.add_event_handler("groupchat_message", self.on_message)
            self.add_event_handler("groupchat_presence", self.on_presence)

        def on_message(self, msg: Any) -> None:
            marker = msg.xml.find(TRUTH_MARKER)
            if marker is None or msg["delay"]["stamp"] is not None:
                return  # not ours, or a replay (join history)
            self.events.append(["m", msg["from"].bare, msg["from"].resource, marker.get("s"), int(marker.get("n"))])

        def on_presence(self, presence: Any) -> None:
            member = presence.xml.find(TRUTH_MEMBER)
            kind = "leave" if presence["type"] == "unavailable" else "here"
            self.events.append(["p", presence["from"].bare, presence["from"].resource, kind,
                                member.get("id", "") if member is not None else ""])  # fmt: skip

        async def start(self, _event: Any) -> None:
            try:
                for room in cfg["rooms"]:
                    await self.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), cfg["nick"], maxstanzas=0,
                                                                timeout=30)  # fmt: skip
                Path(cfg["ready_file"]).write_text("ready")
                deadline = time.monotonic() + cfg["max_seconds"]
                while time.monotonic() < deadline and not Path(cfg["stop_file"]).exists():
                    await asyncio.sleep(0.1)
            except Exception as exc:  # recorded for the caller to show
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.disconnect()

    observer = Observer()
    observer.enable_starttls = False
    observer.enable_direct_tls = False
    observer.enable_plaintext = True
    observer.connect(cfg["host"], cfg["port"])
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(observer.disconnected, cfg["max_seconds"] + 60))
    except TimeoutError:
        observer.error = observer.error or "the observer did not finish in time"
    Path(cfg["out"]).write_text(json.dumps({"events": observer.events, "error": observer.error}))


def deliveries_due(events: list[list[Any]], room: str) -> tuple[Counter[str], list[tuple[str, int]]]:
    """From an observer's record of ``room``: the deliveries due to each truth member (one per message the room
    sent while the member was in it), and the messages as (sender, seq) in the order the room sent them."""
    here: dict[str, str] = {}
    due: Counter[str] = Counter()
    messages: list[tuple[str, int]] = []
    for event in events:
        if event[1] != room:
            continue
        if event[0] == "p":
            _, _, nick, kind, member = event
            if kind == "leave":
                here.pop(nick, None)
            else:
                here[nick] = member
        else:
            messages.append((event[3], event[4]))
            for member in here.values():
                if member:
                    due[member] += 1
    return due, messages


def verify(records: list[dict[str, Any]], room: str, truth_members: list[dict[str, str]]) -> dict[str, Any]:
    """What the observers' records (all in the room throughout) let one verify of a run's truth.

    ``truth_members`` are the rows of the run's PREFIX_truth_members.csv. Returns the messages the room sent
    (the same for every observer, each sender's sequence complete and none twice, or ``consistent`` is False),
    the deliveries due by the room's order, and the members whose expected or delivered count differs from
    what is due to them (with both figures).
    """
    views = [deliveries_due(r["events"], room) for r in records]
    due, messages = views[0]
    consistent = all(v == views[0] for v in views[1:])
    by_sender: dict[str, list[int]] = {}
    for sender, seq in messages:
        by_sender.setdefault(sender, []).append(seq)
    complete = all(sorted(seqs) == list(range(1, max(seqs) + 1)) for seqs in by_sender.values())
    expected: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    states: dict[str, str] = {}
    for row in truth_members:
        expected[row["member"]] += int(row["expected"])
        delivered[row["member"]] += int(row["delivered"])
        states[row["member"]] = row["state"]
    members = set(due) | set(expected)
    return {
        "errors": [r["error"] for r in records if r.get("error")],
        "consistent": consistent,
        "messages": len(messages),
        "distinct_messages": len(set(messages)),
        "complete": complete,
        "due": sum(due.values()),
        "members": len(members),
        "expected_differs": sorted((m, due[m], expected[m]) for m in members if due[m] != expected[m]),
        "delivered_differs": sorted((m, due[m], delivered[m], states.get(m, "")) for m in members
                                    if due[m] != delivered[m]),  # fmt: skip
    }


class RoomObserver:
    """The observer in its own process: ``start`` returns once it is in its rooms, ``stop`` returns its record."""

    def __init__(self, workdir: Path, host: str, port: int, domain: str, rooms: list[str], nick: str = "observer",
                 max_seconds: float = 1800) -> None:  # fmt: skip
        self.dir = Path(workdir) / f"observer-{nick}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out, self.ready, self.stop_file = self.dir / "out.json", self.dir / "ready", self.dir / "stop"
        for path in (self.out, self.ready, self.stop_file):
            path.unlink(missing_ok=True)
        self.config = self.dir / "config.json"
        self.config.write_text(json.dumps({
            "host": host, "port": port, "jid": domain, "rooms": rooms, "nick": nick, "max_seconds": max_seconds,
            "ready_file": str(self.ready), "stop_file": str(self.stop_file), "out": str(self.out),
        }))  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> RoomObserver:
        with open(self.dir / "stderr.txt", "wb") as stderr:
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=stderr)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the room observer did not join: {self.stderr()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        """Tell the observer to leave; its record: {"events": [...], "error": None or why it failed}."""
        self.stop_file.write_text("stop")
        try:
            if self.proc is not None:
                self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        if not self.out.exists():
            raise RuntimeError(f"the room observer wrote nothing: {self.stderr()}")
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        path = self.dir / "stderr.txt"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no stderr)"


if __name__ == "__main__":
    main(sys.argv[1])
