"""Users dispatched within each generator process's budget (``budget``), on Locust's own engine.

Each worker reads its limits when it starts and sends them to the master (custom message
``xmpp_budget``); the master works out each worker's budget (workers of one host share its
ports) and dispatches users with ``BudgetDispatcher``, a ``locust.dispatch.UsersDispatcher`` that
gives a worker no user beyond its budget. A local run budgets its own process the same way.

When a run starts, the planned peak (a load shape's largest phase, or the user count asked for)
is checked against the sum of the budgets: a run that cannot fit is refused at once, in one line
naming the binding limit and how many workers it needs, instead of a storm of "Cannot assign
requested address" or "Too many open files" later. A dispatch that still runs out of room (a
worker lost mid-run) places what fits and says so once.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import gevent
from locust import events
from locust.dispatch import UsersDispatcher
from locust.env import Environment
from locust.runners import STATE_MISSING, LocalRunner, MasterRunner, WorkerNode, WorkerRunner

from xmpp_user.distribute.budget import DEFAULT_USERS_PER_PROCESS, Budget, compute, raise_open_file_limit
from xmpp_user.run.deviations import DEVIATIONS
from xmpp_user.run.options import host_option, option_group, positive
from xmpp_user.run.phases import PhasedShape
from xmpp_user.session.transport import local_port_range

log = logging.getLogger(__name__)

@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = option_group(parser, "XMPP budget", "How many users one generator process holds")
    group.add_argument(
        "--xmpp-users-per-process",
        type=positive(int),
        default=DEFAULT_USERS_PER_PROCESS,
        help="Most users one generator process holds (one process is one core); with the open-file limit and "
        "the local ports it makes each process's budget (default %(default)s)",
    )


MESSAGE = "xmpp_budget"
EXIT_SETTINGS = 2


class BudgetDispatcher(UsersDispatcher):
    """Round robin over the workers, skipping those whose budget is full."""

    budget_of: Callable[[WorkerNode], int | None] = staticmethod(lambda node: None)
    """The budget of a worker node (None: unlimited); set by ``install``."""
    refused = False
    """The run was refused as too big for the budgets: place no user at all."""

    def _has_room(self, node: WorkerNode, users_on_workers: dict[str, dict[str, int]]) -> bool:
        budget = type(self).budget_of(node)
        return budget is None or sum(users_on_workers[node.id].values()) < budget

    def _next_with_room(self, cycle: Any, users_on_workers: dict[str, dict[str, int]]) -> WorkerNode | None:
        for _ in range(len(self._worker_nodes)):
            node = next(cycle)
            if self._has_room(node, users_on_workers):
                return node
        return None

    def _add_users_on_workers(self) -> dict[str, dict[str, int]]:
        if type(self).refused:
            self._no_user_to_spawn = True
            return self._users_on_workers
        target = min(self._current_user_count + self._user_count_per_dispatch_iteration, self._target_user_count)
        for user in self._user_generator:
            if not user:
                self._no_user_to_spawn = True
                break
            node = self._next_with_room(self._worker_node_generator, self._users_on_workers)
            if node is None:
                self._no_user_to_spawn = True  # ends this ramp with what fits
                _note_full(self._target_user_count, self._current_user_count)
                break
            self._users_on_workers[node.id][user] += 1
            self._current_user_count += 1
            self._active_users.append((node, user))
            if self._current_user_count >= target:
                break
        return self._users_on_workers

    def _distribute_users(self, target_user_count: int) -> Any:
        """Locust's redistribution after a worker came or went, within the budgets."""
        user_gen = self._user_gen()
        worker_gen = _cycle(self._worker_nodes)
        users_on_workers = {
            node.id: {user_class.__name__: 0 for user_class in self._original_user_classes}
            for node in self._worker_nodes
        }
        active_users = []
        for _ in range(target_user_count):
            user = next(user_gen)
            node = self._next_with_room(worker_gen, users_on_workers) if user else None
            if node is None:
                break
            users_on_workers[node.id][user] += 1
            active_users.append((node, user))
        return users_on_workers, user_gen, worker_gen, active_users


def _cycle(nodes: list[WorkerNode]) -> Any:
    return itertools.cycle(nodes)


def _note_full(target: int, placed: int) -> None:
    DEVIATIONS.note(
        "users_capped",
        f"{target - placed} of {target} users could not be placed: every worker is at its budget",
        count=target - placed,
    )


class _Budgets:
    """What the master (or a local runner) knows of the processes' limits."""

    def __init__(self) -> None:
        self.inputs: dict[str, dict[str, Any]] = {}
        """The limits each worker read, by client id."""

    def of(self, node_id: str) -> Budget | None:
        data = self.inputs.get(node_id)
        if data is None:
            return None
        # Workers of one host (one network namespace of it) connecting from the same addresses share its ephemeral
        # ports.
        sharing = sum(1 for other in self.inputs.values() if other["shares_ports_with"] == data["shares_ports_with"])
        return compute(data["open_files"], tuple(data["port_range"]), data["source_addresses"],
                       data["per_process"], sharing)  # type: ignore[arg-type]  # fmt: skip


