"""The package's floors, read from its imports with the standard library's ``ast``: every import points down a
floor or stays within its own, no import closes a circle, and every module sits in a folder that names its floor.

The floors, from the bottom (xmpp_user/__init__.py's map says what each owns):

    lab                     private servers to test against: knows nothing of the rest
    core, features          XMPP without I/O: the protocol, then one module per extension
    session                 one user's XMPP session under gevent: transport, connection, requests, rooms, client
    run                     a Locust run and its accounting: options, phases, batches, truth, outcome, deviations
    scenario                what users do: talk, client profiles, ghosts, accounts
    distribute, observe     placing users on workers; watching the run and the server, the report
    deploy, fidelity        Kubernetes; real clients against the emulated ones
    user, cli               the Locust user and the command line: the top

Imports inside a function count too (a lazy import is still an arrow). ``TYPE_CHECKING`` imports count as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "xmpp_user"

FLOORS: dict[str, int] = {
    "lab": 0,
    "core": 1,
    "features": 2,
    "session": 3,
    "run": 4,
    "scenario": 5,
    "distribute": 6,
    "observe": 6,
    "deploy": 7,
    "fidelity": 7,
    "user": 8,
    "cli": 8,
}
"""Each folder (or top-level module) of xmpp_user/ and its floor: an import may point at its own floor or below."""


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def floor_of(module: str) -> str:
    """'xmpp_user.session.client' -> 'session'; 'xmpp_user.user' -> 'user'; 'xmpp_user' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The xmpp_user modules ``name`` imports (``from x import y`` names module x.y when that is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("xmpp_user"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xmpp_user"))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_sits_in_a_folder_that_names_its_floor() -> None:
    misplaced = sorted(name for name in modules() if name != "xmpp_user" and floor_of(name) not in FLOORS)
    assert misplaced == [], f"modules outside the floors of FLOORS: {misplaced}"


def test_no_import_points_up_a_floor() -> None:
    upward = []
    for name, targets in graph().items():
        if name == "xmpp_user":
            continue  # the package re-exports what a locustfile imports, from any floor
        for target in targets:
            if target != "xmpp_user" and FLOORS[floor_of(target)] > FLOORS[floor_of(name)]:
                upward.append(f"{name} -> {target}")
    assert sorted(upward) == []


def test_no_import_closes_a_circle() -> None:
    edges = graph()
    edges.pop("xmpp_user", None)
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state[target] == 1:
                circles.append([*path[path.index(target):], target])
            elif state[target] == 0:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if state[node] == 0:
            visit(node, [node])
    # A package that imports its own modules to re-export them is not a circle with them unless they import it.
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


FLAT_LAYOUT_LOCUSTFILE = '''
"""A locustfile written for the flat layout of earlier releases: its imports must keep working."""
from locust import constant, task

from xmpp_user import XmppUser, ghosts, outcome, phases
from xmpp_user.batches import batch_phases
from xmpp_user.client import NO_VCARD, Pending, XmppRequestFailed
from xmpp_user.deviations import DEVIATIONS
from xmpp_user.options import option_group, positive
from xmpp_user.phases import Phase, PhasedShape, current_phase
from xmpp_user.profiles import DEFAULT, PROFILES
from xmpp_user.rooms import normalise
from xmpp_user.talk import Talker


class OldStyleUser(XmppUser):
    wait_time = constant(1)

    @task
    def ping(self):
        self.ensure_connected()
        self.xmpp.ping()
'''


def test_a_locustfile_written_for_the_flat_layout_still_loads(tmp_path: Path) -> None:
    locustfile = tmp_path / "old_style.py"
    locustfile.write_text(FLAT_LAYOUT_LOCUSTFILE)
    listed = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile), "--list"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0 and "OldStyleUser" in listed.stdout, listed.stdout + listed.stderr


def test_an_old_module_name_is_the_moved_module_itself() -> None:
    # One module under both names: one set of option listeners, one tally, one phase in force.
    check = (
        "import importlib, xmpp_user\n"
        "for old, new in xmpp_user._MOVED.items():\n"
        "    a, b = importlib.import_module(old), importlib.import_module(new)\n"
        "    assert a is b and a.__name__ == a.__spec__.name == new, (old, a, b)\n"
        "from xmpp_user import phases, talk\n"
        "assert phases.__name__ == 'xmpp_user.run.phases' and talk.__name__ == 'xmpp_user.scenario.talk'\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
