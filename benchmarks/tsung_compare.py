"""The generator against Tsung 1.7 on the same plan: each one's CPU, memory and the server's work, side by side.

    python benchmarks/tsung_compare.py [--runs 2] [--users 500] [--occupants 10] [--interval 10] [--messages 6]
        [--arrival-rate 50] [--generators tsung,locust-xmpp] [--tsung-transport websocket] [--locust-report]
        [--py-spy PREFIX] [--json FILE] [--workdir DIR] [--keep]

The plan, for both generators: ``--users`` users arrive at ``--arrival-rate`` a second, each logs in anonymously
(SASL ANONYMOUS, bind, no stream management: Tsung has none), joins room ``room{n // occupants}`` (rooms of
``--occupants``), sends a groupchat message every ``--interval`` seconds from one interval after joining,
``--messages`` in all, and closes its stream one interval after its last message (so every occupant is in its room
for every message of it). For each of ``--runs`` runs and each generator, a fresh lab Prosody (memory storage) and:

- ``tsung``: ``tsung -n -f PLAN.xml start`` (Debian's tsung 1.7.0, one Erlang VM: ``use_controller_vm``), its
  ``ts_jabber`` session over ``--tsung-transport`` (``websocket``: the lab's ``/xmpp-websocket`` with text frames
  and the ``xmpp`` subprotocol; ``tcp``: the lab's c2s port), ``bidi`` and ``stamped`` messages (Tsung's message
  latency: it reads every stanza it receives), a private ``epmd`` on a free loopback port (started and stopped
  here, by PID) and its Erlang distribution on loopback;
- ``locust-xmpp``: one real headless ``locust`` process (``--xmpp-no-sm``, ``--only-summary``) whose users are the
  project's ``XmppUser`` with the message truth (a marked message, its reflection awaited, every delivery's
  latency recorded as ``message_delivery``): the benchmark's own small locustfile, written next to the run. Its
  statistics go to ``--json-file``; with ``--locust-report`` to ``--csv`` instead, as an operator runs it, which
  also writes the run's timeline files and draws its report at the end. ``--py-spy PREFIX`` profiles it (py-spy
  from .venv, attached from outside the measured tree) and prints the top frames.

Measured: the generator's whole process tree (Tsung: the shell script, ``beam.smp`` and the port programs it starts)
from its start to its exit: CPU (utime + stime of every process of it that was waited for, read by a small wrapper
as ``RUSAGE_CHILDREN``) and peak RSS (the tree's VmRSS summed, sampled every half second); Prosody's CPU over the
same span; the messages sent and the deliveries each generator counted itself (Tsung: its ``tr_chat`` transactions
and ``xmpp_msg_latency`` samples; locust-xmpp: its ``message`` and ``message_delivery`` requests); and what the
server did, read back once the generator is gone: each room's archive count (MAM, RSM ``count``) times its occupants
is the deliveries the server made. CPU per delivery divides each process's CPU by the server's deliveries (the same
denominator for both). Tsung 1.7's counts fall short of it: its WebSocket client decodes one frame per TCP read and
leaves the rest in its buffer until the next read (the last ones are never read), and its ``bidi`` parser counts one
stamp per chunk received, however many stanzas the chunk holds (and in a run of a few seconds its statistics may not
be written at all: it dumps them every 10 s).

What differs between the two, beside the language: Tsung opens its stream with ``<stream:stream>`` inside WebSocket
text frames (the framing before RFC 7395) and sends stanzas without ``xmlns``; Prosody 0.12 accepts both (it
rewrites only ``<open/>`` and feeds the frames to one stream parser) and answers in RFC 7395 framing. Tsung's
``ack="local"`` takes any data for the answer and it does not wait for its room join or its message's reflection;
locust-xmpp waits for the join's self-presence and each reflection (its ``muc_join`` and ``message`` requests).
Tsung's users arrive at random (exponential gaps of mean 1 / rate), Locust's evenly. Tsung's body is its 16-byte
stamp; ours a short text and the message truth's marker element. Both read and parse every stanza they receive.

JSON out (``--json FILE``), a printed table, the machine's load average before and after each run. Bounded:
each generator's run is stopped (by PID) past twice its planned length plus two minutes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import generator_cost  # noqa: E402
from generator_cost import load_text  # noqa: E402

from xmpp_user.lab.lab import Lab, free_port  # noqa: E402
from xmpp_user.lab.procs import process_cpu_seconds  # noqa: E402

GENERATORS = ("tsung", "locust-xmpp")
TRANSPORTS = ("websocket", "tcp")
SAMPLE_EVERY = 0.5
TSUNG = "/usr/bin/tsung"
TSUNG_DTD = "/usr/share/tsung/tsung-1.0.dtd"
ROOM = "room"
"""Rooms are ``room0``, ``room1``, ... on the lab's MUC service, for both generators."""


