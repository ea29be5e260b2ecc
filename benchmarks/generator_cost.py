"""What each kind of request costs the generator, beside what it costs the server, through real Locust.

    python benchmarks/generator_cost.py [--users 2000] [--ping-users 1000] [--window 20] [--json FILE]

Starts a private lab Prosody (memory storage), then, for each kind of work, ONE real headless Locust
process (``locust -f ... --headless``) whose users are the project's ``XmppUser``s, with Locust's stats,
the request events and the message truth as a run has them:

- ``session``: ``--users`` users log in anonymously (connect, auth, bind, stream management) at
  ``--spawn-rate`` a second and stay idle; the cost of a set-up is the window from the first login to
  the last, divided by the binds; the memory of an idle connected user is the process's RSS once they
  are all connected and idle, above its RSS before the first one (Locust started, nothing connected),
  divided by the users connected; an idle user's CPU is measured over ``--idle`` seconds after that;
- ``ping``: ``--ping-users`` users each ping the server every ``--ping-interval`` seconds;
- ``groupchat``: ``--talk-users`` users in rooms of ``--occupants`` (k), each sending a marked message
  (message truth) every ``--talk-interval`` seconds; reported per delivered stanza (a message is
  delivered to the k occupants, its sender's reflection included) and per message sent;
- ``vcard``: ``--vcard-users`` users each publish a vCard with an 8 KiB avatar, then fetch it every
  ``--vcard-interval`` seconds (an 8 KiB reply, base64);
- ``mam``: ``--mam-users`` users each read the latest page of ``--mam-page`` messages of a room's archive
  every ``--mam-interval`` seconds (the room is filled first).

Each Locust process samples itself every half second: its own CPU (utime + stime) and the server's, both
from ``/proc`` at the same instant, its RSS, the users connected and Locust's request counts. A kind's
window begins ``--settle`` seconds after its last user connected and lasts ``--window`` seconds; its cost
is each process's CPU over the window divided by the requests Locust counted in it, ratio = generator /
server. The CPU-bound ceiling of one process follows: the users that one core at 80 % holds when each
pings every 10 s (a ping's cost every 10 s plus an idle user's CPU), beside the ceiling the open-file
limit sets. The machine's load average is recorded with the figures: other work on a 2-core machine
shows in them. Bounded: every Locust process has its run time (-t) and is stopped past it.

``--profile DIR`` also samples each Locust process with py-spy (the ``bench`` extra) over its window, writes
DIR/KIND.raw and prints its top frames by own and total share (``benchmarks/profile_top.py``). py-spy pauses
the process at each sample: the CPU figures of a profiled run are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xmpp_user.distribute.budget import DEFAULT_USERS_PER_PROCESS, FILE_RESERVE  # noqa: E402
from xmpp_user.lab.lab import Lab, free_port  # noqa: E402

CPU_LIMIT = 0.80
"""The share of one core a generator process may use: the ceiling's bound, as in process_ceiling.py."""
CEILING_PING_INTERVAL = 10.0
"""Seconds between two pings of one user in the ceiling's workload."""
SAMPLE_EVERY = 0.5
AVATAR_BYTES = 8192
KINDS = ("session", "ping", "groupchat", "vcard", "mam")
TARGETS = {"ping_ms": 0.08, "ping_ratio": 0.12, "session_ms": 1.5, "delivery_us": 30.0, "kib_per_user": 16.0}
"""Issue 17's targets (one process, one core, on the same machine as the server)."""