def limits_of_this_process(options: Any, node_id: str) -> dict[str, Any]:
    """What a process reports of its limits (plain data for the master)."""
    per_process = host_option(options, "xmpp_users_per_process")
    per_process = DEFAULT_USERS_PER_PROCESS if per_process is None else int(per_process or 0)
    sources = sorted(ip.strip() for ip in (host_option(options, "xmpp_source_ips") or "").split(",") if ip.strip())
    host = node_id.split("_")[0]
    return {
        "open_files": raise_open_file_limit(),
        "port_range": list(local_port_range()),
        "source_addresses": max(1, len(sources)),
        "per_process": per_process,
        "shares_ports_with": f"{host}|{network_namespace()}|{','.join(sources)}",
    }


def network_namespace(link: str = "/proc/self/ns/net") -> str:
    """This process's network namespace (``net:[INODE]``; '' where there is none to read).

    Ephemeral ports belong to a network namespace, not to a host name: processes of one host in different
    namespaces (containers, pods, ``ip netns exec``) have a port range each, though they share the host's name.
    Two hosts can have the same inode: the host name tells them apart.
    """
    try:
        return os.readlink(link)
    except OSError:
        return ""


def install(environment: Environment) -> None:
    """Budget the processes of the run; call from an ``init`` listener."""
    runner = environment.runner
    options = environment.parsed_options
    if isinstance(runner, WorkerRunner):
        runner.send_message(MESSAGE, limits_of_this_process(options, runner.client_id))
        return
    if not isinstance(runner, MasterRunner | LocalRunner):
        return
    budgets = _Budgets()
    if isinstance(runner, LocalRunner):
        node = runner._local_worker_node
        budgets.inputs[node.id] = limits_of_this_process(options, node.id)
    else:

        def on_budget(environment: Environment, msg: Any, **_kw: Any) -> None:
            budgets.inputs[msg.node_id] = dict(msg.data)

        runner.register_message(MESSAGE, on_budget)

    def budget_of(node: WorkerNode) -> int | None:
        budget = budgets.of(node.id)
        return budget.users if budget is not None else None

    BudgetDispatcher.budget_of = staticmethod(budget_of)
    environment.dispatcher_class = BudgetDispatcher

    def on_test_start(environment: Environment, **_kw: Any) -> None:
        problem = check(environment, budgets)
        BudgetDispatcher.refused = bool(problem)
        if problem:
            log.error("locust-xmpp: error: %s", problem)
            environment.process_exit_code = EXIT_SETTINGS
            if options is not None and getattr(options, "headless", False):
                gevent.spawn(environment.runner.quit)
            else:
                gevent.spawn(environment.runner.stop)

    environment.events.test_start.add_listener(on_test_start)

    if isinstance(runner, MasterRunner):

        def on_spawning_complete(**_kw: Any) -> None:
            placed = runner._users_dispatcher._users_on_workers if runner._users_dispatcher else {}
            parts = []
            for node_id, users in sorted(placed.items(), key=lambda item: runner.get_worker_index(item[0])):
                budget = budgets.of(node_id)
                limit = f" of {budget.users}" if budget is not None else ""
                parts.append(f"worker {runner.get_worker_index(node_id)}: {sum(users.values())}{limit}")
            log.info("Users per worker, within their budgets: %s", ", ".join(parts))

        environment.events.spawning_complete.add_listener(on_spawning_complete)


def planned_peak(environment: Environment) -> int:
    """The most users the run will ask for: its load shape's largest phase, or the count asked."""
    shape = environment.shape_class
    if isinstance(shape, PhasedShape) and shape._phases:
        return max(phase.users for phase in shape._phases)
    return int(getattr(environment.runner, "target_user_count", 0) or 0)


def check(environment: Environment, budgets: _Budgets) -> str:
    """Why the planned run cannot fit in the processes' budgets, or '' if it can."""
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        node_ids = [c.id for c in runner.clients.values() if c.state != STATE_MISSING]
    else:
        node_ids = [runner._local_worker_node.id]
    found = {node_id: budgets.of(node_id) for node_id in node_ids}
    known = {node_id: b for node_id, b in found.items() if b is not None}
    if not known:
        return ""
    peak = planned_peak(environment)
    total = sum(b.users for b in known.values()) + sum(peak for b in found.values() if b is None)
    if peak <= total:
        return ""
    tightest = min(known.values(), key=lambda b: b.users)
    per_worker = max(1, tightest.users)
    needed = math.ceil(peak / per_worker)
    if isinstance(runner, MasterRunner):
        return (
            f"{peak} users planned, but the {len(known)} worker process{'es' if len(known) > 1 else ''} can hold "
            f"{total} ({'the tightest ' if len(known) > 1 else ''}bound by {tightest.limit}): at {per_worker} "
            f"users each, {needed} workers are needed"
        )
    return (
        f"{peak} users planned, but this process can hold {total} (bound by {tightest.limit}): run it "
        f"distributed, {needed} worker processes at {per_worker} users each"
    )