@dataclass(frozen=True)
class Plan:
    users: int
    occupants: int
    interval: float
    messages: int
    arrival_rate: float
    domain: str = "localhost"
    muc: str = "muc.localhost"

    @property
    def rooms(self) -> int:
        return math.ceil(self.users / self.occupants)

    @property
    def seconds(self) -> float:
        """From the first arrival to the last user's close."""
        return self.users / self.arrival_rate + (self.messages + 1) * self.interval

    def occupants_of(self, room: int) -> int:
        return min(self.occupants, self.users - room * self.occupants)

    @property
    def deliveries(self) -> int:
        """Every message delivered to every occupant of its room, its sender's reflection included."""
        return sum(self.occupants_of(r) ** 2 * self.messages for r in range(self.rooms))


def tsung_xml(plan: Plan, host: str, port: int, transport: str, client_host: str) -> str:
    """Tsung's configuration of the plan: one VM, the users arriving at the plan's rate, one session each."""
    server_type = "websocket" if transport == "websocket" else "tcp"
    # tsung_userid counts from 1; the value must be a binary (a list is substituted as its integers).
    room_of = (
        "fun({_Pid, DynVars}) -> {ok, Id} = ts_dynvars:lookup(tsung_userid, DynVars), "
        f"list_to_binary(integer_to_list((Id - 1) div {plan.occupants})) end."
    )
    # Tsung's arrivals are random (exponential gaps, the rate their mean) and its launcher falls behind on a busy
    # machine: a phase just as long as the arrivals need started 419 of 500 users once. The phase is twice as long
    # and more; maxnumber stops it at the plan's users. The load's duration bounds the whole test.
    phase_s = 2 * math.ceil(plan.users / plan.arrival_rate) + 30
    bound_s = math.ceil(2 * plan.seconds + 60)
    return textwrap.dedent(
        f"""\
        <?xml version="1.0"?>
        <!DOCTYPE tsung SYSTEM "{TSUNG_DTD}">
        <tsung loglevel="notice" version="1.0">
          <clients>
            <client host={quoteattr(client_host)} use_controller_vm="true" maxusers="{plan.users}"/>
          </clients>
          <servers>
            <server host={quoteattr(host)} port="{port}" type="{server_type}"/>
          </servers>
          <load duration="{bound_s}" unit="second">
            <arrivalphase phase="1" duration="{phase_s}" unit="second">
              <users maxnumber="{plan.users}" arrivalrate="{plan.arrival_rate:g}" unit="second"/>
            </arrivalphase>
          </load>
          <options>
            <!-- Read by Tsung's websocket transport only (RFC 7395 wants text frames and the xmpp subprotocol). -->
            <option name="websocket_path" value="/xmpp-websocket"/>
            <option name="websocket_frame" value="text"/>
            <option name="websocket_subprotocols" value="xmpp"/>
            <option type="ts_jabber" name="global_number" value="{plan.users}"/>
            <option type="ts_jabber" name="userid_max" value="{plan.users}"/>
            <option type="ts_jabber" name="domain" value={quoteattr(plan.domain)}/>
            <option type="ts_jabber" name="username" value="user"/>
            <option type="ts_jabber" name="passwd" value="pass"/>
            <option type="ts_jabber" name="muc_service" value={quoteattr(plan.muc)}/>
          </options>
          <sessions>
            <session bidi="true" probability="100" name="room-talker" type="ts_jabber">
              <request><jabber type="connect" ack="local"/></request>
              <transaction name="authenticate">
                <request><jabber type="auth_sasl_anonymous" ack="local"/></request>
                <request><jabber type="connect" ack="local"/></request>
                <request><jabber type="auth_sasl_bind" ack="local"/></request>
              </transaction>
              <setdynvars sourcetype="eval" code={quoteattr(room_of)}>
                <var name="room"/>
              </setdynvars>
              <request subst="true">
                <jabber type="muc:join" ack="local" room="{ROOM}%%_room%%" nick="u%%_tsung_userid%%"/>
              </request>
              <for from="1" to="{plan.messages}" var="i">
                <thinktime value="{plan.interval:g}" random="false"/>
                <transaction name="chat">
                  <request subst="true">
                    <jabber type="muc:chat" ack="no_ack" size="16" stamped="true" room="{ROOM}%%_room%%"/>
                  </request>
                </transaction>
              </for>
              <thinktime value="{plan.interval:g}" random="false"/>
              <request><jabber type="close" ack="no_ack"/></request>
            </session>
          </sessions>
        </tsung>
        """
    )


