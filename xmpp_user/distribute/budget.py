"""The connection budget of one generator process: how many users it can hold at once.

Three limits bind a process that holds one WebSocket per user:

- **open files**: one descriptor per connection, under the process's open-file limit (raised
  to the hard limit at start, as far as it goes), less a reserve for Locust's own sockets and files;
- **local ports**: connections from one source address to one server address and port each
  take an ephemeral port, so a host has ``len(range) x source addresses`` of them, shared by
  every process of that host that uses the same addresses;
- **one core**: a gevent process runs on one core; ``users_per_process`` is the measured
  ceiling beyond which latency, not the server, would be measured.

The binding one is named in words, so an operator knows what to add: workers, source addresses,
or hosts. No Locust, no sockets: the inputs are read by the caller.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass

DEFAULT_USERS_PER_PROCESS = 18_000
"""Users one generator process holds by default (one gevent process is one core): measured by
``benchmarks/process_ceiling.py`` with users pinging every 10 s (README, "Sizing a run"), where the lab
server and the open-file limit (20,000) bind first; the generator's own CPU-bound ceiling for that
workload, from ``benchmarks/generator_cost.py``'s costs per ping and per idle user, is about 50,000. A
scenario that does more per user (rooms of hundreds, messages every few seconds) wants a lower
``--xmpp-users-per-process``."""
FILE_RESERVE = 200
"""Descriptors kept for Locust itself: its master connection, web UI, log and CSV files."""


@dataclass(frozen=True)
class Budget:
    users: int
    """The most users this process can hold."""
    limit: str
    """Which limit binds, in words."""
    open_files: int
    ports: int
    """Ephemeral ports this process may use (its host's, shared among its processes)."""
    per_process: int



def compute(open_files: int, port_range: tuple[int, int], source_addresses: int, per_process: int,
            processes_sharing_ports: int = 1) -> Budget:  # fmt: skip
    """The budget from the limits as read on this machine."""
    low, high = port_range
    ports = (high - low + 1) * max(1, source_addresses) // max(1, processes_sharing_ports)
    files = max(0, open_files - FILE_RESERVE)
    limits = [
        (files, f"the open-file limit ({open_files} descriptors, {FILE_RESERVE} kept for Locust)"),
        (ports, f"the local ports ({high - low + 1} ephemeral ports x {max(1, source_addresses)} source "
                f"address{'es' if source_addresses > 1 else ''}"
                + (f", shared by {processes_sharing_ports} processes" if processes_sharing_ports > 1 else "") + ")"),
        (per_process, f"the users one process holds on one core ({per_process}, --xmpp-users-per-process)"),
    ]  # fmt: skip
    users, limit = min(limits, key=lambda item: item[0])
    return Budget(users, limit, files, ports, per_process)


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def workers_needed(users: int, per_worker: int) -> int:
    return math.ceil(users / per_worker) if per_worker > 0 else 0
