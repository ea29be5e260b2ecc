"""The viewer contract (xmpp_user.scenario.viewer.Viewer): both viewers a client profile drives fulfil it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from xmpp_user.fidelity.scene import EmulatedViewer, Scene
from xmpp_user.scenario.profiles import PROFILES
from xmpp_user.scenario.viewer import Viewer

REPO = Path(__file__).resolve().parents[2]
MEMBERS = set(Viewer.__annotations__) | {name for name, value in vars(Viewer).items()
                                          if callable(value) and not name.startswith("_")}  # fmt: skip


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_fidelity_scenes_viewer_is_a_viewer(profile: str) -> None:
    scene = Scene("ws://unused.invalid/", "localhost", "muc.localhost", "room@muc.localhost")
    assert isinstance(EmulatedViewer(scene, profile), Viewer)


def _names(path: Path, classes: set[str]) -> set[str]:
    """What the classes of ``path`` define: class attributes, methods, properties and ``self.x =`` assignments."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ClassDef) and node.name in classes):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.FunctionDef):
                names.add(inner.name)
            elif isinstance(inner, ast.Attribute) and isinstance(inner.ctx, ast.Store):
                names.add(inner.attr)
            elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                names.add(inner.id)
    return names


def test_the_livechat_locustfiles_viewer_is_a_viewer() -> None:
    """Read, not imported: a Locust user is built by a running environment."""
    defined = _names(REPO / "locustfiles" / "livechat.py", {"Viewer", "_RoomUser"})
    defined |= _names(REPO / "xmpp_user" / "user.py", {"XmppUser"})
    assert MEMBERS - defined == set()
    assert {"xmpp", "talker", "room", "archive_read"} <= MEMBERS
