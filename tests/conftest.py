"""Shared fixtures: the lab Prosody, started once per session on free loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmpp_user.lab.lab import INSTALL_HINT, Lab, free_port

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # A missing server is a failure, not a skip: these tests are the proof that the lab works.
    if shutil.which("prosody") is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    lab = Lab(tmp_path_factory.mktemp("lab"), c2s_port=free_port(), http_port=free_port(), storage="internal")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
