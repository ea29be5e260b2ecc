"""How many users one worker carries: the one figure that the scaler, the overlays and the docs size workers by."""

from __future__ import annotations

USERS_PER_WORKER = 5000
"""Users one worker pod (one Locust process, about one core) carries. Provisional, until measured: a user costs
the client 18.5 KiB idle and 3.7 ms of CPU per session (README, Cost of the generator), and one process holds
fewer than 20,000 connections (open files). ``k8s/overlays`` size their workers by it (the tests check)."""


def workers_for(users: int, per_worker: int = USERS_PER_WORKER) -> int:
    """Worker replicas for ``users``: as many as it takes, none for no users."""
    if users < 0 or per_worker < 1:
        raise ValueError(f"users must be 0 or more and users per worker 1 or more, not {users} and {per_worker}")
    return -(-users // per_worker)