LOCUSTFILE = textwrap.dedent(
    '''
    """The plan of tsung_compare.py: users in rooms, a marked groupchat message every interval, then close."""
    import os

    import gevent
    from locust import constant_pacing, task
    from locust.exception import StopUser

    from xmpp_user import XmppUser
    from xmpp_user.run import outcome
    from xmpp_user.scenario.talk import Talker

    USERS = int(os.environ["CMP_USERS"])
    OCCUPANTS = int(os.environ["CMP_OCCUPANTS"])
    INTERVAL = float(os.environ["CMP_INTERVAL"])
    MESSAGES = int(os.environ["CMP_MESSAGES"])
    ROOM = os.environ["CMP_ROOM"]
    finished = 0


    class RoomTalker(XmppUser):
        wait_time = constant_pacing(INTERVAL)

        def on_start(self):
            self.talker = Talker(self.xmpp, outcome.sender_id(self.environment), self.environment.events.request)
            self.sent = -1  # the first task only starts the pacing: the first message goes one interval after joining
            super().on_start()

        def on_session(self):
            # Numbers count from 0 in one process: rooms of OCCUPANTS users in the order they arrive, as Tsung's.
            self.room = f"{ROOM}{self.number // OCCUPANTS}@{self.settings.muc}"
            self.talker.join(self.room, self.nick)

        @task
        def talk(self):
            global finished
            self.ensure_connected()
            if self.sent < MESSAGES:
                if self.sent >= 0:
                    self.talker.say(self.room, f"hello from {self.nick}")
                self.sent += 1
                return
            self.xmpp.close(self.close_timeout)  # as Tsung's session ends: the stream closed, no room leave
            finished += 1
            if finished >= USERS:  # quit from outside the users' group, which quit() kills
                gevent.spawn(self.environment.runner.quit)
            raise StopUser()
    '''
)


# -- processes -------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children, found, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


RUSAGE_WRAPPER = textwrap.dedent(
    """
    import json, os, resource, subprocess, sys
    code = subprocess.call(sys.argv[2:])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(sys.argv[1], "w") as out:
        json.dump({"exit_code": code, "utime": usage.ru_utime, "stime": usage.ru_stime}, out)
    """
)
"""Runs the generator and writes its CPU with every descendant it reaped (RUSAGE_CHILDREN), in a plain Python: this
process cannot wait4 for it, as gevent (Locust imports it, and the lab's package Locust) reaps every child itself."""


def _signal_descendants(pid: int, sig: int) -> None:
    """``sig`` to each descendant of the process we started, by PID (the youngest first)."""
    for p in reversed(tree(pid)[1:]):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the generator under the wrapper we started (SIGTERM, SIGKILL 10 s later), then the wrapper."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_descendants(proc.pid, sig)
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


