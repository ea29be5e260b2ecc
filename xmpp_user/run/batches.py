"""Users in batches: "N users, B new connections every S seconds", the way the field ran its tests.

A batch of B users is one phase (``batch1``, ``batch2``, ...) that raises the target by B at a spawn
rate of B per second: Locust's master dispatches the batch over the workers at once, round robin
within their budgets, so no worker takes more than its share. Inside each worker the batch's users
would all log in within the same millisecond; each waits a random moment of up to ``--batch-jitter``
seconds first (``phases.login_delay``), so B SASL handshakes reach the server spread over that time,
as B people clicking "join" would.
"""

from __future__ import annotations

import math
from typing import Any

from locust import User, events

from xmpp_user.run.options import non_negative, option_group, positive, require_non_negative, require_positive
from xmpp_user.run.phases import LOGIN_JITTER, Phase

JITTER = LOGIN_JITTER


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = option_group(parser, "batches", "Users in batches of new connections (scenarios that use batches)")
    g.add_argument("--batch-size", type=positive(int), default=100,
                   help="New connections per batch (default %(default)s)")  # fmt: skip
    g.add_argument("--batch-interval", type=non_negative(float), default=10.0,
                   help="Seconds between batches (default %(default)s)")  # fmt: skip
    g.add_argument("--batch-jitter", type=non_negative(float), default=1.0,
                   help="Seconds over which the logins of a batch are spread (default %(default)s)")  # fmt: skip


def batch_phases(options: Any, target: int, user_classes: list[type[User]] | None = None,
                 params: dict[str, Any] | None = None) -> list[Phase]:  # fmt: skip
    """The phases ``batch1``..``batchN`` that bring the run to ``target`` users, ``--batch-size`` at a time."""
    require_positive(options, "batch_size")
    require_non_negative(options, "batch_interval", "batch_jitter")
    size = min(options.batch_size, target)
    jitter = min(options.batch_jitter, options.batch_interval) if options.batch_interval else options.batch_jitter
    return [
        Phase(f"batch{k}", options.batch_interval, min(target, k * size), size, user_classes,
              {**(params or {}), JITTER: jitter})  # fmt: skip
        for k in range(1, math.ceil(target / size) + 1)
    ]
