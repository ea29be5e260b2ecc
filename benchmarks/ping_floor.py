"""The floor under a ping's generator CPU: what gevent, the system calls, the parse and Locust's stats cost alone.

    python benchmarks/ping_floor.py [--users 1000] [--interval 1] [--window 20] [--json FILE]

A prototype, to say what replacing a part of the generator would gain: it logs ``--users`` sessions in
to a private lab Prosody (anonymously, no stream management) with a minimal client of its own, one
greenlet each, then makes them ping every ``--interval`` seconds through four ever fuller paths, each
measured over ``--window`` seconds (this process's CPU from ``getrusage``, the server's from ``/proc``,
divided by the pings answered in the window):

- ``raw``: a greenlet sends the ping's WebSocket frame (built once) and waits for the answer's bytes,
  nothing read from them: gevent's loop and greenlet switches, the two system calls, the server's work;
- ``parsed``: the answer's frame is cut out and parsed into an element (``xml.etree``, as the core does);
- ``stats``: plus Locust's request event fired with the round trip (its statistics entry logged, as a
  ``XmppUser``'s request is);
- ``ids``: plus a new id per ping, its waiting entry, and the answer matched to it by id.

What the project's own users cost per ping through real Locust is ``benchmarks/generator_cost.py``'s
``ping`` kind (README, "Cost of the generator"): the difference between the two is what the session,
the client and the protocol core add; this floor is what no change to them can go below with gevent and
Locust. Other work on the machine raises every figure alike: read ratios within one run.

Memory, the same way: the process's RSS before the logins, once the sessions are open (a socket and
websocket-client's object each), and once each has an idle greenlet asleep in it, divided by the sessions.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import websocket  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from locust.env import Environment  # noqa: E402

from xmpp_user.lab.lab import Lab, free_port, process_cpu_seconds, process_rss_bytes  # noqa: E402
from xmpp_user.session.transport import text_frame  # noqa: E402

PATHS = ("raw", "parsed", "stats", "ids")
OPEN = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>"
AUTH = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'>=</auth>"
BIND = "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
PING = "<iq xmlns='jabber:client' type='get' id='{}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


def login(url: str) -> websocket.WebSocket:
    """A bound session over a WebSocket (websocket-client does the handshake and these few frames)."""
    ws = websocket.create_connection(url, header=["Sec-WebSocket-Protocol: xmpp"], timeout=30)
    for send, answers in ((OPEN, 2), (AUTH, 1), (OPEN, 2), (BIND, 1)):
        ws.send(send)
        for _ in range(answers):
            reply = ws.recv()
            if "failure" in reply or "type='error'" in reply or 'type="error"' in reply:
                raise RuntimeError(f"login refused: {reply[:200]}")
    ws.settimeout(None)
    return ws


def payload(data: bytes) -> bytes:
    """The text of the unmasked server frame that ``data`` holds (one frame, as a ping's answer is)."""
    length, start = data[1] & 0x7F, 2
    if length == 126:
        length, start = int.from_bytes(data[2:4], "big"), 4
    return data[start : start + length]


class Pinger:
    def __init__(self, ws: websocket.WebSocket, env: Environment) -> None:
        self.sock = ws.sock
        self.env = env
        self.frame = text_frame(PING.format("p"))
        self.counter = 0
        self.waiting: dict[str, float] = {}
        self.answered = 0

    def ping(self, path: str) -> None:
        started = time.perf_counter()
        if path == "ids":
            self.counter += 1
            id_ = f"p{self.counter}"
            self.waiting[id_] = started
            self.sock.sendall(text_frame(PING.format(id_)))
        else:
            self.sock.sendall(self.frame)
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the session")
        if path != "raw":
            element = ET.XML(payload(data))
            if path == "ids":
                started = self.waiting.pop(element.get("id"))
            if path in ("stats", "ids"):
                self.env.events.request.fire(request_type="xmpp", name="ping", response_length=len(data),
                                             response_time=(time.perf_counter() - started) * 1000,
                                             exception=None, context={})  # fmt: skip
        self.answered += 1

    def run(self, path: str, interval: float, until: float, offset: float) -> None:
        gevent.sleep(offset)
        while time.monotonic() < until:
            self.ping(path)
            gevent.sleep(interval)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(pingers: list[Pinger], path: str, interval: float, window: float, server_pid: int) -> dict:
    settle = interval + 1.0
    until = time.monotonic() + settle + window + interval
    step = interval / len(pingers)
    greenlets = [gevent.spawn(p.run, path, interval, until, n * step) for n, p in enumerate(pingers)]
    gevent.sleep(settle)
    answered0, ours0, server0 = sum(p.answered for p in pingers), cpu(), process_cpu_seconds(server_pid)
    gevent.sleep(window)
    answered = sum(p.answered for p in pingers) - answered0
    ours, server = cpu() - ours0, process_cpu_seconds(server_pid) - server0
    gevent.joinall(greenlets, timeout=interval + 30, raise_error=True)
    return {"path": path, "pings": answered, "generator_ms_per_ping": round(ours / answered * 1000, 4),
            "server_ms_per_ping": round(server / answered * 1000, 4),
            "ratio": round(ours / server, 3) if server else None}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a user's pings")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per path")
    parser.add_argument("--json", help="write the measurement to this file")
    args = parser.parse_args()
    if not (1 <= args.users <= 10000 and 0.1 <= args.interval <= 60 and 1 <= args.window <= 600):
        parser.error("--users 1..10000, --interval 0.1..60, --window 1..600")
    env = Environment()
    env.create_local_runner()  # hooks Locust's statistics to the request event, as in a run
    with tempfile.TemporaryDirectory(prefix="locust-xmpp-floor-") as root:
        lab = Lab(Path(root) / "lab", c2s_port=free_port(), http_port=free_port(), storage="memory")
        reason = lab.unavailable()
        if reason:
            print(f"ping_floor: {reason}", file=sys.stderr)
            return 2
        lab.up()
        try:
            rss0 = process_rss_bytes(os.getpid())
            sessions = [login(lab.websocket_url) for _ in range(args.users)]
            pingers = [Pinger(ws, env) for ws in sessions]
            gevent.sleep(1)
            rss1 = process_rss_bytes(os.getpid())
            sleepers = [gevent.spawn(gevent.sleep, 3600) for _ in sessions]
            gevent.sleep(1)
            rss2 = process_rss_bytes(os.getpid())
            gevent.killall(sleepers)
            memory = {"session_kib": round((rss1 - rss0) / 1024 / args.users, 2),
                      "with_greenlet_kib": round((rss2 - rss0) / 1024 / args.users, 2)}  # fmt: skip
            rows = [measure(pingers, path, args.interval, args.window, lab.pid) for path in PATHS]
            for ws in sessions:
                ws.close()
        finally:
            lab.down()
    result = {
        "machine": {"cores": os.cpu_count(), "system": platform.platform(), "python": platform.python_version()},
        "users": args.users, "interval": args.interval, "window": args.window,
        "load_average_after": os.getloadavg(), "paths": rows, "memory_per_session": memory,
    }  # fmt: skip
    print(f"{'path':8} {'pings':>7} {'generator ms/ping':>18} {'server ms/ping':>15} {'ratio':>6}")
    for row in rows:
        print(f"{row['path']:8} {row['pings']:7d} {row['generator_ms_per_ping']:18.4f} "
              f"{row['server_ms_per_ping']:15.4f} {row['ratio']!s:>6}")  # fmt: skip
    print(f"memory per idle session: {memory['session_kib']} KiB, "
          f"{memory['with_greenlet_kib']} KiB with a greenlet asleep in it")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
