"""The generator's event loop delay: what counts as behind, what is said, what the reports carry."""

from __future__ import annotations

from xmpp_user.run.deviations import Deviations
from xmpp_user.run.lag import KIND, LIMIT, Lag


def test_a_delay_over_the_limit_is_said_once_and_counted_each_time() -> None:
    lag, deviations = Lag(), Deviations()
    lag.measured(LIMIT - 0.01, True, deviations)
    assert not deviations
    lag.measured(1.5, True, deviations)
    lag.measured(0.7, True, deviations)
    assert deviations.counts == {KIND: 2}
    assert "first by 1.5 s" in deviations.messages[KIND]
    assert "the load generator ran behind its schedule" in deviations.messages[KIND]


def test_delays_without_users_running_are_not_the_run_s() -> None:
    lag, deviations = Lag(), Deviations()
    lag.measured(3.0, False, deviations)
    assert not deviations and lag.take_max() == 0.0


def test_the_largest_delay_is_taken_once() -> None:
    lag, deviations = Lag(), Deviations()
    for delay in (0.01, 0.2, 0.05):
        lag.measured(delay, True, deviations)
    assert lag.take_max() == 0.2
    assert lag.take_max() == 0.0