def measure(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    bound_s: float,
    server_pid: int,
    attach: Callable[[int], None] | None = None,
) -> dict:
    """Run ``cmd`` to its exit (stopped past ``bound_s``): its tree's CPU and peak RSS, the server's CPU.
    ``attach`` is called once with the generator's PID as soon as it runs."""
    usage_path = log.with_suffix(".rusage.json")
    server_before, started = process_cpu_seconds(server_pid), time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", RUSAGE_WRAPPER, str(usage_path), *cmd], env=env, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    peak, peak_pids, stopped = 0, 0, False
    try:
        while proc.poll() is None:
            pids = tree(proc.pid)[1:]  # the generator's tree, not the wrapper
            if attach is not None and pids:
                attach(pids[0])
                attach = None
            rss = sum(_rss(p) for p in pids)
            if rss > peak:
                peak, peak_pids = rss, len(pids)
            if time.monotonic() - started > bound_s:
                stopped = True
                _stop(proc)
                break
            time.sleep(SAMPLE_EVERY)
    except BaseException:  # Ctrl+C: nothing of ours left running
        _stop(proc)
        raise
    seconds = time.monotonic() - started
    server_cpu = process_cpu_seconds(server_pid) - server_before
    usage = json.loads(usage_path.read_text()) if usage_path.exists() else {"exit_code": None, "utime": 0, "stime": 0}
    return {
        "exit_code": usage["exit_code"],
        "stopped_past_bound": stopped,
        "seconds": round(seconds, 1),
        "cpu_s": round(usage["utime"] + usage["stime"], 3),
        "user_cpu_s": round(usage["utime"], 3),
        "system_cpu_s": round(usage["stime"], 3),
        "peak_rss_mib": round(peak / 2**20, 1),
        "processes_at_peak": peak_pids,
        "server_cpu_s": round(server_cpu, 3),
    }


# -- the two generators ------------------------------------------------------------------------------------


def run_tsung(plan: Plan, lab: Lab, work: Path, transport: str, bound_s: float) -> dict:
    host, port = ("127.0.0.1", lab.http_port) if transport == "websocket" else lab.c2s_address
    plan_xml = work / "tsung.xml"
    plan_xml.write_text(tsung_xml(plan, host, port, transport, socket.gethostname().split(".")[0]))
    epmd_port = free_port()
    # A private epmd, ours to stop: the one an Erlang VM starts by itself (-daemon) outlives it.
    epmd = subprocess.Popen(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(epmd_port)
        env = {**os.environ, "HOME": str(work), "ERL_EPMD_PORT": str(epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
               "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}"}  # fmt: skip
        cmd = [TSUNG, "-n", "-i", f"cmp{os.getpid()}", "-f", str(plan_xml), "-l", str(work / "log"), "start"]
        result = measure(cmd, env, work, work / "tsung.out", bound_s, lab.pid)
    finally:
        epmd.terminate()
        try:
            epmd.wait(5)
        except subprocess.TimeoutExpired:
            epmd.kill()
            epmd.wait()
    logs = sorted((work / "log").glob("*/tsung.log"))
    stats = tsung_stats(logs[-1].read_text()) if logs else {}
    result["own_counts"] = {
        "users_started": stats.get("users_count", 0),
        "users_finished": stats.get("finish_users_count", 0),
        "messages_sent": stats.get("tr_chat", 0),
        "deliveries": stats.get("xmpp_msg_latency", 0),
        "bytes_received": stats.get("size_rcv", 0),
        "errors": {k: v for k, v in stats.items() if k.startswith("error")},
    }
    if not logs:
        result["error"] = "tsung wrote no tsung.log"
    return result


def tsung_stats(text: str) -> dict[str, int]:
    """The run's totals from tsung.log: the last field of each name's last ``stats:`` line is its total."""
    totals: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "stats:" and not fields[1].startswith("{"):
            totals[fields[1]] = int(float(fields[-1]))
    return totals


def run_locust(plan: Plan, lab: Lab, work: Path, bound_s: float, profile: Path | None, report: bool) -> dict:
    (work / "talkers.py").write_text(LOCUSTFILE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CMP_USERS": str(plan.users), "CMP_OCCUPANTS": str(plan.occupants),
           "CMP_INTERVAL": str(plan.interval), "CMP_MESSAGES": str(plan.messages), "CMP_ROOM": ROOM}  # fmt: skip
    cmd = [sys.executable, "-m", "locust", "-f", str(work / "talkers.py"), "--headless", "--host", lab.websocket_url,
           "-u", str(plan.users), "-r", f"{plan.arrival_rate:g}", "-t", f"{math.ceil(bound_s)}s", "--only-summary",
           "--xmpp-no-sm", "--xmpp-domain", plan.domain, "--xmpp-muc", plan.muc,
           "--xmpp-users-per-process", str(max(plan.users, 1000)), "--xmpp-timeout", "30"]  # fmt: skip
    # --csv makes a headless run write its timeline files and draw its report at the end (matplotlib); Tsung draws
    # none. Either way the run samples itself each second (xmpp_user.observe.timeline).
    cmd += ["--csv", str(work / "run")] if report else ["--json-file", str(work / "stats")]
    spy: list[subprocess.Popen[bytes]] = []

    def attach(pid: int) -> None:
        # py-spy samples from outside the tree (its CPU is not the generator's), without pausing it.
        with open(work / "py-spy.log", "wb") as log:
            spy.append(subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                                         "--rate", "100", "--nonblocking", "--format", "raw", "--output",
                                         str(profile)], stdout=log, stderr=subprocess.STDOUT))  # fmt: skip

    result = measure(cmd, env, work, work / "locust.log", bound_s + 30, lab.pid, attach if profile else None)
    for p in spy:  # py-spy writes its file and exits once Locust is gone
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait()
    counts = locust_counts(work / "run_stats.csv") if report else locust_json_counts(work / "stats.json")
    result["own_counts"] = {
        "users_started": plan.users,
        "messages_sent": counts.get("message", (0, 0))[0],
        "deliveries": counts.get("message_delivery", (0, 0))[0],
        "failures": sum(failures for _n, failures in counts.values()),
    }
    if not counts:
        result["error"] = "locust wrote no statistics"
    return result


