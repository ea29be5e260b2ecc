"""The lab: a private Prosody or ejabberd on loopback for tests, benchmarks and demos (``locust-xmpp lab up``).

``lab.py`` holds what both servers share (``Lab``, the run directory and its record), ``prosody.py`` and
``ejabberd.py`` one server each, ``procs.py`` the process and port helpers; the config templates sit beside them.
"""

from __future__ import annotations

from xmpp_user.lab.ejabberd import EjabberdLab
from xmpp_user.lab.lab import ROOMS, SERVERS, Lab, LabError, free_port, process_cpu_seconds, process_rss_bytes
from xmpp_user.lab.prosody import ProsodyLab

__all__ = [
    "ROOMS",
    "SERVERS",
    "EjabberdLab",
    "Lab",
    "LabError",
    "ProsodyLab",
    "free_port",
    "process_cpu_seconds",
    "process_rss_bytes",
]