LOCUSTFILE = textwrap.dedent(
    '''
    """One kind of work of generator_cost.py (BENCH_KIND), and a sampler of this process and the server."""
    import json
    import os
    import time

    import gevent
    from locust import constant, constant_pacing, events, task

    from xmpp_user import XmppUser
    from xmpp_user.features import vcard
    from xmpp_user.lab.procs import process_cpu_seconds, process_rss_bytes
    from xmpp_user.run import outcome
    from xmpp_user.scenario.talk import Talker
    from xmpp_user.session import connection
    from xmpp_user.session.client import XmppClient

    KIND = os.environ["BENCH_KIND"]
    INTERVAL = float(os.environ["BENCH_INTERVAL"])
    OCCUPANTS = int(os.environ["BENCH_OCCUPANTS"])
    MAM_PAGE = int(os.environ["BENCH_MAM_PAGE"])
    SERVER_PID = int(os.environ["BENCH_SERVER_PID"])
    USERS = int(os.environ["BENCH_USERS"])
    STOP_AFTER = float(os.environ["BENCH_STOP_AFTER"])
    AVATAR = os.urandom(int(os.environ["BENCH_AVATAR_BYTES"]))
    ARCHIVE = "costarchive"


    def _sample(environment, path, every):
        """Every ``every`` s, one consistent line: both processes' CPU, our RSS, users connected, request counts.
        Once every user has been connected for BENCH_STOP_AFTER seconds (the window is over), the run stops."""
        pid, all_in = os.getpid(), None
        with open(path, "a") as out:
            while True:
                ready = connection.ready_count()
                if all_in is None and ready >= USERS:
                    all_in = time.monotonic()
                if all_in is not None and time.monotonic() - all_in > STOP_AFTER:
                    environment.runner.quit()
                    return
                counts = {name: [entry.num_requests, entry.num_failures, entry.total_content_length]
                          for (name, _method), entry in environment.stats.entries.items()}
                out.write(json.dumps({"t": time.monotonic(), "gen_cpu": process_cpu_seconds(pid),
                                      "server_cpu": process_cpu_seconds(SERVER_PID), "rss": process_rss_bytes(pid),
                                      "ready": ready, "counts": counts}) + "\\n")
                out.flush()
                gevent.sleep(every)


    @events.init.add_listener
    def _start_sampler(environment, **_kw):
        gevent.spawn(_sample, environment, os.environ["BENCH_SAMPLES"], float(os.environ["BENCH_SAMPLE_EVERY"]))


    @events.test_start.add_listener
    def _fill_archive(environment, **_kw):
        """The archive the mam users read: a page's worth of messages, written before any user starts."""
        if KIND != "mam":
            return
        options = environment.parsed_options
        client = XmppClient(environment.host, options.xmpp_domain)
        client.connect()
        room = f"{ARCHIVE}@{options.xmpp_muc}"
        client.muc_join(room, "archivist")
        client.wait_all([client.groupchat(room, f"archived message {n}", wait=False) for n in range(MAM_PAGE)])
        client.close()


    class Bench(XmppUser):
        wait_time = constant(3600) if KIND == "session" else constant_pacing(INTERVAL)

        def on_start(self):
            self.talker = Talker(self.xmpp, outcome.sender_id(self.environment), self.environment.events.request)
            super().on_start()

        def on_session(self):
            muc = self.settings.muc
            if KIND == "groupchat":
                self.room = f"cost{self.number // OCCUPANTS}@{muc}"
                self.talker.join(self.room, self.nick)
            elif KIND == "vcard":
                self.xmpp.set_vcard(vcard.set_payload(nickname=self.nick, photo=AVATAR))
            self.archive = f"{ARCHIVE}@{muc}"

        @task
        def work(self):
            self.ensure_connected()
            if KIND == "ping":
                self.xmpp.ping()
            elif KIND == "groupchat":
                self.talker.say(self.room, f"hello from {self.nick}")
            elif KIND == "vcard":
                self.xmpp.vcard()
            elif KIND == "mam":
                self.xmpp.mam(self.archive, max_=MAM_PAGE)
    '''
)

_OPS = {"session": "bind", "ping": "ping", "groupchat": "message_delivery", "vcard": "vcard", "mam": "mam"}
"""The Locust request counted as one operation of each kind."""


