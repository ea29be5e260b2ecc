"""The Prosody lab: ``prosody -F`` with ``prosody.cfg.lua.in`` rendered into the run directory.

Prosody runs as the user who starts the lab (root on lab and CI machines: the config says
``run_as_root``), keeps its data in ``RUN/data`` (fresh on every start, or in memory) and serves
OpenMetrics at ``/metrics``.
"""

from __future__ import annotations

import http.client
import shutil
from pathlib import Path
from string import Template
from typing import Any

from xmpp_user.lab.lab import Lab
from xmpp_user.lab.procs import connect_in, mentions

TEMPLATE = Path(__file__).with_name("prosody.cfg.lua.in")


INSTALL_HINT = "Prosody is not installed: run  sudo apt-get install -y prosody"


class _Connection(http.client.HTTPConnection):
    """HTTP straight to the lab (never through a proxy, whatever http_proxy says), from inside its namespace."""

    def __init__(self, host: str, port: int, netns: str | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        self.sock = connect_in(self.netns, (self.host, self.port), self.timeout)


class ProsodyLab(Lab):
    server = "prosody"
    name = "Prosody"
    install_hint = INSTALL_HINT
    scram_mechanism = "SCRAM-SHA-1"
    scram_domain = "scram.localhost"
    """Accounts with every SCRAM Prosody has (passwords kept in plain text): for mechanism tests only."""
    sasl_mechanisms = {
        "localhost": ("ANONYMOUS",),
        "reg.localhost": ("SCRAM-SHA-1", "PLAIN"),
        "scram.localhost": ("SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"),
    }

    @property
    def config_path(self) -> Path:
        return self.run_dir / "prosody.cfg.lua"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "prosody.log"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.interface}:{self.http_port}/metrics"

    def executable(self) -> str | None:
        return shutil.which("prosody")

    def render_config(self) -> str:
        return Template(TEMPLATE.read_text()).substitute(
            run_dir=str(self.run_dir),
            interface=self.interface,
            c2s_port=self.c2s_port,
            http_port=self.http_port,
            storage=self.storage,
            log_level=self.log_level,
            domain=self.domain,
            registered_domain=self.registered_domain,
            scram_domain=self.scram_domain,
            muc_domain=self.muc_domain,
            resume_timeout=self.resume_timeout,
            # Lines only --rooms persistent keeps; with stock they stay in the file as Lua comments.
            persistent="" if self.rooms == "persistent" else "-- ",
        )

    def _prepare(self) -> None:
        # A fresh data directory per run: internal storage truncates an archive past its quota on every append.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir()
        (self.run_dir / "certs").mkdir(exist_ok=True)
        for stale in (self.log_path, self.run_dir / "prosody.pid"):
            stale.unlink(missing_ok=True)
        self.config_path.write_text(self.render_config())

    def _command(self) -> list[str]:
        prosody = self.executable()
        assert prosody is not None
        return [prosody, "-F", "--config", str(self.config_path)]

    def _is_server(self, pid: int, record: dict[str, Any]) -> bool:
        # Prosody is the launched process itself; its command line names our config.
        return mentions(pid, self.config_path)

    def metrics(self, timeout: float = 5) -> str:
        """Prosody's OpenMetrics text (``metrics_url``), fetched from inside the lab's namespace if it has one;
        raises OSError if it cannot be had."""
        connection = _Connection(self.interface, self.http_port, self.netns, timeout)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read().decode()
        except http.client.HTTPException as exc:
            raise OSError(f"bad answer from {self.metrics_url}: {exc!r}") from None
        finally:
            connection.close()
        if response.status != 200:
            raise OSError(f"HTTP {response.status} from {self.metrics_url}")
        return body

    def _serving(self) -> bool:
        try:
            self.metrics(timeout=1)
            return True
        except OSError:
            return False

    def _startup_problem(self) -> str | None:
        # Prosody keeps running when it cannot bind a port; its log is the only sign.
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        for port in (self.c2s_port, self.http_port):
            if f"Failed to open server port {port}" in log:
                return f"port {port} is already in use"
        return None
