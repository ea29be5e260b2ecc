"""Locust's CSV writer greenlet and the shutdown that closes its files (xmpp_user.run.outcome)."""

from __future__ import annotations

from pathlib import Path

import gevent
import locust  # noqa: F401  (gevent's monkey patching, as in a run)
from locust.env import Environment
from locust.stats import CSV_STATS_INTERVAL_SEC, PERCENTILES_TO_REPORT, StatsCSVFileWriter

import xmpp_user.run.outcome  # noqa: F401  (what it does to Locust's writer on import)


def test_the_csv_writer_greenlet_stops_before_its_files_are_closed(tmp_path: Path) -> None:
    """As Locust's shutdown does: the writer sleeps between writes, the files are closed, the hub runs on (a
    run's exit switches to it once more). Before, the writer woke on closed files: ValueError, a traceback."""
    writer = StatsCSVFileWriter(Environment(), PERCENTILES_TO_REPORT, str(tmp_path / "run"), full_history=False)
    greenlet = gevent.spawn(writer.stats_writer)
    gevent.sleep(0.1)  # it wrote its headers and rows, and sleeps
    writer.close_files()
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)
    assert greenlet.dead and greenlet.successful(), greenlet.exception
    assert (tmp_path / "run_stats.csv").read_text().startswith("Type,Name,")