def run_kind(kind: str, lab: Lab, work: Path, users: int, interval: float, args: argparse.Namespace) -> dict:
    """One Locust process doing ``kind``: its samples turned into costs per operation."""
    samples_path = work / f"{kind}.samples"
    spawn_s = users / args.spawn_rate
    hold = args.idle if kind == "session" else args.window
    # The run stops itself once its window is over; -t only bounds it, should logins never all succeed.
    run_time = int(2 * spawn_s + args.settle + hold + 120)
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_KIND": kind, "BENCH_INTERVAL": str(interval),
           "BENCH_OCCUPANTS": str(args.occupants), "BENCH_MAM_PAGE": str(args.mam_page),
           "BENCH_SERVER_PID": str(lab.pid), "BENCH_AVATAR_BYTES": str(AVATAR_BYTES),
           "BENCH_SAMPLES": str(samples_path), "BENCH_SAMPLE_EVERY": str(SAMPLE_EVERY), "BENCH_USERS": str(users),
           "BENCH_STOP_AFTER": str(args.settle + hold + 2 * SAMPLE_EVERY)}  # fmt: skip
    cmd = [sys.executable, "-m", "locust", "-f", str(work / "cost.py"), "--headless", "--host", lab.websocket_url,
           "-u", str(users), "-r", str(args.spawn_rate), "-t", f"{run_time}s", "--only-summary",
           "--xmpp-users-per-process", str(max(users, DEFAULT_USERS_PER_PROCESS)), "--xmpp-timeout", "30"]  # fmt: skip
    if args.no_sm:
        cmd.append("--xmpp-no-sm")
    with open(work / f"{kind}.log", "wb") as log:
        locust = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:  # Locust stops by itself (-t); a minute past that it is killed
            if args.profile:
                _profile(locust, kind, spawn_s + args.settle, hold, Path(args.profile))
            exit_code = locust.wait(timeout=run_time + 60)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait()
            exit_code = None
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()] if samples_path.exists() else []
    result = {"kind": kind, "users": users, "interval_s": interval, "locust_exit_code": exit_code}
    result.update(_costs(kind, users, samples, args))
    if result.get("error"):
        result["log_tail"] = (work / f"{kind}.log").read_text(errors="replace").splitlines()[-15:]
    return result


