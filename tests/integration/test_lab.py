"""The lab servers (Prosody and ejabberd): they start, serve WebSocket on loopback with the names and room
settings the lab promises, and the CLI drives them; ``lab down`` leaves nothing of theirs running."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import locust  # noqa: F401  (gevent monkey patching before sockets are made)
import pytest
from rawxmpp import RawSession, mechanisms, status_codes

from xmpp_user.core import sasl
from xmpp_user.core.stanza import bare
from xmpp_user.core.stream import Credentials
from xmpp_user.lab import ejabberd as ejabberd_module
from xmpp_user.lab import lab as lab_module
from xmpp_user.lab.lab import SERVERS, Lab, LabError, free_port
from xmpp_user.lab.prosody import INSTALL_HINT
from xmpp_user.session.client import XmppClient

REPO = Path(__file__).resolve().parents[2]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
DISCO_INFO = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
INSTANT_ROOM = "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query>"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xmpp_user.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def websocket_handshake(port: int, protocol: str | None) -> tuple[int, str | None]:
    """Status of a WebSocket upgrade on /xmpp-websocket, and the subprotocol the server chose."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": WS_KEY,
               "Sec-WebSocket-Version": "13"}
    if protocol:
        headers["Sec-WebSocket-Protocol"] = protocol
    try:
        conn.request("GET", "/xmpp-websocket", headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Sec-WebSocket-Protocol")
    finally:
        conn.close()


def running(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes with ``text`` in their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(os.getpid()):
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in args:
                found.append(int(entry))
    return found


def epmd_pids() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == "epmd":
                found.add(int(entry))
        except OSError:
            continue
    return found


def soft_open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit")


def skip_unless_available(server: str) -> None:
    reason = Lab(server=server).unavailable()
    if reason:
        pytest.skip(reason)


def room_jid(lab: Lab, prefix: str = "labtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@{lab.muc_domain}"


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory for a second lab driven through the CLI; whatever runs there is stopped afterwards."""
    yield tmp_path
    Lab.from_record(tmp_path).down()


# ---- the session's lab (one per server) ----


def test_lab_serves_c2s_and_http(lab: Lab) -> None:
    assert lab.pid is not None
    for port in (lab.c2s_port, lab.http_port):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert lab.websocket_url == f"ws://127.0.0.1:{lab.http_port}/xmpp-websocket"
    assert lab.c2s_address == ("127.0.0.1", lab.c2s_port)
    assert (lab.domain, lab.registered_domain, lab.muc_domain) == ("localhost", "reg.localhost", "muc.localhost")


def test_lab_names_its_server_and_room_setting(lab: Lab) -> None:
    assert lab.server in SERVERS and lab.rooms == "persistent"
    again = Lab.from_record(lab.run_dir)
    assert (type(again), again.server, again.rooms, again.pid, again.http_port) == (
        type(lab), lab.server, lab.rooms, lab.pid, lab.http_port)  # fmt: skip
    status = lab.status()
    assert (status["server"], status["rooms"], status["pid"]) == (lab.server, "persistent", lab.pid)


def test_the_pid_is_the_server_doing_the_work(lab: Lab) -> None:
    args = Path(f"/proc/{lab.pid}/cmdline").read_bytes().split(b"\0")
    if lab.server == "ejabberd":
        # The Erlang VM, not its ejabberdctl launcher; as the ejabberd user; Erlang distribution without epmd.
        assert os.path.basename(args[0]) == b"beam.smp"
        assert os.stat(f"/proc/{lab.pid}").st_uid == pwd.getpwnam("ejabberd").pw_uid
        assert b"-start_epmd" in args and args[args.index(b"-start_epmd") + 1] == b"false"
    else:
        assert os.fsencode(lab.config_path) in args
    # The soft open-file limit is raised to the hard one: load tests hold thousands of connections.
    assert soft_open_files_limit(lab.pid) >= 4096


def scrape(lab: Lab) -> str:
    assert lab.metrics_url is not None
    with NO_PROXY.open(lab.metrics_url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def test_metrics_endpoint(lab: Lab) -> None:
    if lab.server == "ejabberd":
        # No metrics endpoint: callers tell by metrics_url being None (CPU and memory come from /proc).
        assert lab.metrics_url is None and lab.status()["metrics_url"] is None
        return
    families = {line.split()[2] for line in scrape(lab).splitlines() if line.startswith("# TYPE ")}
    useful = {"prosody_mod_c2s__connections", "prosody_mod_muc__live_room", "prosody_mod_smacks__sessions_started"}
    assert useful <= families


def test_metrics_count_a_websocket_session(lab: Lab) -> None:
    if lab.metrics_url is None:
        pytest.skip(f"{lab.server} has no metrics endpoint")
    # The type label goes c2s_unauthed, c2s_unbound, then c2s once a resource is bound; "manual" statistics
    # make the sample current at each scrape.
    session = RawSession(lab.websocket_url, lab.domain)
    try:
        session.login_anonymous()
        sample = f'prosody_mod_c2s__connections{{host="{lab.domain}",type="c2s",ip_family="ipv4"}} '
        counts = [line for line in scrape(lab).splitlines() if line.startswith(sample)]
        assert counts and int(counts[0].split()[-1]) >= 1
    finally:
        session.close()


def test_websocket_serves_the_xmpp_subprotocol(lab: Lab) -> None:
    assert websocket_handshake(lab.http_port, "xmpp") == (101, "xmpp")
    if lab.server == "prosody":
        assert websocket_handshake(lab.http_port, None) == (501, None)
    else:
        # ejabberd upgrades without a subprotocol too (and names none): clients must still offer "xmpp".
        assert websocket_handshake(lab.http_port, None) == (101, None)


def test_sasl_mechanisms_per_host(lab: Lab) -> None:
    for host, expected in lab.sasl_mechanisms.items():
        session = RawSession(lab.websocket_url, host)
        try:
            features = session.open()
        finally:
            session.ws.close()
        assert mechanisms(features) == set(expected), host
        assert ("iq-register" in features) == (host != lab.domain), host  # the account hosts register
    assert lab.scram_mechanism in lab.sasl_mechanisms[lab.registered_domain]


def test_anonymous_login_with_the_client(lab: Lab) -> None:
    client = XmppClient(lab.websocket_url, lab.domain, timeout=5)
    try:
        client.connect()
        assert bare(client.jid).endswith(f"@{lab.domain}") and client.jid.count("/") == 1
        client.ping()
    finally:
        client.close()


def test_in_band_registration_then_logins_with_the_client(lab: Lab) -> None:
    username, password = f"labreg-{uuid.uuid4().hex[:8]}", "s3cret"
    # The client registers in-band, then logs in on the same stream (PLAIN: every lab offers it).
    client = XmppClient(lab.websocket_url, lab.registered_domain, Credentials("PLAIN", username, password),
                        register=True, timeout=5)  # fmt: skip
    try:
        client.connect()
        assert bare(client.jid) == f"{username}@{lab.registered_domain}"
    finally:
        client.close()
    if lab.scram_mechanism not in sasl.MECHANISMS:
        pytest.xfail(f"the client has no {lab.scram_mechanism}, the only SCRAM the {lab.server} lab offers")
    client = XmppClient(lab.websocket_url, lab.registered_domain, Credentials(lab.scram_mechanism, username, password),
                        timeout=5)  # fmt: skip
    try:
        client.connect()
        assert bare(client.jid) == f"{username}@{lab.registered_domain}"
    finally:
        client.close()


def test_cpu_and_memory_of_the_server(lab: Lab) -> None:
    assert lab.cpu_seconds() > 0
    assert lab.rss_bytes() > 1 << 20
    status = lab.status()
    assert status["running"] and status["pid"] == lab.pid and status["rss_bytes"] > 0


def test_up_again_in_process_is_a_no_op(lab: Lab) -> None:
    pid = lab.pid
    assert lab.up() is False
    assert lab.pid == pid


def test_rendered_config_is_clean(lab: Lab, tmp_path: Path) -> None:
    if lab.server == "prosody":
        result = subprocess.run(
            ["prosodyctl", "--config", str(lab.config_path), "check", "config"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        # Its only remark is a warning that public registration is on, which is the point of reg.localhost.
        assert result.returncode == 0, result.stdout + result.stderr
        assert "All checks passed" in result.stdout
        return
    # ejabberd has no offline check: a fresh one starts from the config and logs no error and no warning but
    # the one about MAM in Mnesia (it prefers SQL). A fresh one, since the session's logs what tests do to it.
    fresh = Lab(tmp_path, c2s_port=free_port(), http_port=free_port(), server="ejabberd")
    with fresh:
        log = fresh.log_path.read_text()
    assert "[error]" not in log and "[critical]" not in log, log
    warnings = [line for line in log.splitlines() if "[warning]" in line]
    assert all("Mnesia backend for mod_mam is not recommended" in line for line in warnings), warnings


def test_persistent_rooms_outlive_their_occupants(lab: Lab) -> None:
    room = room_jid(lab)
    session = RawSession(lab.websocket_url, lab.domain)
    try:
        session.login_anonymous()
        assert {"110", "201"} <= status_codes(session.join(f"{room}/one"))
        session.leave(f"{room}/one")
        info = session.iq(room, DISCO_INFO, "info")
        assert "type='result'" in info and "muc_persistent" in info and "urn:xmpp:mam:2" in info, info
    finally:
        session.close()


def test_cli_register_accounts_on_the_lab(lab: Lab) -> None:
    result = cli("lab", "register", "--run-dir", str(lab.run_dir), "--count", "3", "--prefix", "labtest")
    assert result.returncode == 0, result.stderr
    assert f"3 accounts ready: labtest0..labtest2@{lab.registered_domain}" in result.stdout


# ---- --rooms stock: each server's own room defaults ----


def test_stock_rooms_keep_the_server_defaults_in_the_config(stock_lab: Lab) -> None:
    assert stock_lab.rooms == "stock" and Lab.from_record(stock_lab.run_dir).rooms == "stock"
    config = stock_lab.config_path.read_text()
    if stock_lab.server == "prosody":
        assert "\n\t-- muc_room_default_persistent = true" in config and "\n\t-- muc_room_locking = false" in config
    else:
        assert "\n          # persistent: true" in config


def test_stock_rooms_are_temporary_and_archived(stock_lab: Lab) -> None:
    room = room_jid(stock_lab)
    session = RawSession(stock_lab.websocket_url, stock_lab.domain)
    try:
        session.login_anonymous()
        session.join(f"{room}/one")
        info = session.iq(room, DISCO_INFO, "info")
        assert "muc_temporary" in info or "muc_persistent" not in info, info
        assert "urn:xmpp:mam:2" in info, info  # archived in both settings
        session.leave(f"{room}/one")
        gone = session.iq(room, DISCO_INFO, "gone")
        assert "type='error'" in gone and "item-not-found" in gone, gone
    finally:
        session.close()


def test_stock_room_locking(stock_lab: Lab) -> None:
    room = room_jid(stock_lab)
    owner, other = (RawSession(stock_lab.websocket_url, stock_lab.domain) for _ in range(2))
    try:
        owner.login_anonymous()
        other.login_anonymous()
        assert "201" in status_codes(owner.join(f"{room}/owner"))
        early = other.join(f"{room}/other")
        if stock_lab.server == "prosody":
            # Locked until its creator submits the configuration form (muc_room_locking defaults to true).
            assert any("type='error'" in f and "item-not-found" in f for f in early), early
        else:
            assert "110" in status_codes(early), early  # ejabberd does not lock new rooms
        assert "type='result'" in owner.iq(room, INSTANT_ROOM, "cfg", type_="set")
        assert "110" in status_codes(other.join(f"{room}/other"))
    finally:
        owner.close()
        other.close()


# ---- second labs, driven through the CLI ----


@pytest.mark.parametrize("server", SERVERS)
def test_cli_up_status_down(server: str, lab_dir: Path) -> None:
    skip_unless_available(server)
    epmd_before = epmd_pids()
    c2s, http = free_port(), free_port()
    ports = ["--c2s-port", str(c2s), "--http-port", str(http)]
    up = cli("lab", "up", "--server", server, "--run-dir", str(lab_dir), *ports)
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith(f"lab started: {server}, pid ")
    assert f"ws://127.0.0.1:{http}/xmpp-websocket" in up.stdout and "rooms       persistent" in up.stdout
    record = json.loads((lab_dir / "lab.json").read_text())
    pid, launcher = record["pid"], record["launcher_pid"]
    lab = Lab.from_record(lab_dir)
    assert (lab.server, lab.pid) == (server, pid)

    again = cli("lab", "up", "--server", server, "--run-dir", str(lab_dir), *ports)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"lab already running: {server}, pid {pid}")
    assert Lab.from_record(lab_dir).pid == pid

    # status and down find the server and its ports in the run directory, with no options.
    status = cli("lab", "status", "--run-dir", str(lab_dir))
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"lab running: {server}, pid {pid}") and "MiB" in status.stdout
    metrics = f"http://127.0.0.1:{http}/metrics" if server == "prosody" else "none (ejabberd has no metrics endpoint"
    assert metrics in status.stdout and "rooms       persistent" in status.stdout

    down = cli("lab", "down", "--run-dir", str(lab_dir))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not running(pid) and not running(launcher)
    assert processes_mentioning(str(lab_dir)) == []
    if server == "ejabberd":
        server_dir = record["server_dir"]
        assert processes_mentioning(server_dir) == [] and not Path(server_dir).exists()
        assert (lab_dir / "ejabberd-logs" / "ejabberd.log").is_file()
    assert epmd_pids() <= epmd_before  # no Erlang port mapper started, none left behind

    stopped = cli("lab", "status", "--run-dir", str(lab_dir))
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    down_again = cli("lab", "down", "--run-dir", str(lab_dir))
    assert down_again.returncode == 0 and "not running" in down_again.stdout


def test_cli_stock_rooms_and_server_in_status(lab_dir: Path) -> None:
    up = cli("lab", "up", "--rooms", "stock", "--run-dir", str(lab_dir), "--c2s-port", str(free_port()),
             "--http-port", str(free_port()))  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("lab started: prosody, pid ") and "rooms       stock" in up.stdout
    status = cli("lab", "status", "--run-dir", str(lab_dir))
    assert status.stdout.startswith("lab running: prosody, pid ") and "rooms       stock" in status.stdout


def test_another_server_in_the_same_run_dir_is_refused(lab_dir: Path) -> None:
    for server in SERVERS:
        skip_unless_available(server)
    Lab(lab_dir, c2s_port=free_port(), http_port=free_port(), server="prosody").up()
    result = cli("lab", "up", "--server", "ejabberd", "--run-dir", str(lab_dir), "--c2s-port", str(free_port()),
                 "--http-port", str(free_port()))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (f"locust-xmpp: error: a prosody lab is already running in {lab_dir}: "
                             "stop it first with  locust-xmpp lab down\n")  # fmt: skip
    assert Lab.from_record(lab_dir).server == "prosody"


def test_run_dir_from_environment(lab_dir: Path) -> None:
    env = {**os.environ, "LOCUST_XMPP_LAB_DIR": str(lab_dir)}
    result = cli("lab", "status", env=env)
    assert result.returncode == 3
    assert str(lab_dir) in result.stdout


@pytest.mark.parametrize("server", SERVERS)
def test_cli_port_in_use_is_one_line(server: str, lab_dir: Path) -> None:
    skip_unless_available(server)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("lab", "up", "--server", server, "--run-dir", str(lab_dir), "--c2s-port", str(port),
                     "--http-port", str(free_port()))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"locust-xmpp: error: port {port} is already in use\n"
    assert Lab.from_record(lab_dir).pid is None


@pytest.mark.parametrize("server", SERVERS)
def test_port_in_use_seen_by_the_server(server: str, lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the pre-check (a port taken in between): Prosody keeps running without the port and logs it,
    # ejabberd logs it and gives up; the lab must notice, stop what runs and say which port.
    skip_unless_available(server)
    monkeypatch.setattr(lab_module, "port_in_use", lambda port, *_where: False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        lab = Lab(lab_dir, c2s_port=free_port(), http_port=port, server=server)
        with pytest.raises(LabError, match=f"^port {port} is already in use$"):
            lab.up(timeout=15)
    assert lab.pid is None
    assert processes_mentioning(str(lab_dir)) == []


def test_cli_rejects_bad_values() -> None:
    for args in (["--c2s-port", "0"], ["--http-port", "70000"], ["--storage", "sql"], ["--server", "openfire"],
                 ["--rooms", "temporary"]):  # fmt: skip
        result = cli("lab", "up", *args)
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("locust-xmpp lab up: error: "), result.stderr
        assert "Traceback" not in result.stderr
    memory = cli("lab", "up", "--server", "ejabberd", "--storage", "memory")
    assert memory.returncode == 2
    assert memory.stderr == "locust-xmpp: error: the ejabberd lab has no memory storage (choose from internal)\n"


def test_missing_prosody_is_one_line(lab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = tmp_path_factory.mktemp("empty-path")
    result = cli("lab", "up", "--run-dir", str(lab_dir), "--c2s-port", str(free_port()),
                 "--http-port", str(free_port()), env={**os.environ, "PATH": str(empty)})
    assert result.returncode == 2
    assert result.stderr == f"locust-xmpp: error: {INSTALL_HINT}\n"


def test_missing_ejabberd_is_one_line(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ejabberdctl is looked for in /usr/sbin as well as PATH, so an empty PATH cannot hide it: hide it here.
    monkeypatch.setattr(ejabberd_module.shutil, "which", lambda *args, **kwargs: None)
    lab = Lab(lab_dir, c2s_port=free_port(), http_port=free_port(), server="ejabberd")
    hint = "ejabberd is not installed: run  sudo apt-get install -y --no-install-recommends ejabberd"
    assert lab.unavailable() == hint
    with pytest.raises(LabError, match=f"^{hint}$"):
        lab.up()
