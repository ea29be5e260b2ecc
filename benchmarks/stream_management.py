"""What stream management (XEP-0198) costs the lab Prosody in one busy room, against the same run without it.

    python benchmarks/stream_management.py [--users 500] [--rate 3] [--duration 60] [--modes sm,no-sm]
                                           [--prosody-option smacks_max_unacked_stanzas=10 ...]

For each mode the benchmark starts its own lab Prosody (memory storage: the room archive then
costs no disk I/O, so the CPU measured is routing and stream management, and a fresh server per
mode starts from the same state), connects USERS anonymous users in batches with our XmppClient,
all in this one gevent process, and joins them to one room. Once Prosody is idle again, users
take turns sending marked groupchat messages (``xmpp_user.scenario.talk``) at RATE messages per second in
total, so that the room delivers about RATE x USERS stanzas per second, for DURATION seconds;
then the benchmark waits up to DRAIN seconds for the deliveries still on their way. The default
rate, 3 messages/s to 500 users (1,500 deliveries/s), is where on our 2-core machines the lab
Prosody keeps up without stream management (about 60 % of its core) and falls behind with it; at
5 messages/s it is at its limit without stream management too.

Reported per mode, over the same window for both processes (from the first send to the last
delivery or the end of the drain): CPU seconds of Prosody (from /proc/PID/stat) and of this
process per delivered stanza, the CPU % of each while sending (one process is at most 100 %,
one core: the busiest second is shown too, since the one that reaches 100 % is the one that
limits), the other processes' share of the machine's CPU in the same window (this benchmark
does not own the machine), delivery latency percentiles, messages lost (never delivered) and
late (delivered later than --late-ms), how late the sender itself sent (a saturated generator
falls behind its schedule) and how late this process's event loop woke up. For stream
management: ``<r/>`` received and ``<a/>`` sent per session, the time between reading an
``<r/>`` and sending its ``<a/>``, and Prosody's own view from its metrics (acks received,
stanzas queued and acked, sessions that ended).

Only loopback; only the labs started here are stopped, by their PID.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from xmpp_user.lab.lab import free_port, process_cpu_seconds, process_rss_bytes  # noqa: E402
from xmpp_user.lab.prosody import ProsodyLab  # noqa: E402
from xmpp_user.run.truth import Tally  # noqa: E402
from xmpp_user.scenario.talk import DELIVERY, Talker  # noqa: E402
from xmpp_user.session.client import XmppClient, XmppRequestFailed  # noqa: E402
from xmpp_user.session.transport import WebSocketTransport  # noqa: E402

ROOM = "smbench@muc.localhost"
_TICKS = os.sysconf("SC_CLK_TCK")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- measuring -----------------------------------------------------------------------------------


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


class Probe:
    """Counts what one run's clients see, through the Locust-style request event and the transport."""

    def __init__(self) -> None:
        self.delivery_ms: list[float] = []
        self.reflection_ms: list[float] = []
        self.failures: Counter[str] = Counter()
        self.first_failure: dict[str, str] = {}
        self.r_received: Counter[int] = Counter()
        """``<r/>`` frames read, per transport (one per session)."""
        self.a_sent: Counter[int] = Counter()
        self.r_to_a_ms: list[float] = []
        """Time from reading an ``<r/>`` to having sent the ``<a/>`` that answers it."""
        self.recording = False

    def fire(self, request_type=None, name="", response_time=0.0, exception=None, **_kw) -> None:
        if exception is not None:
            self.failures[name] += 1
            self.first_failure.setdefault(name, str(exception))
        elif not self.recording:
            return
        elif name == DELIVERY:
            self.delivery_ms.append(response_time)
        elif name == "message":
            self.reflection_ms.append(response_time)


PROBE = Probe()


