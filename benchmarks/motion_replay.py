"""Real Converse pages' own frames, replayed at their own times without a browser, beside a profile's viewers.

    python benchmarks/motion_replay.py COST.json [--run N] [--client converse-14] [--fast] [--json FILE]

COST.json is what ``locust-xmpp fidelity cost --json`` wrote: every frame each real page sent and received,
with its time. For run N of it (default: the first), on two fresh labs of the same server at the same time:

- the replay: one WebSocket per page (websocket-client, one greenlet reading it), opened when the page sent
  its first frame and sending every frame the page sent, each at the page's own time and not before as many
  frames (other than stream-management acks) had come in before it (times are to the millisecond: what came
  in the same millisecond is not waited for; a new stream waits for the SASL success, a frame naming the
  page's JID for the bind result), waiting at most ``STALL`` s more. The page's JID and room
  become the new session's and room; an ack ``<a h>`` carries the stanzas received since ``<enabled/>``; an
  answer to a request of the server (its caps query, its ping) carries the id of the server's request in the
  same position. ``--fast`` drops the page's times and keeps only the order (each frame leaves once the
  frames it came after are in);
- the profile's viewers, side by side as ``fidelity cost`` runs them (xmpp_user.fidelity.motion.Beside),
  viewer k starting when replayed page k sends its first frame.

Prints both servers' CPU per join over the window (as long as the pages' was: from the first page's open to
the end of the stay, or to the last page's join if that came later) and their ratio. What it separates: the
replay is the pages' traffic without their browser (the same frames, the same times, the same transport as
the viewers), so replay over viewers is what the profile misses in the traffic, and ``fidelity cost``'s real
over viewers beyond it is what the browser adds (its process on the same cores, its network stack).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import locust  # noqa: F401  (gevent's monkey patching, before any socket is made)
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xmpp_user.fidelity import motion  # noqa: E402
from xmpp_user.fidelity.run import _lab  # noqa: E402

STALL = 3.0
"""Seconds a frame waits beyond its time for the frames it came after (the server may answer less)."""
_STANZA = re.compile(r"^<(message|presence|iq)[\s>/]")
_ACK = re.compile(r"^<(r|a)[\s>/]")
_REQUEST = re.compile(r'^<iq [^>]*type=["\'](get|set)["\']')
_ID = re.compile(r' id=["\']([^"\']+)["\']')


class Replayed:
    """One page's frames, sent again on a new session; counts what it sent, received and waited for."""

    def __init__(self, page: dict[str, Any], room: tuple[str, str], fast: bool) -> None:
        self.page, self.fast = page, fast
        self.old_room, self.new_room = room
        self.jid: str = page["jid"]
        self.got: list[str] = []
        self.arrived = gevent.event.Event()
        self.stalls = 0
        recorded = page["received"]
        self.before = [sum(1 for t, f in recorded if t < sent_at and not _ACK.match(f)) for sent_at, _ in page["sent"]]
        self.server_ids = [m.group(1) for _, f in recorded if _REQUEST.match(f) and (m := _ID.search(f))]

    def run(self, url: str, t0: float, end: float, started: Any) -> None:
        sent = self.page["sent"]
        gevent.sleep(max(0.0, t0 + sent[0][0] - time.monotonic()))
        ws = websocket.create_connection(url, subprotocols=["xmpp"], timeout=30)
        reader = gevent.spawn(self._read, ws)
        started(str(self.page["position"]))
        try:
            opens = 0
            for (at, frame), before in zip(sent, self.before, strict=True):
                opens += frame.startswith("<open")
                gate = self._gate(frame, opens)
                self._wait(t0 + (sent[0][0] if self.fast else at), before, gate)
                ws.send(self._rewrite(frame))
            gevent.sleep(max(0.0, end - time.monotonic()))
        finally:
            ws.abort()
            reader.kill()

    def _read(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                frame = ws.recv()
            except Exception:  # noqa: BLE001  (the socket closed: the page is done)
                return
            self.got.append(frame)
            if "xmpp-bind" in frame and "<jid>" in frame:
                self.jid = frame.split("<jid>", 1)[1].split("</jid>", 1)[0]
            self.arrived.set()

    def _gate(self, frame: str, opens: int) -> str | None:
        """What must have come in before ``frame`` whatever the times say: the SASL success before the stream is
        opened again, the bound JID before a frame that names it."""
        if frame.startswith("<open") and opens > 1:
            return "<success"
        if self.page["jid"].split("/")[0] in frame:
            return "bound"
        return None

    def _passed(self, gate: str | None) -> bool:
        if gate == "bound":
            return self.jid != self.page["jid"]
        return gate is None or any(f.startswith(gate) for f in self.got)

    def _wait(self, at: float, before: int, gate: str | None) -> None:
        deadline = at + STALL
        while True:
            now = time.monotonic()
            if now >= at and self._passed(gate) and sum(1 for f in self.got if not _ACK.match(f)) >= before:
                return
            if now >= deadline:
                self.stalls += 1
                return
            self.arrived.clear()
            self.arrived.wait(min(0.05, max(0.001, at - now)))

    def _rewrite(self, frame: str) -> str:
        old, new = self.page["jid"], self.jid
        frame = frame.replace(old, new).replace(old.split("/")[0], new.split("/")[0]).replace(self.old_room,
                                                                                             self.new_room)  # fmt: skip
        if frame.startswith("<a "):
            on = next((i for i, f in enumerate(self.got) if f.startswith("<enabled")), len(self.got))
            return f'<a h="{sum(1 for f in self.got[on:] if _STANZA.match(f))}" xmlns="urn:xmpp:sm:3"/>'
        if frame.startswith("<iq") and ('type="result"' in frame or 'type="error"' in frame):
            m = _ID.search(frame)
            if m and m.group(1) in self.server_ids:
                k = self.server_ids.index(m.group(1))
                live = [n.group(1) for f in self.got if _REQUEST.match(f) and (n := _ID.search(f))]
                if k < len(live):
                    frame = frame.replace(m.group(1), live[k], 1)
        return frame


def replay_run(real: dict[str, Any], profile: str, fast: bool) -> dict[str, Any]:
    joins, interval, stay = real["joins"], real["interval"], real["stay"]
    with tempfile.TemporaryDirectory(prefix="locust-xmpp-replay-") as root:
        names = iter(("replay", "viewers"))
        labs = motion.side_by_side(lambda: _lab(real["server"], f"{root}/{next(names)}"), profile, joins, interval,
                                   stay)  # fmt: skip
        with labs as (lab, room, beside):
            pages = [Replayed(p, (real["room"], room), fast) for p in real["pages"]]
            cpu0 = lab.cpu_seconds()
            t0 = time.monotonic()
            beside.signal("go")
            end = t0 + real["window_seconds"]  # as long as the pages' window was (it waits for late joins)
            greenlets = [gevent.spawn(p.run, lab.websocket_url, t0, end, beside.signal) for p in pages]
            gevent.sleep(max(0.0, end - time.monotonic()))
            cpu = lab.cpu_seconds() - cpu0
            gevent.joinall(greenlets, timeout=10)
            for g in greenlets:
                if g.exception is not None:
                    raise SystemExit(f"a replayed page failed: {g.exception}")
            viewers = beside.result(timeout=motion.JOIN_TIMEOUT + 30)
    replay_ms = round(cpu * 1000 / joins, 1)
    return {"server": real["server"], "joins": joins, "fast": fast, "recorded_real_ms_per_join": real["cpu_seconds"]
            * 1000 / joins, "replay_ms_per_join": replay_ms, "viewers_ms_per_join": viewers.ms_per_join,
            "ratio": round(replay_ms / viewers.ms_per_join, 3) if viewers.cpu_seconds else None,
            "frames_sent": sum(len(p.page["sent"]) for p in pages), "frames_received": sum(len(p.got) for p in pages),
            "stalls": sum(p.stalls for p in pages)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("cost_json", type=Path, help="the JSON of  locust-xmpp fidelity cost --json")
    parser.add_argument("--run", type=int, default=1, help="which run of it (default 1)")
    parser.add_argument("--client", default="converse-14", help="the viewers' profile (default converse-14)")
    parser.add_argument("--fast", action="store_true", help="keep the pages' order, not their times")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        runs = json.loads(args.cost_json.read_text())["runs"]
        real = runs[args.run - 1]["real"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        parser.error(f"{args.cost_json}: no run {args.run} with real pages in it ({exc})")
    result = replay_run(real, args.client, args.fast)
    print(f"{result['server']}, {result['joins']} pages replayed{' (order only)' if args.fast else ''}: "
          f"{result['replay_ms_per_join']:.1f} ms/join; {args.client} viewers beside them "
          f"{result['viewers_ms_per_join']:.1f} ms/join; replay/viewers {result['ratio']}; "
          f"{result['frames_sent']} frames sent, {result['frames_received']} received, {result['stalls']} waits "
          f"cut at {STALL:g} s (with the browser: {result['recorded_real_ms_per_join']:.1f} ms/join)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
