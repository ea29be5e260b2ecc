"""The Prometheus metric families of locust-xmpp, by the process that exports them, and the exporters' ports.

Names follow Prometheus conventions: base units (seconds, bytes), ``_total`` for counters. The
generator's families come from the master (or the local runner), every worker's data summed; the
server's from ``locust-xmpp exporter`` beside the server process.
"""

from __future__ import annotations

GENERATOR = "locust_xmpp"
"""Prefix of the generator's families."""
USERS = f"{GENERATOR}_users"
"""Gauge: Locust users running."""
SESSIONS = f"{GENERATOR}_sessions"
"""Gauge: XMPP sessions really open (connection READY)."""
REQUESTS = f"{GENERATOR}_requests_total"
"""Counter, label ``name``: requests ended (successes and failures) by request name."""
REQUEST_FAILURES = f"{GENERATOR}_request_failures_total"
"""Counter, label ``name``: failed requests by request name (``stream`` for failures outside one)."""
REQUEST_DURATION = f"{GENERATOR}_request_duration_seconds"
"""Histogram, label ``name``: round-trip time by request name (``message_delivery``: send to receipt)."""
MESSAGES_SENT = f"{GENERATOR}_messages_sent_total"
MESSAGES_CONFIRMED = f"{GENERATOR}_messages_confirmed_total"
MESSAGES_UNCONFIRMED = f"{GENERATOR}_messages_unconfirmed_total"
MESSAGES_SKIPPED = f"{GENERATOR}_messages_skipped_total"
DELIVERIES_EXPECTED = f"{GENERATOR}_deliveries_expected_total"
DELIVERIES = f"{GENERATOR}_deliveries_total"
"""Counter: first live deliveries to our receivers."""
DELIVERIES_IN_FLIGHT = f"{GENERATOR}_deliveries_in_flight"
"""Gauge: expected and not delivered yet, to receivers whose time in the room has not ended (or ended less than
the truth's grace time ago): not judged yet."""
DELIVERIES_LOST = f"{GENERATOR}_deliveries_lost"
"""Gauge: expected and never delivered to receivers that read their stream to their own leave (final at the run's
end)."""
DELIVERIES_UNEXPECTED = f"{GENERATOR}_deliveries_unexpected"
DELIVERIES_UNVERIFIED = f"{GENERATOR}_deliveries_unverified"
DELIVERIES_DUPLICATED = f"{GENERATOR}_deliveries_duplicated_total"
"""Counter: second (and later) deliveries of a message to the same receiver."""
DELIVERIES_OUT_OF_ORDER = f"{GENERATOR}_deliveries_out_of_order_total"
"""Counter: first deliveries that came after a later message of the same sender."""
MISSING_WORKERS = f"{GENERATOR}_missing_workers"
"""Gauge: workers that stopped answering the master during the run (they stay counted after Locust forgets them)."""
MISSING_USERS = f"{GENERATOR}_missing_users"
"""Gauge: the users those workers had."""
PHASE = f"{GENERATOR}_phase"
"""Gauge, label ``phase``: 1 for the phase in force (one series per phase of the plan, the others 0)."""
PHASE_PLANNED_USERS = f"{GENERATOR}_phase_planned_users"
"""Gauge: the planned user count of the phase in force."""
WORKERS = f"{GENERATOR}_workers"
"""Gauge, label ``state``: workers connected to the master, by Locust state (ready, running, missing...)."""
DEVIATIONS = f"{GENERATOR}_deviations_total"
"""Counter, label ``kind``: how often the run differed from its plan, by kind."""
EVENT_LOOP_LAG = f"{GENERATOR}_event_loop_lag_seconds"
"""Gauge: the largest delay of the generator's event loop over about the last 3 s (on a master, of any live
worker, in its last report): what of the latencies measured then may be the generator's own
(``xmpp_user.run.lag``)."""

SERVER = "xmpp_server"
"""Prefix of the server process's families (prometheus-client's process collector, namespace ``xmpp_server``):
``xmpp_server_process_cpu_seconds_total``, ``xmpp_server_process_resident_memory_bytes``,
``xmpp_server_process_open_fds``, ... and ``xmpp_server_process_threads``. The server's own families
(Prosody's ``prosody_*``) are passed on unchanged."""
SERVER_CPU = f"{SERVER}_process_cpu_seconds_total"
SERVER_RSS = f"{SERVER}_process_resident_memory_bytes"
SERVER_OPEN_FDS = f"{SERVER}_process_open_fds"
SERVER_THREADS = f"{SERVER}_process_threads"
SERVER_UP = f"{SERVER}_up"
"""Gauge: 1 while the watched process exists, 0 once it is gone."""
SERVER_METRICS_UP = f"{SERVER}_metrics_up"
"""Gauge, only with ``--server-metrics``: 1 if this scrape fetched and parsed the server's own metrics, else 0."""

GENERATOR_PORT = 9646
"""Default port of the generator's exporter (``--xmpp-metrics-port``; dashboards/prometheus.yml scrapes it)."""
SERVER_PORT = 9647
"""Default port of ``locust-xmpp exporter``."""

# Prosody's own families, passed on unchanged by the server exporter (Prosody only: ejabberd publishes none in
# the lab). Seen on Prosody 0.12.3 with mod_http_openmetrics; Prosody 0.12 publishes no MUC occupant count.
PROSODY_C2S_CONNECTIONS = "prosody_mod_c2s__connections"
"""Gauge, labels ``host``, ``type`` (``c2s``, ``c2s_unauthed``), ``ip_family``: client connections, WebSocket
ones included."""
PROSODY_MUC_LIVE_ROOMS = "prosody_mod_muc__live_room"
"""Gauge, label ``host``: rooms in memory on the MUC component."""
PROSODY_SMACKS_QUEUED = "prosody_mod_smacks__tx_queued_stanzas_total"
"""Counter, label ``host``: stanzas queued for stream-managed sessions, i.e. sent to them (their deliveries)."""
PROSODY_FAMILIES = (PROSODY_C2S_CONNECTIONS, PROSODY_MUC_LIVE_ROOMS, PROSODY_SMACKS_QUEUED)
"""The Prosody families the dashboards read."""