def _install_transport_probe() -> None:
    """Wrap the transport to see the stream management frames on the wire (both modes pay the wrapper): each
    message the connection's reading takes (``next_message``), and each frame written, alone or in a burst."""
    next_message, send, send_all = WebSocketTransport.next_message, WebSocketTransport.send, WebSocketTransport.send_all
    perf = time.perf_counter
    r_at: dict[int, float] = {}
    """When each transport last read an ``<r/>`` not answered yet (the transport has slots: no attribute of ours)."""

    def probed_next_message(self: WebSocketTransport) -> str | None:
        frame = next_message(self)
        if frame is not None and frame.startswith("<r "):
            r_at[id(self)] = perf()
            if PROBE.recording:
                PROBE.r_received[id(self)] += 1
        return frame

    def sent(self: WebSocketTransport, frame: str) -> None:
        if frame.startswith("<a "):
            read_at = r_at.pop(id(self), None)
            if PROBE.recording:
                PROBE.a_sent[id(self)] += 1
            if read_at is not None and PROBE.recording:
                PROBE.r_to_a_ms.append((perf() - read_at) * 1000.0)

    def probed_send(self: WebSocketTransport, frame: str) -> None:
        send(self, frame)
        sent(self, frame)

    def probed_send_all(self: WebSocketTransport, frames: list[str]) -> None:
        send_all(self, frames)
        for frame in frames:
            sent(self, frame)

    WebSocketTransport.next_message = probed_next_message  # type: ignore[method-assign]
    WebSocketTransport.send = probed_send  # type: ignore[method-assign]
    WebSocketTransport.send_all = probed_send_all  # type: ignore[method-assign]


def percentiles(values: list[float], points=(50, 90, 99)) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in points} | {"max": float("nan")}
    ordered = sorted(values)
    out = {f"p{p}": ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] for p in points}
    out["max"] = ordered[-1]
    return out


def scrape_metrics(lab: ProsodyLab) -> dict[str, float]:
    """Prosody's openmetrics samples of the families we read (mod_smacks, c2s), summed over labels;
    empty if a busy Prosody does not answer within a minute."""
    try:
        with _OPENER.open(lab.metrics_url, timeout=60) as response:
            text = response.read().decode()
    except OSError as exc:
        print(f"metrics not read: {exc}", file=sys.stderr)
        return {}
    wanted = re.compile(r"^(prosody_mod_(?:smacks|c2s)__[a-z_]+?)(?:\{[^}]*\})? ([0-9.e+-]+)$")
    out: dict[str, float] = Counter()
    for line in text.splitlines():
        m = wanted.match(line)
        if m:
            out[m.group(1)] += float(m.group(2))
    return dict(out)


class GcPauses:
    """Time this process spends in the cycle collector: a pause stops every greenlet, acks included."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._start) * 1000.0)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class Sampler:
    """Per-second CPU % of Prosody and of this process, and how late this process's loop wakes up."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.server_pct: list[float] = []
        self.client_pct: list[float] = []
        self.loop_lag_ms: list[float] = []
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._cpu), gevent.spawn(self._lag)]

    def stop(self) -> None:
        gevent.killall(self._greenlets)

    def _cpu(self) -> None:
        t, s, c = time.perf_counter(), process_cpu_seconds(self.pid), own_cpu()
        while True:
            gevent.sleep(1.0)
            t2, s2, c2 = time.perf_counter(), process_cpu_seconds(self.pid), own_cpu()
            self.server_pct.append(100 * (s2 - s) / (t2 - t))
            self.client_pct.append(100 * (c2 - c) / (t2 - t))
            t, s, c = t2, s2, c2

    def _lag(self) -> None:
        while True:
            t = time.perf_counter()
            gevent.sleep(0.05)
            self.loop_lag_ms.append(max(0.0, (time.perf_counter() - t - 0.05) * 1000.0))


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the run --------------------------------------------------------------------------------------


def connect_user(url: str, n: int, sm: bool, tally: Tally) -> tuple[XmppClient, Talker] | None:
    client = XmppClient(url, "localhost", request_event=PROBE, stream_management=sm, timeout=60, connect_timeout=30)
    talker = Talker(client, f"u{n}", request_event=PROBE, tally=tally)
    try:
        client.connect()
        talker.join(ROOM, f"user{n}", history_max=0)
    except XmppRequestFailed:
        client.abort()
        return None
    return client, talker


