"""Processes and ports of the lab, read from /proc and probed on 127.0.0.1 (Linux only).

The lab signals only processes it started, by PID; these helpers tell whether a PID is still the
process it was (its command line), find a launcher's descendants, and measure CPU and memory.
A lab in a network namespace (``ip netns add NAME``) is probed from inside it: ``socket_in``.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
from pathlib import Path

CLONE_NEWNET = 0x40000000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for tests; another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def socket_in(netns: str | None = None) -> socket.socket:
    """A new TCP socket in the network namespace named ``netns`` (by ``ip netns add``), or in ours.

    A socket belongs to the namespace it was made in, whichever thread uses it later: only its creation
    moves this thread there (setns) and back, with nothing in between that could yield to another greenlet.
    """
    if not netns:
        return socket.socket()
    setns = ctypes.CDLL(None, use_errno=True).setns
    with open("/proc/thread-self/ns/net", "rb") as ours, open(f"/run/netns/{netns}", "rb") as theirs:
        if setns(theirs.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot enter network namespace {netns}: {os.strerror(error)}")
        try:
            return socket.socket()
        finally:
            if setns(ours.fileno(), CLONE_NEWNET) != 0:  # a thread left in the lab's namespace would misdirect all
                raise RuntimeError(f"cannot return from network namespace {netns}: {os.strerror(ctypes.get_errno())}")


def connect_in(netns: str | None, address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection to ``address`` made from inside ``netns`` (None: ours)."""
    sock = socket_in(netns)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def port_in_use(port: int, host: str = "127.0.0.1", netns: str | None = None) -> bool:
    with socket_in(netns) as s:
        # Both servers bind with SO_REUSEADDR too, so sockets in TIME_WAIT do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_open(port: int, host: str = "127.0.0.1", netns: str | None = None) -> bool:
    try:
        with connect_in(netns, (host, port), timeout=0.5):
            return True
    except OSError:
        return False


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def _stat_fields(pid: int) -> list[bytes]:
    """Fields of /proc/PID/stat after the command name (field 3, the state, comes first)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def cmdline(pid: int) -> list[bytes]:
    """The arguments of a live process; empty for a zombie or a process that is gone."""
    try:
        return [arg for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return []


def mentions(pid: int, marker: Path, program: str | None = None) -> bool:
    """Whether a live process has ``marker`` in an argument (and runs ``program``, if given).

    A recycled PID or a zombie must not pass for a lab server: each lab puts a path unique to it
    (its config file or its own directory) on its servers' command lines.
    """
    args = cmdline(pid)
    if not args or (program and os.path.basename(args[0]) != os.fsencode(program)):
        return False
    return any(os.fsencode(marker) in arg for arg in args)


def processes_mentioning(marker: Path, program: str) -> list[int]:
    """Every live ``program`` process with ``marker`` in its arguments (at most a few: a bounded scan)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mentions(int(entry), marker, program):
            found.append(int(entry))
    return found


def raise_open_files_limit() -> None:
    """Raise the soft open-file limit to the hard one (run in a server's child process before exec).

    A server under load holds one descriptor per connection; the soft limit a shell hands down is
    often 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
