"""Client cost against the lab Prosody: CPU per session and per stanza, memory per idle user.

    python benchmarks/session_cost.py [--sessions 300] [--idle 1000] [--stanzas 3000] [--json FILE]

Starts a private lab Prosody (or uses --url and --server-pid of a running one), runs the same
work through our client, and compares the client's CPU with Prosody's for that work. The
budgets (one core): at most 10 ms of client CPU per full session (connect, auth, bind, join,
5 messages, leave, close), at most 30 KiB of client memory per idle connected user, and the
client cheaper than the server. Numbers are ratios and per-unit costs, never assertions in
the test suite: timing belongs here.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402

from gevent.pool import Pool  # noqa: E402

from xmpp_user.session.client import XmppClient  # noqa: E402

BUDGET_SESSION_MS = 10.0
BUDGET_IDLE_KIB = 30.0
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Failures:
    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def fire(self, exception=None, **_kw) -> None:
        if exception is not None:
            self.count += 1
            self.first = self.first or f"{_kw.get('name')}: {exception}"


def full_session(url: str, events: Failures, n: int) -> None:
    client = XmppClient(url, "localhost", request_event=events)
    room = f"bench{n}@muc.localhost"
    try:
        client.connect()
        client.muc_join(room, "bench")
        for i in range(5):
            client.groupchat(room, f"message {i}")
        client.muc_leave(room)
    except Exception:  # noqa: BLE001 - recorded by the event hook
        pass
    finally:
        client.close()


def measure(label: str, server_pid: int, work) -> tuple[float, float, float]:
    """(client CPU s, server CPU s, wall s) spent on ``work``."""
    gc.collect()
    c0, s0, t0 = cpu_self(), cpu_of(server_pid), time.perf_counter()
    work()
    time.sleep(0.3)  # let the server finish what it was sent
    return cpu_self() - c0, cpu_of(server_pid) - s0, time.perf_counter() - t0


def bench_sessions(url: str, pid: int, count: int, concurrency: int) -> dict:
    events = Failures()
    pool = Pool(concurrency)
    client_s, server_s, wall = measure("sessions", pid, lambda: pool.map(lambda n: full_session(url, events, n),
                                                                          range(count)))
    return {
        "sessions": count,
        "failures": events.count,
        "first_failure": events.first,
        "client_ms_per_session": client_s / count * 1000,
        "server_ms_per_session": server_s / count * 1000,
        "wall_s": wall,
    }


def bench_stanzas(url: str, pid: int, count: int) -> dict:
    """One sender, one other occupant: each message is sent once and delivered twice."""
    events = Failures()
    room = "benchstanzas@muc.localhost"
    sender = XmppClient(url, "localhost", request_event=events)
    listener = XmppClient(url, "localhost", request_event=events)
    sender.connect()
    listener.connect()
    sender.muc_join(room, "sender")
    listener.muc_join(room, "listener")

    def work() -> None:
        window = []
        for i in range(count):
            window.append(sender.groupchat(room, f"stanza {i}", wait=False))
            if len(window) == 50:
                sender.wait_all(window)
                window = []
        sender.wait_all(window)

    client_s, server_s, wall = measure("stanzas", pid, work)
    sender.close()
    listener.close()
    return {
        "messages": count,
        "failures": events.count,
        "client_us_per_message": client_s / count * 1e6,
        "server_us_per_message": server_s / count * 1e6,
        "messages_per_s": count / wall,
    }


def bench_idle(url: str, pid: int, count: int) -> dict:
    events = Failures()
    gc.collect()
    before, server_before = rss_kib(), rss_kib(pid)
    clients = [XmppClient(url, "localhost", request_event=events) for _ in range(count)]
    Pool(50).map(lambda c: c.connect(), clients)
    gc.collect()
    time.sleep(0.5)
    after, server_after = rss_kib(), rss_kib(pid)
    connected = sum(c.connected for c in clients)
    Pool(50).map(lambda c: c.close(), clients)
    return {
        "connected": connected,
        "failures": events.count,
        "client_kib_per_user": (after - before) / max(1, connected),
        "server_kib_per_user": (server_after - server_before) / max(1, connected),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--stanzas", type=int, default=3000)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start a lab)")
    parser.add_argument("--server-pid", type=int, help="PID of that server, for its CPU and memory")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a budget is exceeded")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        if args.url:
            if not args.server_pid:
                parser.error("--url needs --server-pid")
            url, pid = args.url, args.server_pid
        else:
            from xmpp_user.lab import Lab
            from xmpp_user.lab.lab import free_port

            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="locust-xmpp-bench-"))
            lab = stack.enter_context(Lab(run_dir, c2s_port=free_port(), http_port=free_port(), storage="memory"))
            url, pid = lab.websocket_url, lab.pid
        full_session(url, Failures(), -1)  # warm up imports and caches
        results = {
            "sessions": bench_sessions(url, pid, args.sessions, args.concurrency),
            "stanzas": bench_stanzas(url, pid, args.stanzas),
            "idle": bench_idle(url, pid, args.idle),
        }

    s, m, i = results["sessions"], results["stanzas"], results["idle"]
    checks = [
        ("client CPU per full session", f"{s['client_ms_per_session']:.2f} ms", f"<= {BUDGET_SESSION_MS:g} ms",
         s["client_ms_per_session"] <= BUDGET_SESSION_MS),
        ("server CPU per full session", f"{s['server_ms_per_session']:.2f} ms", "", None),
        ("client/server CPU, sessions", f"{s['client_ms_per_session'] / max(1e-9, s['server_ms_per_session']):.2f}",
         "< 1", s["client_ms_per_session"] < s["server_ms_per_session"]),
        ("client CPU per message", f"{m['client_us_per_message']:.0f} us", "", None),
        ("server CPU per message", f"{m['server_us_per_message']:.0f} us", "", None),
        ("client/server CPU, messages", f"{m['client_us_per_message'] / max(1e-9, m['server_us_per_message']):.2f}",
         "< 1", m["client_us_per_message"] < m["server_us_per_message"]),
        ("client memory per idle user", f"{i['client_kib_per_user']:.1f} KiB", f"<= {BUDGET_IDLE_KIB:g} KiB",
         i["client_kib_per_user"] <= BUDGET_IDLE_KIB),
        ("server memory per idle user", f"{i['server_kib_per_user']:.1f} KiB", "", None),
    ]
    print(f"\n{s['sessions']} sessions ({s['failures']} failures), {m['messages']} messages "
          f"({m['failures']} failures), {i['connected']} idle users ({i['failures']} failures)\n")
    print(f"| {'measure':32} | {'value':>12} | {'budget':>12} | verdict |")
    print(f"|{'-' * 34}|{'-' * 14}|{'-' * 14}|---------|")
    for name, value, budget, ok in checks:
        verdict = "" if ok is None else ("ok" if ok else "OVER")
        print(f"| {name:32} | {value:>12} | {budget:>12} | {verdict:7} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    failed = any(ok is False for *_, ok in checks) or s["failures"] or m["failures"] or i["failures"]
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