def wait_idle(pid: int, below_pct: float = 5.0, limit: float = 120.0) -> float:
    """Wait until Prosody uses less than ``below_pct`` % CPU over half a second; returns the wait."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        c0 = process_cpu_seconds(pid)
        gevent.sleep(0.5)
        if 100 * (process_cpu_seconds(pid) - c0) / 0.5 < below_pct:
            break
    return time.perf_counter() - start


def send_schedule(talkers: list[Talker], rate: float, duration: float, lags_ms: list[float]) -> int:
    """Users take turns: message i leaves at start + i/rate; returns how many left."""
    start = time.perf_counter()
    count = int(rate * duration)
    sent = 0
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        lags_ms.append(max(0.0, (time.perf_counter() - due) * 1000.0))
        talker = talkers[i % len(talkers)]
        try:
            talker.say(ROOM, f"load test message {i}", wait=False)
            sent += 1
        except XmppRequestFailed:
            talker.skip()
    return sent


def run_mode(args: argparse.Namespace, sm: bool) -> dict:
    global PROBE
    PROBE = Probe()
    tally = Tally()
    mode = "sm" if sm else "no-sm"
    run_dir = tempfile.mkdtemp(prefix=f"locust-xmpp-sm-{mode}-")
    lab = SmLab(run_dir, c2s_port=free_port(), http_port=free_port(), storage="memory", log_level=args.log_level)
    lab.extra = dict(args.prosody_option)
    lab.up()
    pid = lab.pid
    assert pid is not None
    result: dict = {"mode": mode, "users": args.users, "rate": args.rate, "duration": args.duration}
    users: list[tuple[XmppClient, Talker]] = []
    try:
        t0 = time.perf_counter()
        pool = Pool(args.batch)
        users = [u for u in pool.imap_unordered(lambda n: connect_user(lab.websocket_url, n, sm, tally),
                                                range(args.users)) if u is not None]
        result["joined"] = len(users)
        result["join_s"] = time.perf_counter() - t0
        result["settle_s"] = wait_idle(pid)
        # What the setup built lives to the end: out of the cycle collector's way, so that its full
        # collections stay short and do not stop the readers (and their acks) in the middle of the window.
        gc.collect()
        gc.freeze()
        progress(f"{len(users)} users joined in {result['join_s']:.1f} s; sending")
        talkers = [t for _, t in users]
        metrics_before = scrape_metrics(lab)

        PROBE.recording = True
        sampler = Sampler(pid)
        send_lags: list[float] = []
        w0, s0, c0, m0 = time.perf_counter(), process_cpu_seconds(pid), own_cpu(), machine_busy()
        sampler.start()
        gc_pauses = GcPauses().__enter__()
        sent = send_schedule(talkers, args.rate, args.duration, send_lags)
        w1, s1, c1, m1 = time.perf_counter(), process_cpu_seconds(pid), own_cpu(), machine_busy()
        sending_samples = (list(sampler.server_pct), list(sampler.client_pct))
        server_rss_mib = process_rss_bytes(pid) / 2**20
        # Drain: until every expected delivery has arrived, or the limit.
        drain_end = time.perf_counter() + args.drain
        while time.perf_counter() < drain_end:
            summary = tally.summary()
            if summary["confirmed"] + summary["unconfirmed"] >= sent and summary["delivered"] >= summary["expected"]:
                break
            gevent.sleep(0.1)
        progress(f"sending done; drained in {time.perf_counter() - w1:.1f} s")
        w2, s2, c2 = time.perf_counter(), process_cpu_seconds(pid), own_cpu()
        sampler.stop()
        gc_pauses.__exit__()
        PROBE.recording = False
        metrics_after = scrape_metrics(lab)
        connected_at_end = sum(client.connected for client, _ in users)
        last_errors = Counter(client.last_error for client, _ in users if not client.connected)

        summary = tally.summary()
        delivered = summary["delivered"]
        window = w2 - w0
        result.update(
            sent=sent,
            summary=summary,
            late=sum(1 for ms in PROBE.delivery_ms if ms > args.late_ms),
            send_s=w1 - w0,
            drain_s=w2 - w1,
            server_rss_mib=server_rss_mib,
            server_cpu_s=s2 - s0,
            client_cpu_s=c2 - c0,
            server_us_per_delivery=1e6 * (s2 - s0) / max(1, delivered),
            client_us_per_delivery=1e6 * (c2 - c0) / max(1, delivered),
            server_pct_sending=100 * (s1 - s0) / (w1 - w0),
            client_pct_sending=100 * (c1 - c0) / (w1 - w0),
            server_pct_window=100 * (s2 - s0) / window,
            client_pct_window=100 * (c2 - c0) / window,
            others_pct_sending=100 * ((m1 - m0) - (s1 - s0) - (c1 - c0)) / (w1 - w0),
            server_pct_peak=max(sending_samples[0], default=float("nan")),
            client_pct_peak=max(sending_samples[1], default=float("nan")),
            deliveries_per_s=delivered / window,
            delivery_ms=percentiles(PROBE.delivery_ms),
            reflection_ms=percentiles(PROBE.reflection_ms),
            send_lag_ms=percentiles(send_lags, (50, 99)),
            loop_lag_ms=percentiles(sampler.loop_lag_ms, (50, 99)),
            gc_pause_ms=percentiles(gc_pauses.pauses_ms, (99,)) | {"total": sum(gc_pauses.pauses_ms)},
            r_per_session=sum(PROBE.r_received.values()) / len(users),
            a_per_session=sum(PROBE.a_sent.values()) / len(users),
            r_max_session=max(PROBE.r_received.values(), default=0),
            r_per_delivery=sum(PROBE.r_received.values()) / max(1, delivered),
            r_to_a_ms=percentiles(PROBE.r_to_a_ms, (50, 99)),
            failures=dict(PROBE.failures),
            first_failure=PROBE.first_failure,
            connected_at_end=connected_at_end,
            last_errors=dict(last_errors),
            server_metrics={k: metrics_after.get(k, 0) - metrics_before.get(k, 0) for k in metrics_after},
            server_per_second=[round(x) for x in sending_samples[0]],
            client_per_second=[round(x) for x in sending_samples[1]],
        )
        return result
    finally:
        gc.unfreeze()
        Pool(args.batch).map(lambda u: u[0].close(1.0), users)
        lab.down()
        if args.keep_logs:
            result["run_dir"] = run_dir
        else:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


class SmLab(ProsodyLab):
    """The lab Prosody with a few global options of its own (e.g. ``smacks_max_unacked_stanzas``)."""

    extra: dict[str, str] = {}

    def render_config(self) -> str:
        lines = "".join(f"{key} = {value}\n" for key, value in self.extra.items())
        return lines + super().render_config()


# -- report ---------------------------------------------------------------------------------------


def report(results: list[dict], args: argparse.Namespace) -> None:
    def fmt(v, spec=".0f"):
        return "-" if v is None or v != v else format(v, spec)

    rows: list[tuple[str, list[str]]] = []

    def row(name: str, get) -> None:
        rows.append((name, [get(r) for r in results]))

    row("users joined / asked", lambda r: f"{r['joined']} / {r['users']}")
    row("join time, settle time (s)", lambda r: f"{r['join_s']:.1f}, {r['settle_s']:.1f}")
    row("messages sent / reflected", lambda r: f"{r['sent']} / {r['summary']['confirmed']}")
    row("deliveries expected", lambda r: str(r["summary"]["expected"]))
    row("deliveries received", lambda r: str(r["summary"]["delivered"]))
    row("lost (never delivered)", lambda r: str(r["summary"]["lost"] + r["summary"]["unverified"]))
    row(f"late (> {args.late_ms:g} ms)", lambda r: str(r["late"]))
    row("sending + drain time (s)", lambda r: f"{r['send_s']:.1f} + {r['drain_s']:.1f}")
    row("deliveries per second", lambda r: fmt(r["deliveries_per_s"]))
    row("Prosody CPU per delivery (us)", lambda r: fmt(r["server_us_per_delivery"]))
    row("generator CPU per delivery (us)", lambda r: fmt(r["client_us_per_delivery"]))
    row("Prosody CPU % sending (peak 1 s)", lambda r: f"{r['server_pct_sending']:.0f} ({fmt(r['server_pct_peak'])})")
    row("generator CPU % sending (peak)", lambda r: f"{r['client_pct_sending']:.0f} ({fmt(r['client_pct_peak'])})")
    row("Prosody RSS at end of sending (MiB)", lambda r: fmt(r["server_rss_mib"]))
    row("other processes CPU % sending", lambda r: fmt(r["others_pct_sending"]))
    for p in ("p50", "p90", "p99", "max"):
        row(f"delivery latency {p} (ms)", lambda r, p=p: fmt(r["delivery_ms"][p]))
    row("reflection latency p50/p99 (ms)",
        lambda r: f"{fmt(r['reflection_ms']['p50'])} / {fmt(r['reflection_ms']['p99'])}")
    row("send lag p50/p99/max (ms)",
        lambda r: f"{fmt(r['send_lag_ms']['p50'])} / {fmt(r['send_lag_ms']['p99'])} / {fmt(r['send_lag_ms']['max'])}")
    row("generator loop lag p99/max (ms)",
        lambda r: f"{fmt(r['loop_lag_ms']['p99'])} / {fmt(r['loop_lag_ms']['max'])}")
    row("generator GC pauses max/total (ms)",
        lambda r: f"{fmt(r['gc_pause_ms']['max'])} / {fmt(r['gc_pause_ms']['total'])}")
    row("<r/> received per session", lambda r: fmt(r["r_per_session"], ".1f"))
    row("<a/> sent per session", lambda r: fmt(r["a_per_session"], ".1f"))
    row("<r/> per delivery", lambda r: fmt(r["r_per_delivery"], ".2f"))
    row("<r/> read -> <a/> sent p50/p99 (ms)",
        lambda r: f"{fmt(r['r_to_a_ms']['p50'], '.3f')} / {fmt(r['r_to_a_ms']['p99'], '.3f')}")
    row("Prosody: acks received", lambda r: fmt(r["server_metrics"].get("prosody_mod_smacks__tx_acked_stanzas_count")))
    row("Prosody: stanzas queued / acked",
        lambda r: f"{fmt(r['server_metrics'].get('prosody_mod_smacks__tx_queued_stanzas_total'))} / "
        f"{fmt(r['server_metrics'].get('prosody_mod_smacks__tx_acked_stanzas_sum'))}")
    row("sessions connected at end", lambda r: f"{r['connected_at_end']} / {r['joined']}")
    row("failures", lambda r: ", ".join(f"{k}: {v}" for k, v in r["failures"].items()) or "0")

    width = max(len(name) for name, _ in rows)
    cols = [max(len(r["mode"]), *(len(values[i]) for _, values in rows)) for i, r in enumerate(results)]
    print()
    print(f"| {'':{width}} | " + " | ".join(f"{r['mode']:>{w}}" for r, w in zip(results, cols, strict=True)) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in cols) + "|")
    for name, values in rows:
        print(f"| {name:{width}} | " + " | ".join(f"{v:>{w}}" for v, w in zip(values, cols, strict=True)) + " |")
    for r in results:
        print(f"\n{r['mode']}: Prosody CPU % per second while sending: {r['server_per_second']}")
        print(f"{r['mode']}: generator CPU % per second while sending: {r['client_per_second']}")
        if r["first_failure"]:
            print(f"{r['mode']}: first failures: {r['first_failure']}")
        if r["last_errors"]:
            print(f"{r['mode']}: sessions ended: {r['last_errors']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500, help="room occupants, all in this process (default 500)")
    parser.add_argument("--rate", type=float, default=3.0, help="messages per second, all users together (default 3)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending (default 60)")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for late deliveries (default 60)")
    parser.add_argument("--batch", type=int, default=25, help="users connecting at once (default 25)")
    parser.add_argument("--modes", default="sm,no-sm", help="sm, no-sm or both, comma-separated (default both)")
    parser.add_argument("--late-ms", type=float, default=1000.0, help="a delivery later than this is late")
    parser.add_argument("--prosody-option", action="append", type=prosody_option, default=[], metavar="NAME=LUA",
                        help="a global Prosody option for both labs, e.g. smacks_max_unacked_stanzas=10 (repeatable)")
    parser.add_argument("--log-level", default="warn", choices=("warn", "info", "debug"))
    parser.add_argument("--keep-logs", action="store_true", help="keep the labs' run directories")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("sm", "no-sm") for m in modes):
        parser.error("--modes takes sm, no-sm or both")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.users * 2 + 256)), hard))
    _install_transport_probe()

    results = []
    for mode in modes:
        print(f"{mode}: {args.users} users, {args.rate:g} msg/s for {args.duration:g} s ...", file=sys.stderr)
        results.append(run_mode(args, mode == "sm"))
    print(f"\n{args.users} users in one room, {args.rate:g} messages/s for {args.duration:g} s "
          f"(about {args.rate * (args.users - 1):.0f} deliveries/s); lab Prosody {prosody_version()}, memory storage"
          + "".join(f", {name} = {value}" for name, value in args.prosody_option))
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def prosody_option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z_]+", name.strip()) or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=LUA_VALUE, got {text!r}")
    return name.strip(), value.strip()


def prosody_version() -> str:
    """The installed Prosody package's version (``prosody`` itself has no version flag: it would start)."""
    import subprocess

    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.split("-")[0] or "?"


if __name__ == "__main__":
    sys.exit(main())
