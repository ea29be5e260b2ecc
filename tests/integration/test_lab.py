"""The lab Prosody: it starts, serves WebSocket and /metrics on loopback, and the CLI drives it."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from xmpp_user.lab import lab as lab_module
from xmpp_user.lab.lab import INSTALL_HINT, Lab, LabError, free_port

REPO = Path(__file__).resolve().parents[2]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xmpp_user.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def websocket_handshake(port: int, protocol: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": WS_KEY,
               "Sec-WebSocket-Version": "13"}
    if protocol:
        headers["Sec-WebSocket-Protocol"] = protocol
    try:
        conn.request("GET", "/xmpp-websocket", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def running(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie
    except OSError:
        return False


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory for a second lab driven through the CLI; whatever runs there is stopped afterwards."""
    yield tmp_path
    Lab.from_record(tmp_path).down()


def test_lab_serves_c2s_and_http(lab: Lab) -> None:
    assert lab.pid is not None
    for port in (lab.c2s_port, lab.http_port):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert lab.websocket_url == f"ws://127.0.0.1:{lab.http_port}/xmpp-websocket"
    assert lab.c2s_address == ("127.0.0.1", lab.c2s_port)


def scrape(lab: Lab) -> str:
    with NO_PROXY.open(lab.metrics_url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def test_metrics_expose_prosody_families(lab: Lab) -> None:
    families = {line.split()[2] for line in scrape(lab).splitlines() if line.startswith("# TYPE ")}
    useful = {"prosody_mod_c2s__connections", "prosody_mod_muc__live_room", "prosody_mod_smacks__sessions_started"}
    assert useful <= families


def test_metrics_count_a_websocket_session(lab: Lab) -> None:
    # The type label goes c2s_unauthed, c2s_unbound, then c2s once a resource is bound; "manual" statistics
    # make the sample current at each scrape.
    open_ = f"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{lab.domain}' version='1.0'/>"
    ws = websocket.create_connection(lab.websocket_url, subprotocols=["xmpp"], timeout=5)
    try:
        ws.send(open_)
        assert "<open" in ws.recv()
        assert "ANONYMOUS" in ws.recv()
        ws.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        assert "<success" in ws.recv()
        ws.send(open_)
        assert "<open" in ws.recv()
        assert "bind" in ws.recv()
        ws.send("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        assert "<jid>" in ws.recv()
        sample = f'prosody_mod_c2s__connections{{host="{lab.domain}",type="c2s",ip_family="ipv4"}} '
        counts = [line for line in scrape(lab).splitlines() if line.startswith(sample)]
        assert counts and int(counts[0].split()[-1]) >= 1
    finally:
        ws.close()


def test_websocket_requires_xmpp_subprotocol(lab: Lab) -> None:
    assert websocket_handshake(lab.http_port, None) == 501
    assert websocket_handshake(lab.http_port, "xmpp") == 101


def test_cpu_and_memory_of_the_server(lab: Lab) -> None:
    assert lab.cpu_seconds() > 0
    assert lab.rss_bytes() > 1 << 20
    status = lab.status()
    assert status["running"] and status["pid"] == lab.pid and status["rss_bytes"] > 0


def test_up_again_in_process_is_a_no_op(lab: Lab) -> None:
    pid = lab.pid
    assert lab.up() is False
    assert lab.pid == pid


def test_rendered_config_passes_prosodyctl_check(lab: Lab) -> None:
    result = subprocess.run(
        ["prosodyctl", "--config", str(lab.config_path), "check", "config"],
        capture_output=True, text=True, timeout=60,
    )
    # Its only remark is a warning that public registration is on, which is the point of reg.localhost.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed" in result.stdout


def test_cli_up_status_down(lab_dir: Path) -> None:
    c2s, http = free_port(), free_port()
    up = cli("lab", "up", "--run-dir", str(lab_dir), "--c2s-port", str(c2s), "--http-port", str(http))
    assert up.returncode == 0, up.stderr
    assert f"ws://127.0.0.1:{http}/xmpp-websocket" in up.stdout
    pid = Lab.from_record(lab_dir).pid
    assert pid is not None

    again = cli("lab", "up", "--run-dir", str(lab_dir), "--c2s-port", str(c2s), "--http-port", str(http))
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert Lab.from_record(lab_dir).pid == pid

    # status and down find the ports in the run directory, with no port options.
    status = cli("lab", "status", "--run-dir", str(lab_dir))
    assert status.returncode == 0, status.stderr
    assert f"pid {pid}" in status.stdout and f"http://127.0.0.1:{http}/metrics" in status.stdout
    assert "MiB" in status.stdout

    down = cli("lab", "down", "--run-dir", str(lab_dir))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not running(pid)

    stopped = cli("lab", "status", "--run-dir", str(lab_dir))
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    down_again = cli("lab", "down", "--run-dir", str(lab_dir))
    assert down_again.returncode == 0 and "not running" in down_again.stdout


def test_run_dir_from_environment(lab_dir: Path) -> None:
    env = {**os.environ, "LOCUST_XMPP_LAB_DIR": str(lab_dir)}
    result = cli("lab", "status", env=env)
    assert result.returncode == 3
    assert str(lab_dir) in result.stdout


def test_cli_port_in_use_is_one_line(lab_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("lab", "up", "--run-dir", str(lab_dir), "--c2s-port", str(port), "--http-port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr == f"locust-xmpp: error: port {port} is already in use\n"
    assert Lab.from_record(lab_dir).pid is None


def test_port_in_use_seen_by_prosody(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the pre-check (a port taken in between): Prosody keeps running without the port, logs it, and
    # the lab must notice, stop it and say which port.
    monkeypatch.setattr(lab_module, "port_in_use", lambda port: False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        lab = Lab(lab_dir, c2s_port=free_port(), http_port=port)
        with pytest.raises(LabError, match=f"^port {port} is already in use$"):
            lab.up(timeout=10)
    assert lab.pid is None


def test_cli_rejects_bad_values() -> None:
    for args in (["--c2s-port", "0"], ["--http-port", "70000"], ["--storage", "sql"]):
        result = cli("lab", "up", *args)
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("locust-xmpp lab up: error: "), result.stderr
        assert "Traceback" not in result.stderr


def test_missing_prosody_is_one_line(lab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = tmp_path_factory.mktemp("empty-path")
    result = cli("lab", "up", "--run-dir", str(lab_dir), "--c2s-port", str(free_port()),
                 "--http-port", str(free_port()), env={**os.environ, "PATH": str(empty)})
    assert result.returncode == 2
    assert result.stderr == f"locust-xmpp: error: {INSTALL_HINT}\n"


def test_cli_register_accounts_on_the_lab(lab: Lab) -> None:
    result = cli("lab", "register", "--run-dir", str(lab.run_dir), "--count", "3", "--prefix", "labtest")
    assert result.returncode == 0, result.stderr
    assert f"3 accounts ready: labtest0..labtest2@{lab.registered_domain}" in result.stdout
