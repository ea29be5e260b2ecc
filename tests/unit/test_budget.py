"""Connection budgets: which limit binds a process, and users dispatched within the workers' budgets."""

from __future__ import annotations

import argparse

import pytest
from locust import User, constant, task
from locust.env import Environment
from locust.runners import WorkerNode

from xmpp_user.distribute import dispatch
from xmpp_user.distribute.budget import FILE_RESERVE, compute, workers_needed
from xmpp_user.distribute.dispatch import BudgetDispatcher, _Budgets
from xmpp_user.run.deviations import Deviations


class _Viewer(User):
    wait_time = constant(1)

    @task
    def idle(self) -> None:
        pass


def test_the_tightest_limit_binds_and_is_named() -> None:
    budget = compute(open_files=20_000, port_range=(32768, 60999), source_addresses=1, per_process=5_000)
    assert (budget.users, budget.open_files, budget.ports) == (5_000, 20_000 - FILE_RESERVE, 28_232)
    assert budget.limit.startswith("the users one process holds on one core (5000")
    budget = compute(open_files=1024, port_range=(32768, 60999), source_addresses=1, per_process=5_000)
    assert budget.users == 1024 - FILE_RESERVE and budget.limit.startswith("the open-file limit (1024 descriptors")
    budget = compute(open_files=20_000, port_range=(40000, 40999), source_addresses=1, per_process=5_000)
    assert budget.users == 1000
    assert budget.limit == "the local ports (1000 ephemeral ports x 1 source address)"


def test_source_addresses_multiply_ports_and_processes_of_a_host_share_them() -> None:
    two = compute(open_files=20_000, port_range=(40000, 40999), source_addresses=2, per_process=5_000)
    assert two.users == 2000 and "x 2 source addresses" in two.limit
    shared = compute(open_files=20_000, port_range=(40000, 40999), source_addresses=1, per_process=5_000,
                     processes_sharing_ports=4)  # fmt: skip
    assert shared.users == 250 and shared.limit.endswith("shared by 4 processes)")
    assert workers_needed(10_001, 5_000) == 3


def _nodes(*ids: str) -> list[WorkerNode]:
    return [WorkerNode(node_id) for node_id in ids]


@pytest.fixture
def budgets(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    table: dict[str, int] = {}
    monkeypatch.setattr(BudgetDispatcher, "budget_of", staticmethod(lambda node: table.get(node.id)))
    deviations = Deviations()
    monkeypatch.setattr(dispatch, "DEVIATIONS", deviations)
    table["deviations"] = deviations  # type: ignore[assignment]
    return table


def _dispatch(dispatcher: BudgetDispatcher, users: int, rate: float) -> dict[str, dict[str, int]]:
    dispatcher.new_dispatch(users, rate)
    return list(dispatcher)[-1]  # the placement at the end of the ramp


def test_users_go_round_robin_within_each_workers_budget(budgets: dict[str, int]) -> None:
    budgets.update({"a_1": 3, "b_1": 5})
    dispatcher = BudgetDispatcher(_nodes("a_1", "b_1"), [_Viewer])
    assert _dispatch(dispatcher, 8, 100) == {"a_1": {"_Viewer": 3}, "b_1": {"_Viewer": 5}}
    assert not budgets["deviations"]  # type: ignore[truthy-bool]


def test_users_beyond_every_budget_are_not_placed_and_it_is_said(budgets: dict[str, int]) -> None:
    budgets.update({"a_1": 3, "b_1": 5})
    dispatcher = BudgetDispatcher(_nodes("a_1", "b_1"), [_Viewer])
    assert _dispatch(dispatcher, 10, 100) == {"a_1": {"_Viewer": 3}, "b_1": {"_Viewer": 5}}
    assert budgets["deviations"].as_dict() == {  # type: ignore[attr-defined]
        "users_capped": {"count": 2, "message": "2 of 10 users could not be placed: every worker is at its budget"}
    }


def test_a_rebalance_keeps_the_budgets(budgets: dict[str, int]) -> None:
    budgets.update({"a_1": 2, "b_1": 10, "c_1": 10})
    dispatcher = BudgetDispatcher(_nodes("a_1", "b_1"), [_Viewer])
    assert _dispatch(dispatcher, 9, 100) == {"a_1": {"_Viewer": 2}, "b_1": {"_Viewer": 7}}
    dispatcher.add_worker(WorkerNode("c_1"))
    dispatcher.new_dispatch(9, 100)  # what Locust's master does when a worker joins a running test
    placed = next(dispatcher)
    assert placed["a_1"]["_Viewer"] <= 2 and sum(n["_Viewer"] for n in placed.values()) == 9


def _limits(host: str, ports: tuple[int, int] = (40000, 40999), per_process: int = 5000) -> dict[str, object]:
    return {"open_files": 20_000, "port_range": list(ports), "source_addresses": 1, "per_process": per_process,
            "shares_ports_with": f"{host}|"}  # fmt: skip


def test_workers_of_one_host_share_its_ports() -> None:
    table = _Budgets()
    table.inputs.update({"h1_a": _limits("h1"), "h1_b": _limits("h1"), "h2_a": _limits("h2")})
    assert [table.of(node).users for node in ("h1_a", "h1_b", "h2_a")] == [500, 500, 1000]


def test_processes_share_ports_within_one_network_namespace_only() -> None:
    # Two workers started by 'ip netns exec' (or in two containers) have the host's name and a port range each.
    ours = dispatch.limits_of_this_process(argparse.Namespace(), "h1_a")
    assert ours["shares_ports_with"] == f"h1|{dispatch.network_namespace()}|"
    assert dispatch.network_namespace().startswith("net:[")
    table = _Budgets()
    table.inputs.update({"h1_a": {**_limits("h1"), "shares_ports_with": "h1|net:[1]|"},
                         "h1_b": {**_limits("h1"), "shares_ports_with": "h1|net:[2]|"},
                         "h1_c": {**_limits("h1"), "shares_ports_with": "h1|net:[2]|"}})  # fmt: skip
    assert [table.of(node).users for node in ("h1_a", "h1_b", "h1_c")] == [1000, 500, 500]


def test_a_run_that_cannot_fit_is_refused_in_one_line() -> None:
    env = Environment(user_classes=[_Viewer], parsed_options=argparse.Namespace(headless=True))
    runner = env.create_local_runner()
    table = _Budgets()
    table.inputs[runner._local_worker_node.id] = _limits("h1")
    runner.target_user_count = 1000
    assert dispatch.check(env, table) == ""
    runner.target_user_count = 2500
    assert dispatch.check(env, table) == (
        "2500 users planned, but this process can hold 1000 (bound by the local ports (1000 ephemeral ports x 1 "
        "source address)): run it distributed, 3 worker processes at 1000 users each"
    )
    runner.quit()
