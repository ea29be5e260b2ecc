"""Proof on one machine that a generator's connections are bound by its ephemeral ports and source addresses,
and that the budgets say so before the kernel does: real Locust masters and workers in network namespaces,
the lab Prosody in another, the ephemeral port range of the workers shrunk to 1,000 ports.

Topology, made fresh for each test (sockets closed by a client linger in FIN-WAIT-2 and hold their ports)
and removed afterwards, also when the test fails; names and the /24 are random per test:

    lxbr-SFX  bridge br0 with one veth port per namespace below, no address
    lxs-SFX   10.231.N.1              the lab Prosody (ws://10.231.N.1:15280/xmpp-websocket), the Locust master
    lxa-SFX   10.231.N.11, .12        worker a (its second address for --xmpp-source-ips), ports 40000-40999
    lxb-SFX   10.231.N.21             worker b, ports 40000-40999

Every process runs under ``ip netns exec NS``, so the traffic stays inside these namespaces. Needs root and
iproute2 (skipped otherwise). Users log in anonymously and stay (holders.py), 200 new connections a second.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runs import Run
from test_run_faults import Started

from xmpp_user.lab.lab import Lab

pytestmark = pytest.mark.heavy

HOLDERS = Path(__file__).with_name("holders.py")
PORT_RANGE = (40000, 40999)
PORTS = PORT_RANGE[1] - PORT_RANGE[0] + 1
MASTER_PORT = 5557
HOLD = 15.0
"""Seconds everyone stays: long enough for two reports of every worker (every 3 s) to reach the master."""
BATCHES = ["--batch-size", "200", "--batch-interval", "1", "--batch-jitter", "1", "--ping-every", "20"]
SQUAT = """
import socket, sys, time
held = []
for port in range(int(sys.argv[1]), int(sys.argv[2]) + 1):
    s = socket.socket()
    s.bind(("0.0.0.0", port))
    held.append(s)
