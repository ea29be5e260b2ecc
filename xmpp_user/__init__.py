"""locust-xmpp: XMPP-over-WebSocket users for Locust, and what runs, watches and deploys them.

The package is built in floors; each imports only from the floors below it (``tests/unit/test_layout.py``
reads the imports and fails on one that points up or closes a circle). From the bottom:

- ``lab``: private Prosody and ejabberd servers on loopback to test against (``locust-xmpp lab``).
- ``core``: XMPP over WebSocket with no I/O: framing, stream negotiation, SASL, bind, stream
  management, IQ correlation. Feed it frames, read events and the frames to send.
- ``features``: one small module per XMPP extension (disco, roster, carbons, vCard, MUC, MAM, ping,
  caps, PEP, blocking, Jitsi): stanza builders and reply readers, still no I/O.
- ``session``: one user's XMPP session under gevent: the WebSocket transport, the connection's life,
  the requests awaiting replies and the Locust events they fire, the rooms, and ``XmppClient``.
- ``run``: a Locust run and its accounting: options, phases and batches, the message truth, the run's
  outcome and exit code, and what differed from the plan.
- ``scenario``: what users do: groupchat talk with message truth, the client profiles, closed tabs
  (ghosts), registered accounts.
- ``distribute``: users placed on workers within each process's budget.
- ``observe``: the run and the server watched while it goes on: exporters, the web UI's XMPP tab, the
  samples and the report.
- ``deploy``: Kubernetes (``locust-xmpp k8s``); ``fidelity``: the emulated viewers against real Converse.js.
- ``user``: the Locust ``XmppUser``; ``cli``: the ``locust-xmpp`` command. The top.

What a locustfile imports from here is re-exported below. Locustfiles written against the flat layout
of earlier releases (``xmpp_user.phases``, ``xmpp_user.talk``, ...) keep working: the old module names
are aliases of the new ones (``_MOVED``), resolved when first imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from xmpp_user.core.stream import Credentials
from xmpp_user.session.client import Pending, Room, XmppClient, XmppRequestFailed

__all__ = ["Credentials", "Pending", "Room", "XmppClient", "XmppRequestFailed", "XmppUser"]

_MOVED = {
    **{f"xmpp_user.{m}": f"xmpp_user.session.{m}" for m in ("transport", "connection", "requests", "rooms", "client")},
    **{f"xmpp_user.{m}": f"xmpp_user.run.{m}" for m in ("options", "phases", "batches", "truth", "outcome",
                                                        "deviations")},  # fmt: skip
    **{f"xmpp_user.{m}": f"xmpp_user.scenario.{m}" for m in ("talk", "profiles", "ghosts", "accounts")},
}
"""Module names of the flat layout, and where each module is now."""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module that moved: one module object under both names."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(_MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        # The import system set the alias's spec on the module: it keeps its own.
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
    sys.meta_path.append(_Alias())


def __getattr__(name: str) -> Any:
    # XmppUser is imported lazily: importing Locust's User registers options and monkey-patches.
    if name == "XmppUser":
        from xmpp_user.user import XmppUser

        return XmppUser
    raise AttributeError(name)
