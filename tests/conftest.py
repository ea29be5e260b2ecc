"""Shared fixtures: the lab servers, each started once per session on free loopback ports.

``lab`` is parametrised over the servers (ids ``prosody`` and ``ejabberd``): every test that uses it runs
against both, one server at a time. ``stock_lab`` is the same with ``--rooms stock`` (each server's own
defaults for room lifetime, locking and archiving), started only for the tests that ask for it. Tests
branch on ``lab.server`` where the servers really differ. A server that cannot run here (its package is
missing) is skipped with the reason; CI installs both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmpp_user.lab.lab import SERVERS, Lab, free_port

INTEGRATION_DIR = Path(__file__).parent / "integration"
# The benchmarks' independent room observer (benchmarks/room_observer.py) checks the message truth in tests too.
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


def start_lab(factory: pytest.TempPathFactory, server: str, rooms: str) -> Lab:
    lab = Lab(factory.mktemp(f"lab-{server}-{rooms}"), c2s_port=free_port(), http_port=free_port(),
              storage="internal", server=server, rooms=rooms)  # fmt: skip
    reason = lab.unavailable()
    if reason:
        pytest.skip(reason)
    lab.up()
    return lab


@pytest.fixture(scope="session", params=SERVERS)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = start_lab(tmp_path_factory, request.param, "persistent")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session", params=SERVERS)
def stock_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = start_lab(tmp_path_factory, request.param, "stock")
    try:
        yield lab
    finally:
        lab.down()