def locust_counts(path: Path) -> dict[str, tuple[int, int]]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["Name"]: (int(row["Request Count"]), int(row["Failure Count"]))
                for row in csv.DictReader(f) if row["Name"] != "Aggregated"}  # fmt: skip


def top_frames(collapsed: str, count: int = 20) -> dict:
    """The functions the most samples were in, from py-spy's collapsed stacks (``frame;frame;... N``): own
    (the innermost frame) and total (anywhere in the stack, once per sample), as % of all samples."""
    own: dict[tuple[str, str], int] = {}
    total: dict[tuple[str, str], int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        weight = int(n)
        samples += weight
        frames = [_frame(f) for f in stack.split(";")]
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + weight
        own[frames[-1]] = own.get(frames[-1], 0) + weight
    def row(f: tuple[str, str]) -> dict:
        return {"function": f[0], "file": f[1], "own_pct": round(100 * own.get(f, 0) / samples, 1),
                "total_pct": round(100 * total[f] / samples, 1)}  # fmt: skip

    return {"samples": samples,
            "by_own": [row(f) for f in sorted(total, key=lambda f: (own.get(f, 0), total[f]), reverse=True)[:count]],
            "by_total": [row(f) for f in sorted(total, key=lambda f: total[f], reverse=True)[:count]]}  # fmt: skip


def _frame(text: str) -> tuple[str, str]:
    """``function (path/to/file.py:123)`` as (function, the file's path from its package on)."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/xmpp_user/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker != "/xmpp_user/" else "xmpp_user/" + path.split(marker, 1)[1]
            break
    return name.strip(), path


def locust_json_counts(path: Path) -> dict[str, tuple[int, int]]:
    if not path.exists():
        return {}
    return {e["name"]: (e["num_requests"], e["num_failures"]) for e in json.loads(path.read_text())}


# -- the server's side ----------------------------------------------------------------------------------------


def archived(lab: Lab, plan: Plan) -> list[int]:
    """Each room's archived messages, from the server (MAM: the RSM count of a one-message page)."""
    from xmpp_user.session.client import XmppClient, XmppRequestFailed

    rsm_count = "{http://jabber.org/protocol/rsm}count"
    client = XmppClient(lab.websocket_url, plan.domain, timeout=30)
    client.connect()
    counts = []
    try:
        for room in range(plan.rooms):
            try:
                fin = client.mam(f"{ROOM}{room}@{plan.muc}", max_=1).element
            except XmppRequestFailed:  # no such room: nobody joined it
                counts.append(0)
                continue
            count = next(fin.iter(rsm_count), None) if fin is not None else None
            counts.append(int(count.text) if count is not None and count.text else 0)
    finally:
        client.close()
    return counts


def _wait_port(port: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def one_run(generator: str, plan: Plan, work: Path, args: argparse.Namespace) -> dict:
    work.mkdir(parents=True)
    lab = Lab(work / "lab", c2s_port=free_port(), http_port=free_port(), storage="memory")
    bound_s = 2 * plan.seconds + 120
    load_before = os.getloadavg()
    lab.up()
    try:
        if generator == "tsung":
            result = run_tsung(plan, lab, work, args.tsung_transport, bound_s)
        else:
            profile = Path(f"{args.py_spy}.{work.name}") if args.py_spy else None
            result = run_locust(plan, lab, work, bound_s, profile, args.locust_report)
            if profile is not None and profile.exists():
                result["profile"] = {"file": str(profile), "top": top_frames(profile.read_text())}
        per_room = archived(lab, plan)
    finally:
        lab.down()
    result["server"] = {
        "messages_archived": sum(per_room),
        "deliveries": sum(n * plan.occupants_of(r) for r, n in enumerate(per_room)),
        "rooms_with_messages": sum(1 for n in per_room if n),
    }
    delivered = result["server"]["deliveries"]
    if delivered:
        result["generator_us_per_delivery"] = round(result["cpu_s"] / delivered * 1e6, 1)
        result["server_us_per_delivery"] = round(result["server_cpu_s"] / delivered * 1e6, 1)
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    return result


# -- report ------------------------------------------------------------------------------------------------


def machine() -> dict:
    """generator_cost's machine, with the versions of the packages both generators run on."""
    versions = {"locust": importlib.metadata.version("locust")}
    for package in ("prosody", "tsung", "erlang-base"):
        versions[package] = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True,
                                           text=True, check=False).stdout  # fmt: skip
    return {**generator_cost.machine(), **versions}


COLUMNS = ("generator", "run", "sent", "own deliv.", "server deliv.", "gen. CPU-s", "µs/deliv.", "peak RSS MiB",
           "Prosody CPU-s", "Prosody µs/deliv.", "wall s", "load 1 min")  # fmt: skip


def _row(generator: str, run: str, r: dict) -> list[str]:
    own, server = r.get("own_counts", {}), r.get("server", {})
    return [generator, run, str(own.get("messages_sent", "")), str(own.get("deliveries", "")),
            str(server.get("deliveries", "")), f"{r['cpu_s']:.2f}", f"{r.get('generator_us_per_delivery', 0):.0f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['server_cpu_s']:.2f}", f"{r.get('server_us_per_delivery', 0):.0f}",
            f"{r['seconds']:.0f}", f"{r['load_average_before'][0]:.2f}"]  # fmt: skip


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def report(results: dict[str, list[dict]]) -> dict:
    table = [list(COLUMNS)]
    means = {}
    for generator, runs in results.items():
        for n, r in enumerate(runs, 1):
            table.append(_row(generator, str(n), r))
        ok = [r for r in runs if r.get("server", {}).get("deliveries")]
        if ok:
            means[generator] = {key: round(_mean(ok, key), 3) for key in ("cpu_s", "peak_rss_mib", "server_cpu_s",
                                "generator_us_per_delivery", "server_us_per_delivery")}  # fmt: skip
            mean_row = {**means[generator], "seconds": _mean(ok, "seconds"), "own_counts": {}, "server": {},
                        "load_average_before": [sum(r["load_average_before"][0] for r in ok) / len(ok)]}  # fmt: skip
            table.append(_row(generator, "mean", mean_row))
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if "tsung" in means and "locust-xmpp" in means:
        t, x = means["tsung"], means["locust-xmpp"]
        ratios = {"cpu": round(x["cpu_s"] / t["cpu_s"], 3), "rss": round(x["peak_rss_mib"] / t["peak_rss_mib"], 3),
                  "server_cpu": round(x["server_cpu_s"] / t["server_cpu_s"], 3)}  # fmt: skip
        means["locust-xmpp / tsung"] = ratios
        print(f"\nlocust-xmpp / Tsung: CPU {ratios['cpu']:.2f}, peak RSS {ratios['rss']:.2f}, "
              f"Prosody's CPU {ratios['server_cpu']:.2f} (means of the runs)")  # fmt: skip
    return means


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs of each generator, each on a fresh lab")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--occupants", type=int, default=10, help="users per room")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two messages of a user")
    parser.add_argument("--messages", type=int, default=6, help="messages each user sends")
    parser.add_argument("--arrival-rate", type=float, default=50.0, help="users arriving per second")
    parser.add_argument("--generators", default=",".join(GENERATORS), help="which to run, in this order each run")
    parser.add_argument("--tsung-transport", choices=TRANSPORTS, default="websocket")
    parser.add_argument("--locust-report", action="store_true", help="run Locust with --csv, as an operator does: "
                        "it writes its timeline and draws its report at the end (default: --json-file)")  # fmt: skip
    parser.add_argument("--json", help="write the measurements to this file")
    parser.add_argument("--workdir", help="make the run's temporary directory there (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (the logs) at the end")
    parser.add_argument("--py-spy", metavar="PREFIX", help="profile each locust-xmpp run with py-spy (.venv's) into "
                        "PREFIX.locust-xmpp-N (collapsed stacks); top frames printed and in the JSON")  # fmt: skip
    args = parser.parse_args()
    generators = [g for g in args.generators.split(",") if g]
    if unknown := set(generators) - set(GENERATORS):
        parser.error(f"unknown generators {sorted(unknown)} (choose from {', '.join(GENERATORS)})")
    for name in ("runs", "users", "occupants", "messages"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.interval <= 0 or args.arrival_rate <= 0:
        parser.error("--interval and --arrival-rate must be above zero")
    if "tsung" in generators and not (shutil.which(TSUNG) and shutil.which("epmd")):
        parser.error("tsung is not installed (apt-get install -y --no-install-recommends tsung)")
    plan = Plan(args.users, args.occupants, args.interval, args.messages, args.arrival_rate)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the lab and the generators inherit it
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {g: [] for g in generators}
    tmp = Path(tempfile.mkdtemp(prefix="tsung-compare-", dir=args.workdir))
    try:
        for run in range(1, args.runs + 1):
            for generator in generators:
                r = one_run(generator, plan, tmp / f"{generator}-{run}", args)
                results[generator].append(r)
                print(f"{generator} run {run}: {r['cpu_s']:.2f} CPU-s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"Prosody {r['server_cpu_s']:.2f} CPU-s, {r['server']['deliveries']} deliveries by the "
                      f"server (planned {plan.deliveries}), own count {r['own_counts']['deliveries']}",
                      flush=True)  # fmt: skip
    finally:
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print()
    means = report(results)
    for n, r in enumerate(results.get("locust-xmpp", []), 1):
        if r.get("profile"):
            top = r["profile"]["top"]
            for order in ("by_own", "by_total"):
                print(f"\nlocust-xmpp run {n}, py-spy, {top['samples']} samples, {order.replace('_', ' ')} "
                      "(own % / total %):")  # fmt: skip
                for f in top[order]:
                    print(f"  {f['own_pct']:5.1f} {f['total_pct']:5.1f}  {f['function']}  {f['file']}")
    load_after = os.getloadavg()
    print(f"load average: {load_text(load_before)} before, {load_text(load_after)} after")
    short = [f"{g} run {n}: {r['server']['deliveries']} of {plan.deliveries} deliveries"
             for g, runs in results.items() for n, r in enumerate(runs, 1)
             if r["server"]["deliveries"] != plan.deliveries or r.get("error")]  # fmt: skip
    for line in short:
        print(f"short of the plan: {line}")
    if args.json:
        data = {"machine": machine(), "options": vars(args), "plan": {**vars(plan), "rooms": plan.rooms,
                "planned_deliveries": plan.deliveries, "planned_seconds": plan.seconds},
                "load_average_before": load_before, "load_average_after": load_after, "runs": results,
                "means": means}  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
