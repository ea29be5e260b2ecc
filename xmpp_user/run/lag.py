"""How far behind its own schedule this load generator runs: the delay of its event loop.

All the users of a process share one gevent loop. When the process gets less CPU than its users need (its
own work, or a host that gives it too little), a greenlet that sleeps until a moment wakes late, and all
that is timed then carries the delay: a request's latency, a delivery's, a message's due time. The server
has no part in it. Here one greenlet (not a user's) sleeps ``TICK`` seconds again and again while users
run, and measures by how much it wakes late:

- a delay over ``LIMIT`` is a deviation, ``generator_behind``: said once, with the first such delay and
  its phase, and counted at every tick that shows one;
- the largest delay since it was last taken (``take_max``) goes into each worker report and each timeline
  sample, so the report shows it phase by phase;
- the largest over the last ``RECENT`` seconds (``recent``) is what the generator's Prometheus exporter
  shows now.

``LIMIT`` is half a second: a shorter pause (a garbage collection, a busy neighbour on a shared host) is
common and within what a run's latencies can carry; half a second is not.
"""

from __future__ import annotations

import time
from collections import deque
from weakref import WeakKeyDictionary

import gevent
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING

from xmpp_user.run.deviations import DEVIATIONS, Deviations
from xmpp_user.run.phases import current_phase

TICK = 0.1
"""Seconds the watching greenlet sleeps between two measures."""
LIMIT = 0.5
"""Seconds of delay from which the generator counts as behind its schedule."""
RECENT = 3.0
"""Seconds over which ``recent`` takes the largest delay: Locust's worker report interval."""
KIND = "generator_behind"


class Lag:
    """The delays of one process's event loop, as ``lag`` has them measured."""

    def __init__(self) -> None:
        self.largest = 0.0
        """The largest delay since ``take_max`` last read it, in seconds."""
        self._recent: deque[float] = deque(maxlen=round(RECENT / TICK))
        """The delays of the last ``RECENT`` seconds of ticks (0 for those without users running)."""

    def take_max(self) -> float:
        """The largest delay since the last call, then forgotten."""
        largest, self.largest = self.largest, 0.0
        return largest

    def recent(self) -> float:
        """The largest delay over the last ``RECENT`` seconds."""
        return max(self._recent, default=0.0)

    def measured(self, delay: float, running: bool, deviations: Deviations = DEVIATIONS) -> None:
        """One measure: the loop woke ``delay`` seconds late; ``running``: users were running."""
        self._recent.append(delay if running else 0.0)
        if not running:
            return
        self.largest = max(self.largest, delay)
        if delay > LIMIT:
            phase = current_phase()
            where = f" in phase {phase.name!r}" if phase is not None else ""
            deviations.note(
                KIND,
                f"the load generator ran behind its schedule (first by {delay:.1f} s{where}): its process got "
                "less CPU than its users needed, and latencies measured then include that delay; more workers "
                "or fewer users per worker remove it",
            )


_lags: WeakKeyDictionary[Environment, Lag] = WeakKeyDictionary()


def lag(environment: Environment) -> Lag:
    """The lag of this process, watched from the first call on (a process with users calls it at ``init``)."""
    found = _lags.get(environment)
    if found is None:
        found = _lags[environment] = Lag()
        gevent.spawn(_watch, environment, found)
    return found


def _watch(environment: Environment, found: Lag) -> None:
    while True:
        start = time.monotonic()
        gevent.sleep(TICK)
        runner = environment.runner
        running = runner is not None and runner.state in (STATE_SPAWNING, STATE_RUNNING)
        found.measured(time.monotonic() - start - TICK, running)
