"""Users that log in and stay: connect, SASL ANONYMOUS, bind, then a ping every --ping-every seconds.

The locustfile of test_namespaces.py, which counts connections rather than work: --holders users arrive in
batches (--batch-size new connections every --batch-interval seconds), stay --hold seconds, and the run ends.
Phases: batch1..batchN, hold.
"""

from __future__ import annotations

import logging
from typing import Any

from locust import events, task

from xmpp_user import XmppUser
from xmpp_user.run import phases
from xmpp_user.run.batches import batch_phases
from xmpp_user.run.options import option_group, positive, require_positive
from xmpp_user.run.phases import Phase, PhasedShape

log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = option_group(parser, "holders", "Users that log in and stay")
    g.add_argument("--holders", type=positive(int), default=10, help="Users in the run")
    g.add_argument("--hold", type=positive(float), default=5.0, help="Seconds everyone stays once all are in")
    g.add_argument("--ping-every", type=positive(float), default=20.0, help="Seconds between a user's pings")


@events.init.add_listener
def _install(environment: Any, **_kw: Any) -> None:
    phases.install(environment)


class Holder(XmppUser):
    def wait_time(self) -> float:
        return self.environment.parsed_options.ping_every

    @task
    def ping(self) -> None:
        self.ensure_connected()
        self.xmpp.ping()


class HolderBatches(PhasedShape):
    def phases(self) -> list[Phase]:
        o = self.runner.environment.parsed_options
        try:
            require_positive(o, "holders", "hold")
            plan = batch_phases(o, o.holders, [Holder])
        except ValueError as exc:
            log.error("locust-xmpp: %s", exc)
            return []
        return [*plan, Phase("hold", o.hold, o.holders, plan[0].spawn_rate, [Holder])]