def _profile(locust: subprocess.Popen, kind: str, start: float, seconds: float, out: Path) -> None:
    """py-spy samples the Locust process from ``start`` seconds on, for ``seconds``; its top frames printed."""
    import time

    from profile_top import report

    time.sleep(start)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{kind}.raw"
    cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(locust.pid), "--duration",
           str(int(seconds)), "--rate", "200", "--format", "raw", "--output", str(raw)]  # fmt: skip
    try:
        subprocess.run(cmd, capture_output=True, timeout=seconds + 60, check=True)
    except FileNotFoundError:
        print("--profile: py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"--profile: py-spy failed on {kind}: {exc}", file=sys.stderr)
        return
    print(report(raw, 20), flush=True)


def _count(sample: dict, name: str) -> int:
    return sample["counts"].get(name, [0, 0])[0]


def _failures(sample: dict) -> int:
    return sum(counts[1] for counts in sample["counts"].values())


def _window(first: dict, last: dict, name: str) -> dict:
    ops = _count(last, name) - _count(first, name)
    received = last["counts"].get(name, [0, 0, 0])[2] - first["counts"].get(name, [0, 0, 0])[2]
    gen, server = last["gen_cpu"] - first["gen_cpu"], last["server_cpu"] - first["server_cpu"]
    return {"ops": ops, "seconds": round(last["t"] - first["t"], 2), "generator_cpu_s": round(gen, 3),
            "server_cpu_s": round(server, 3),
            "generator_ms_per_op": round(gen / ops * 1000, 4) if ops else None,
            "server_ms_per_op": round(server / ops * 1000, 4) if ops else None,
            "ratio": round(gen / server, 3) if server > 0 else None,
            "bytes_per_op": round(received / ops) if ops else None}  # fmt: skip


def _costs(kind: str, users: int, samples: list[dict], args: argparse.Namespace) -> dict:
    all_in = next((i for i, s in enumerate(samples) if s["ready"] >= users), None)
    if all_in is None:
        most = max((s["ready"] for s in samples), default=0)
        return {"error": f"only {most} of {users} users connected"}
    out: dict = {"failures": _failures(samples[-1])}
    if kind == "session":
        before = max(i for i, s in enumerate(samples[: all_in + 1]) if s["ready"] == 0)
        out["window"] = _window(samples[before], samples[all_in], _OPS[kind])
        idle = [s for s in samples[all_in:] if s["t"] - samples[all_in]["t"] >= args.settle]
        if len(idle) < 2:
            return {**out, "error": "the run ended before the idle users were measured"}
        out["kib_per_idle_user"] = round((idle[0]["rss"] - samples[before]["rss"]) / idle[0]["ready"] / 1024, 2)
        out["rss_before_mib"] = round(samples[before]["rss"] / 2**20, 1)
        out["rss_idle_mib"] = round(idle[0]["rss"] / 2**20, 1)
        first, last = idle[0], idle[-1]
        out["idle_us_per_user_s"] = round((last["gen_cpu"] - first["gen_cpu"]) / (last["t"] - first["t"])
                                          / users * 1e6, 3)  # fmt: skip
        return out
    start = samples[all_in]["t"] + args.settle
    window = [s for s in samples[all_in:] if start <= s["t"] <= start + args.window]
    if len(window) < 2 or window[-1]["t"] - window[0]["t"] < 0.8 * args.window:
        return {**out, "error": "the run ended before its window was over"}
    out["window"] = _window(window[0], window[-1], _OPS[kind])
    if kind == "groupchat":
        out["messages_sent"] = _count(window[-1], "message") - _count(window[0], "message")
        if out["messages_sent"]:
            out["generator_us_per_message"] = round(out["window"]["generator_cpu_s"] / out["messages_sent"] * 1e6, 1)
            out["server_us_per_message"] = round(out["window"]["server_cpu_s"] / out["messages_sent"] * 1e6, 1)
    return out


def ceiling(ping_ms: float, idle_us_per_user_s: float) -> int:
    """Users of one process at one ping per CEILING_PING_INTERVAL before CPU_LIMIT of a core."""
    per_user = ping_ms / 1000 / CEILING_PING_INTERVAL + idle_us_per_user_s / 1e6
    return int(CPU_LIMIT / per_user)


def machine() -> dict:
    """The CPU, cores, system and Python the figures were measured on (also benchmarks/tsung_compare.py)."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "")
    return {"cpu_model": model, "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds to run (default: all)")
    parser.add_argument("--users", type=int, default=2000, help="session: users logging in, then idle")
    parser.add_argument("--spawn-rate", type=float, default=200, help="users started per second")
    parser.add_argument("--idle", type=float, default=10, help="session: seconds the idle users are measured")
    parser.add_argument("--ping-users", type=int, default=1000)
    parser.add_argument("--ping-interval", type=float, default=1.0)
    parser.add_argument("--talk-users", type=int, default=200)
    parser.add_argument("--occupants", type=int, default=10, help="groupchat: users per room (k)")
    parser.add_argument("--talk-interval", type=float, default=2.0)
    parser.add_argument("--vcard-users", type=int, default=100)
    parser.add_argument("--vcard-interval", type=float, default=1.0)
    parser.add_argument("--mam-users", type=int, default=100)
    parser.add_argument("--mam-interval", type=float, default=1.0)
    parser.add_argument("--mam-page", type=int, default=20)
    parser.add_argument("--settle", type=float, default=3, help="seconds between the last login and a window")
    parser.add_argument("--window", type=float, default=20, help="seconds each kind is measured")
    parser.add_argument("--no-sm", action="store_true", help="users without stream management")
    parser.add_argument("--json", help="write the measurements to this file")
    parser.add_argument("--profile", metavar="DIR", help="py-spy each kind over its window into DIR (see above)")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(unknown)} (choose from {', '.join(KINDS)})")
    sizes = {"session": (args.users, 0.0), "ping": (args.ping_users, args.ping_interval),
             "groupchat": (args.talk_users, args.talk_interval), "vcard": (args.vcard_users, args.vcard_interval),
             "mam": (args.mam_users, args.mam_interval)}  # fmt: skip

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the lab and Locust inherit it
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="generator-cost-") as tmp:
        work = Path(tmp)
        (work / "cost.py").write_text(LOCUSTFILE)
        for kind in kinds:
            # A lab per kind: each kind starts from a server that holds nothing of the last.
            lab = Lab(work / f"lab-{kind}", c2s_port=free_port(), http_port=free_port(), storage="memory")
            lab.up()
            try:
                users, interval = sizes[kind]
                results[kind] = run_kind(kind, lab, work, users, interval, args)
                results[kind]["load_average"] = os.getloadavg()
            finally:
                lab.down()
            print(_line(results[kind]), flush=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return _report(results, args, load_before)


def _line(r: dict) -> str:
    if r.get("error"):
        return f"{r['kind']}: {r['error']}"
    w = r["window"]
    return (f"{r['kind']}: {w['ops']} ops in {w['seconds']} s, generator {w['generator_cpu_s']} CPU-s, "
            f"server {w['server_cpu_s']} CPU-s, {r['failures']} failures")  # fmt: skip


def _report(results: dict, args: argparse.Namespace, load_before: tuple[float, ...]) -> int:
    units = {"session": ("set-up (connect, auth, bind, sm)", 1.0, "ms"), "ping": ("ping round trip", 1.0, "ms"),
             "groupchat": (f"delivered groupchat stanza (k={args.occupants})", 1000.0, "us"),
             "vcard": (f"vCard fetch ({AVATAR_BYTES // 1024} KiB avatar)", 1.0, "ms"),
             "mam": (f"MAM page ({args.mam_page} messages)", 1.0, "ms")}  # fmt: skip
    print(f"\n| {'operation':44} | {'generator CPU':>13} | {'server CPU':>11} | {'ratio':>5} |")
    print(f"|{'-' * 46}|{'-' * 15}|{'-' * 13}|{'-' * 7}|")
    for kind, r in results.items():
        if r.get("error") or r["window"]["generator_ms_per_op"] is None:
            continue
        label, scale, unit = units[kind]
        w = r["window"]
        gen, server = f"{w['generator_ms_per_op'] * scale:.3f} {unit}", f"{w['server_ms_per_op'] * scale:.3f} {unit}"
        ratio = f"{w['ratio']:.2f}" if w["ratio"] is not None else "-"
        print(f"| {label:44} | {gen:>13} | {server:>11} | {ratio:>5} |")
    summary: dict = {}
    session, ping = results.get("session", {}), results.get("ping", {})
    if "kib_per_idle_user" in session:
        summary["kib_per_idle_user"] = session["kib_per_idle_user"]
        summary["idle_us_per_user_s"] = session["idle_us_per_user_s"]
        print(
            f"\nmemory per idle connected user: {session['kib_per_idle_user']:.1f} KiB "
            f"(RSS {session['rss_before_mib']} MiB before the first login, {session['rss_idle_mib']} MiB "
            f"with {session['users']} users idle); an idle user's CPU: {session['idle_us_per_user_s']:.2f} us/s"
        )
    ping_ms = (ping.get("window") or {}).get("generator_ms_per_op")
    if ping_ms:
        summary["cpu_ceiling_users"] = ceiling(ping_ms, summary.get("idle_us_per_user_s", 0.0))
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FILE_RESERVE
        summary["open_file_ceiling_users"] = files
        print(
            f"CPU-bound ceiling of one process: {summary['cpu_ceiling_users']} users pinging every "
            f"{CEILING_PING_INTERVAL:g} s before {CPU_LIMIT:.0%} of a core; the open-file limit allows {files}"
        )
    failures = sum(r.get("failures", 0) for r in results.values())
    errors = [f"{k}: {r['error']}" for k, r in results.items() if r.get("error")]
    print(f"failures during the runs: {failures}")
    load_after = os.getloadavg()
    print(f"load average: {load_text(load_before)} before, {load_text(load_after)} after")
    for error in errors:
        print(f"error: {error}")
    if args.json:
        data = {"machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
                "options": vars(args), "targets": TARGETS, "kinds": results, "summary": summary,
                "failures": failures}  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 1 if errors else 0


def load_text(load: tuple[float, ...]) -> str:
    """A load average as the reports print it (also benchmarks/tsung_compare.py)."""
    return "/".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    sys.exit(main())
