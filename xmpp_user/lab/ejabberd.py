"""The ejabberd lab: Debian's ejabberd 23.01 started with ``ejabberdctl ... foreground``, never the system service.

ejabberd runs as the ``ejabberd`` user, switched to with ``setpriv`` (a PAM session, as with su or
runuser, would reset the soft open-file limit to 1024). That user cannot enter the run directory when
it lies in a private directory (pytest's are 0700 under /tmp/pytest-of-root), and the lab changes no
permissions on directories it did not make: everything ejabberd reads or writes lives in a directory
of its own, ``/tmp/locust-xmpp-ejabberd-XXXXXXXX`` (made by the lab, owned by ``ejabberd``, mode 0700,
linked from ``RUN/ejabberd-run``). ``lab down`` copies its logs to ``RUN/ejabberd-logs`` and deletes it.

The launcher is ``ejabberdctl`` (a shell script); the server is the ``beam.smp`` it starts, whose PID
the lab records, samples and stops. Erlang distribution listens on a loopback port chosen at start
(``ERL_DIST_PORT``), so no ``epmd`` port mapper is started: nothing outlives the node, and nothing is
shared with other Erlang nodes on the machine. ejabberd has no metrics endpoint (``metrics_url`` is None).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from string import Template
from typing import Any

from xmpp_user.lab.lab import Lab
from xmpp_user.lab.procs import free_port, mentions, processes_mentioning

TEMPLATE = Path(__file__).with_name("ejabberd.yml.in")
USER = "ejabberd"
SERVER_PROGRAM = "beam.smp"
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# /tmp itself, not $TMPDIR: the ejabberd user must be able to reach the directory.
SERVER_DIR_PARENT = Path("/tmp")
SERVER_DIR_PREFIX = "locust-xmpp-ejabberd-"
LOG_LEVELS = {"warn": "warning", "info": "info", "debug": "debug"}
# SCRAM-SHA-256 for stored passwords (auth_scram_hash: sha256). ejabberd then offers PLAIN and
# SCRAM-SHA-256 on the account host, no SCRAM-SHA-1: stored keys fit one hash function only.
# "sha" (ejabberd's default) would offer SCRAM-SHA-1 instead.
SCRAM_HASH = "sha256"
SCRAM_MECHANISM = {"sha": "SCRAM-SHA-1", "sha256": "SCRAM-SHA-256", "sha512": "SCRAM-SHA-512"}[SCRAM_HASH]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EjabberdLab(Lab):
    server = "ejabberd"
    name = "ejabberd"
    install_hint = "ejabberd is not installed: run  sudo apt-get install -y --no-install-recommends ejabberd"
    storages = ("internal",)  # Mnesia on disk, fresh on every start; ejabberd has no memory-only store
    scram_mechanism = SCRAM_MECHANISM
    sasl_mechanisms = {"localhost": ("ANONYMOUS", "PLAIN"), "reg.localhost": ("PLAIN", SCRAM_MECHANISM)}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_dir: Path | None = None
        self.dist_port: int | None = None

    def _restore(self, record: dict[str, Any]) -> None:
        super()._restore(record)
        self.server_dir = _server_dir(record)
        self.dist_port = record.get("dist_port")

    # Paths

    @property
    def config_path(self) -> Path:
        """A copy of the rendered config, for reading; ejabberd reads its own in the server directory."""
        return self.run_dir / "ejabberd.yml"

    @property
    def link_path(self) -> Path:
        return self.run_dir / "ejabberd-run"

    @property
    def saved_logs_dir(self) -> Path:
        return self.run_dir / "ejabberd-logs"

    @property
    def log_path(self) -> Path:
        if self.server_dir is not None and self.server_dir.is_dir():
            return self.server_dir / "logs" / "ejabberd.log"
        return self.saved_logs_dir / "ejabberd.log"

    # Start

    def executable(self) -> str | None:
        # ejabberdctl lives in /usr/sbin, which a user's PATH may lack.
        return shutil.which("ejabberdctl", path=f"{os.environ.get('PATH', '')}:/usr/sbin")

    def render_config(self) -> str:
        return Template(TEMPLATE.read_text()).substitute(
            c2s_port=self.c2s_port,
            http_port=self.http_port,
            log_level=LOG_LEVELS[self.log_level],
            domain=self.domain,
            registered_domain=self.registered_domain,
            muc_domain=self.muc_domain,
            scram_hash=SCRAM_HASH,
            resume_timeout=self.resume_timeout,
            # Lines only --rooms persistent keeps; with stock they stay in the file as YAML comments.
            persistent="" if self.rooms == "persistent" else "# ",
        )

    def unavailable(self) -> str | None:
        if self.executable() is None:
            return self.install_hint
        if self.netns or self.interface != "127.0.0.1":
            return "the ejabberd lab listens on 127.0.0.1 only (a network namespace and interface are for Prosody's)"
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"there is no {USER} user (the package makes it): {self.install_hint.split(': ', 1)[1]}"
        if os.geteuid() != 0:
            return "the ejabberd lab runs ejabberd as the ejabberd user: start it as root"
        if shutil.which("setpriv") is None:
            return "setpriv is missing: run  sudo apt-get install -y util-linux"
        return None

    def _prepare(self) -> None:
        user = pwd.getpwnam(USER)
        self.dist_port = free_port()
        self.server_dir = Path(tempfile.mkdtemp(prefix=SERVER_DIR_PREFIX, dir=SERVER_DIR_PARENT))
        for sub in ("conf", "db", "logs", "home"):
            (self.server_dir / sub).mkdir()
        config = self.render_config()
        (self.server_dir / "conf" / "ejabberd.yml").write_text(config)
        self.config_path.write_text(config)
        (self.server_dir / "conf" / "ejabberdctl.cfg").write_text(self._ctl_config())
        (self.server_dir / "conf" / "inetrc").write_text("")  # ejabberdctl points Erlang's resolver config here
        for path in (self.server_dir, *self.server_dir.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        shutil.rmtree(self.saved_logs_dir, ignore_errors=True)
        self.link_path.unlink(missing_ok=True)
        self.link_path.symlink_to(self.server_dir)

    def _ctl_config(self) -> str:
        assert self.server_dir is not None
        # Sourced by ejabberdctl. ERL_DIST_PORT: Erlang distribution on this port, without epmd.
        return "\n".join([
            "# ejabberdctl settings of one locust-xmpp lab, written by xmpp_user.lab.",
            f"ERLANG_NODE=lab{self.http_port}@localhost",
            f"ERL_DIST_PORT={self.dist_port}",
            'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {127,0,0,1}"',
            f"EJABBERD_PID_PATH={self.server_dir}/ejabberd.pid",
            f"CONTRIB_MODULES_PATH={self.server_dir}/modules",
            f"CONTRIB_MODULES_CONF_DIR={self.server_dir}/modules/conf",
            "",
        ])

    def _command(self) -> list[str]:
        ctl = self.executable()
        assert ctl is not None and self.server_dir is not None
        conf = self.server_dir / "conf"
        return [
            "setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups",
            ctl, "--config-dir", str(conf), "--ctl-config", str(conf / "ejabberdctl.cfg"),
            "--config", str(conf / "ejabberd.yml"), "--spool", str(self.server_dir / "db"),
            "--logs", str(self.server_dir / "logs"), "foreground",
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        # A clean environment: no ERL_* or proxy settings of the caller's shell reach the node.
        assert self.server_dir is not None
        return {"PATH": SBIN_PATH, "HOME": str(self.server_dir / "home"), "LANG": "C.UTF-8"}

    def _record_extra(self) -> dict[str, Any]:
        return {"server_dir": str(self.server_dir), "dist_port": self.dist_port}

    def _find_server_pid(self) -> int | None:
        assert self.server_dir is not None
        found = processes_mentioning(self.server_dir, SERVER_PROGRAM)
        return found[0] if len(found) == 1 else None

    def _is_server(self, pid: int, record: dict[str, Any]) -> bool:
        server_dir = _server_dir(record)
        return server_dir is not None and mentions(pid, server_dir, SERVER_PROGRAM)

    def _serving(self) -> bool:
        # ejabberd opens its listeners last, once its modules run; any HTTP answer will do.
        try:
            with _OPENER.open(f"http://127.0.0.1:{self.http_port}/xmpp-websocket", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def _startup_problem(self) -> str | None:
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        # ejabberd gives up when a listener cannot bind, after logging which one and why.
        failed = re.search(r"Failed to open socket at 127\.0\.0\.1:(\d+) for \w+: (.+)", log)
        if failed is None:
            return None
        port, reason = failed.groups()
        if reason.strip() == "address already in use":
            return f"port {port} is already in use"
        return f"ejabberd cannot listen on port {port}: {reason.strip()}"
        return None

    # Stop

    def _stop_processes(self, record: dict[str, Any], timeout: float) -> bool:
        server_dir = _server_dir(record)
        if server_dir is None:
            return False
        # The node (normally the recorded PID; searched for if it died before it was recorded), then its
        # launcher, which ends by itself once the node is gone.
        beams = processes_mentioning(server_dir, SERVER_PROGRAM)
        for pid in beams:
            self._terminate(pid, lambda pid=pid: mentions(pid, server_dir, SERVER_PROGRAM), timeout)
        launcher = record.get("launcher_pid")
        if launcher and mentions(launcher, server_dir):
            if not self._wait_exit(launcher, lambda: mentions(launcher, server_dir), 5):
                self._terminate(launcher, lambda: mentions(launcher, server_dir), 5)
        return bool(beams)

    def _cleanup(self, record: dict[str, Any] | None) -> None:
        server_dir = _server_dir(record) if record else None
        if server_dir is None or not server_dir.is_dir() or processes_mentioning(server_dir, SERVER_PROGRAM):
            return
        self.saved_logs_dir.mkdir(parents=True, exist_ok=True)
        for log in (server_dir / "logs").glob("*.log"):
            shutil.copyfile(log, self.saved_logs_dir / log.name)
        shutil.rmtree(server_dir, ignore_errors=True)
        if self.link_path.is_symlink():
            self.link_path.unlink()
        self.server_dir = None


def _server_dir(record: dict[str, Any]) -> Path | None:
    """The recorded server directory, if it is one the lab makes (never delete anything else)."""
    path = Path(record.get("server_dir") or "")
    if path.parent == SERVER_DIR_PARENT and path.name.startswith(SERVER_DIR_PREFIX):
        return path
    return None