print(f"holding {len(held)} ports", flush=True)
time.sleep(float(sys.argv[3]))
"""
"""Another program of a worker's host holding ports of its range: it binds them (no traffic) and waits."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Net:
    suffix: str
    subnet: str
    """The first three octets of the /24, e.g. '10.231.17'."""

    @property
    def bridge(self) -> str:
        return f"lxbr-{self.suffix}"

    @property
    def server(self) -> str:
        return f"lxs-{self.suffix}"

    @property
    def a(self) -> str:
        return f"lxa-{self.suffix}"

    @property
    def b(self) -> str:
        return f"lxb-{self.suffix}"

    @property
    def addresses(self) -> dict[str, list[str]]:
        return {self.server: [f"{self.subnet}.1"], self.a: [f"{self.subnet}.11", f"{self.subnet}.12"],
                self.b: [f"{self.subnet}.21"]}  # fmt: skip

    def address(self, ns: str, n: int = 0) -> str:
        return self.addresses[ns][n]

    @property
    def server_address(self) -> str:
        return self.address(self.server)

    def build(self, made: list[str]) -> None:
        for ns in (self.bridge, self.server, self.a, self.b):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for port, (ns, addresses) in enumerate(self.addresses.items()):
            # Made in the bridge's namespace, one end moved to ns: nothing is ever made in ours.
            _ip("-n", self.bridge, "link", "add", f"p{port}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge, "link", "set", f"p{port}", "master", "br0", "up")
            for address in addresses:
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for ns in (self.a, self.b):
            _ip("netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={PORT_RANGE[0]} {PORT_RANGE[1]}")


def _unavailable() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "network namespaces need root on Linux"
    if shutil.which("ip") is None:
        return "network namespaces need the ip command (apt-get install iproute2)"
    return Lab(".").unavailable()  # Prosody installed?


@pytest.fixture
def net() -> Iterator[Net]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    net = Net(secrets.token_hex(3), f"10.231.{secrets.randbelow(256)}")
    made: list[str] = []
    try:
        try:
            net.build(made)
        except RuntimeError as exc:
            if not made:
                pytest.skip(f"cannot make a network namespace here: {exc}")
            raise
        yield net
    finally:
        problems = []
        for ns in reversed(made):
            # A process still in a namespace keeps it alive after 'ip netns del': stop what we left there.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                _ip("netns", "del", ns)
            except RuntimeError as exc:
                problems.append(str(exc))
        assert not problems, problems
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.suffix not in listed, listed


@pytest.fixture
def server(net: Net, tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "lab", storage="memory", interface=net.server_address, netns=net.server)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def in_netns(ns: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *command]


def locust_in(ns: str, *args: str) -> list[str]:
    return in_netns(ns, sys.executable, "-m", "locust", "-f", str(HOLDERS), *args)


@dataclass
class Seen:
    """What a run reported, and what the server saw while everyone was in."""

    run: Run
    worker_logs: list[str]
    sessions: int | None = None
    """Prosody's authenticated client connections (its c2s gauge) during the hold."""
    peers: Counter[str] | None = None
    """Established connections to the server's WebSocket port, by client address (ss, in its namespace)."""

    @property
    def placed(self) -> str:
        found = re.findall(r"Users per worker, within their budgets: (.*)", self.run.output)
        return found[-1] if found else ""

    @property
    def errors(self) -> list[str]:
        return [line.split("locust-xmpp: error: ", 1)[1] for line in self.run.output.splitlines()
                if "locust-xmpp: error: " in line]  # fmt: skip

    def connected_in(self, phase: str) -> int:
        return int(next(p["connected_max"] for p in self.run.phases if p["phase"] == phase))

    def summary(self) -> str:
        run = self.run
        return (f"code {run.returncode}, connect {run.count('connect')}, failures {run.failures}, Prosody c2s "
                f"{self.sessions}, peers {dict(self.peers or {})}, placed: {self.placed or '-'}")  # fmt: skip


def prosody_sessions(lab: Lab) -> int:
    """Prosody's c2s sessions; -1 while it is too busy with the users' logins to answer within 10 s."""
    try:
        metrics = lab.metrics(timeout=10)  # type: ignore[attr-defined]
    except OSError:  # a timeout included
        return -1
    found = re.findall(r'^prosody_mod_c2s__connections\{[^}]*type="c2s"[^}]*\} (\d+)', metrics, re.MULTILINE)
    return sum(int(n) for n in found)


def peers(net: Net, lab: Lab) -> Counter[str]:
    done = subprocess.run(in_netns(net.server, "ss", "-Htn", "state", "established", f"( sport = :{lab.http_port} )"),
                          capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    return Counter(line.split()[-1].rsplit(":", 1)[0] for line in done.stdout.splitlines() if line.strip())


def run(net: Net, lab: Lab, tmp_path: Path, users: int, workers: dict[str, list[str]],
        during_hold: bool = True) -> Seen:  # fmt: skip
    """A headless master in the server's namespace and a worker in each namespace of ``workers`` (with its
    own options); what the server sees is read in the hold phase, once every user is in or after 5 s."""
    prefix = tmp_path / "run"
    master = Started(
        locust_in(
            net.server, "--master", "--master-bind-host", net.server_address, "--master-bind-port", str(MASTER_PORT),
            "--expect-workers", str(len(workers)), "--expect-workers-max-wait", "30", "--headless",
            "--host", lab.websocket_url, "--holders", str(users), "--hold", str(HOLD), *BATCHES,
            "--xmpp-no-sm", "--csv", str(prefix), "--only-summary",
        ),
        tmp_path / "master.log",
    )  # fmt: skip
    started = [master]
    seen_sessions, seen_peers = None, None
    try:
        for i, (ns, options) in enumerate(workers.items()):
            command = locust_in(ns, "--worker", "--master-host", net.server_address, "--master-port",
                                str(MASTER_PORT), *options)  # fmt: skip
            started.append(Started(command, tmp_path / f"worker-{i}.log"))
        if during_hold:
            master.wait_for("Phase 'hold' starts", timeout=60)
            deadline = time.monotonic() + HOLD - 3
            while (seen_sessions := prosody_sessions(lab)) < users and time.monotonic() < deadline:
                time.sleep(0.5)
            seen_peers = peers(net, lab)
        code = master.finish(timeout=60)
        for worker in started[1:]:
            worker.finish(timeout=30)
    finally:
        for p in started:
            p.kill()
    result = Seen(Run(code, master.output, 0.0, prefix), [w.output for w in started[1:]], seen_sessions, seen_peers)
    print(f"\n{users} users, {len(workers)} worker(s): {result.summary()}")
    return result


def no_port_left(net: Net, lab: Lab, source: str) -> str:
    where = f"{net.server_address}:{lab.http_port}"
    reason = (f"no local port left to connect to {where} from {source}: its {PORTS} ephemeral ports are in use "
              "(add source addresses with --xmpp-source-ips, or workers)")  # fmt: skip
    return f"XmppRequestFailed({reason!r})"  # as Locust's failure table writes it


def test_a_worker_asked_beyond_its_ports_is_refused_before_any_connection(net: Net, server: Lab,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    seen = run(net, server, tmp_path, 1200, {net.a: []}, during_hold=False)
    print(f"refused: {seen.errors}")
    assert seen.run.returncode == 2, seen.run.tail()
    assert seen.errors == [
        f"1200 users planned, but the 1 worker process can hold {PORTS} (bound by the local ports ({PORTS} ephemeral "
        f"ports x 1 source address)): at {PORTS} users each, 2 workers are needed"
    ], seen.run.tail()
    assert seen.run.count("connect") == 0 and "Traceback" not in seen.run.output + "".join(seen.worker_logs)
    assert prosody_sessions(server) == 0


def test_users_finding_no_local_port_each_record_the_limit(net: Net, server: Lab, tmp_path: Path) -> None:
    """The budget counts a host's whole port range; when another program holds most of it, the users that get no
    port record one failure naming the limit at each attempt, and the others stay connected."""
    squatted = 900  # of the 1,000: each worker's host has 100 left (one goes to its link to the master)
    squatters = [
        Started(in_netns(ns, sys.executable, "-c", SQUAT, str(PORT_RANGE[0]), str(PORT_RANGE[0] + squatted - 1), "120"),
                tmp_path / f"squat-{ns}.log")  # fmt: skip
        for ns in (net.a, net.b)
    ]
    try:
        for squatter in squatters:
            squatter.wait_for(f"holding {squatted} ports", timeout=20)
        # Worker b connects from its address explicitly (bind, then connect); worker a lets connect() choose.
        seen = run(net, server, tmp_path, 600, {net.a: [], net.b: ["--xmpp-source-ips", net.address(net.b)]})
    finally:
        for squatter in squatters:
            squatter.kill()
    assert seen.run.returncode == 1, seen.run.tail()  # failures
    assert "Traceback" not in seen.run.output + "".join(seen.worker_logs)
    failures = {(e["Name"], e["Error"]) for e in seen.run.errors}
    print(f"failures: {sorted(failures)}")
    assert failures == {("connect", no_port_left(net, server, "this host")),
                        ("connect", no_port_left(net, server, net.address(net.b)))}  # fmt: skip
    ports_left = PORTS - squatted
    assert seen.peers is not None and set(seen.peers) == {net.address(net.a), net.address(net.b)}, seen.peers
    assert all(ports_left - 3 <= n <= ports_left for n in seen.peers.values()), seen.peers
    assert seen.sessions == sum(seen.peers.values())
    assert seen.run.stats["connect"][1] >= 600 - 2 * ports_left  # every user without a port failed at least once


def test_two_workers_with_their_own_addresses_carry_twice(net: Net, server: Lab, tmp_path: Path) -> None:
    seen = run(net, server, tmp_path, 1800, {net.a: [], net.b: []})
    assert seen.run.returncode == 0, seen.run.tail()
    assert sorted(re.findall(r"worker \d+: (\d+) of (\d+)", seen.placed)) == [("900", str(PORTS))] * 2, seen.placed
    assert seen.run.count("connect") == 1800 and seen.run.failures == 0, seen.run.errors
    assert seen.sessions == 1800 and seen.connected_in("hold") == 1800
    assert seen.peers == {net.address(net.a): 900, net.address(net.b): 900}


def test_one_worker_with_two_source_addresses_carries_twice(net: Net, server: Lab, tmp_path: Path) -> None:
    sources = f"{net.address(net.a, 0)},{net.address(net.a, 1)}"
    seen = run(net, server, tmp_path, 1800, {net.a: ["--xmpp-source-ips", sources]})
    assert seen.run.returncode == 0, seen.run.tail()
    assert re.findall(r"worker \d+: (\d+) of (\d+)", seen.placed) == [("1800", str(2 * PORTS))], seen.placed
    assert seen.run.count("connect") == 1800 and seen.run.failures == 0, seen.run.errors
    assert seen.sessions == 1800 and seen.connected_in("hold") == 1800
    assert seen.peers == {net.address(net.a, 0): 900, net.address(net.a, 1): 900}
