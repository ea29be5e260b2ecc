"""The Prosody pod of ``k8s/prosody`` without a cluster: its two containers' commands run as the pod would run them,
in namespaces of the test's own (network, mount, PID: one process namespace for both, as shareProcessNamespace
gives), as the pod's non-root user, with only the pod's run directory writable. Prosody with the rendered lab
config answers the readiness probe and c2s on an address other than loopback (it listens on every interface of the
pod), logs no error, writes nothing but its run directory (/tmp and /var/tmp stay empty: the pod has no volume
there); the exporter, as the same user, reads Prosody's CPU, memory and open files and passes on its own metrics.
Needs root (namespaces, setpriv) and Debian's Prosody.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "k8s" / "prosody" / "prosody.yaml"
CONFIG = REPO / "k8s" / "prosody" / "prosody.cfg.lua"
SCRATCH = "/mnt"
"""Where the test's scratch directory appears inside the namespaces (its own /tmp is an empty one there)."""
POD_ADDRESS = "10.254.0.1"
"""The pod's address in the test's network namespace (a veth pair of its own, routed nowhere)."""

# Runs as root inside the namespaces: sets up the pod's view, starts both containers as the pod's user, checks.
INSIDE = r"""
set -eu
scratch=$1; venv=$2; uid=$3; run_dir=$4; prosody_command=$5; exporter_command=$6
shift 6  # the rest: check.py's arguments
ip link set lo up
ip link add pod0 type veth peer name pod1
ip addr add POD_ADDRESS/24 dev pod0
ip link set pod0 up
ip link set pod1 up
# The scratch directory moves to /mnt, so that /tmp and /var/tmp can be empty ones, to see who writes there: the
# pod's root filesystem is read-only, and neither container has a volume there.
mount --bind "$scratch" SCRATCH
scratch=SCRATCH
# The clone (the venv and the package it runs) may itself live under /tmp: kept visible at its own path.
repo=$(dirname "$venv")
mkdir "$scratch/repo"
mount --bind "$repo" "$scratch/repo"
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# The pod's run directory (an emptyDir), writable by the pod's user only: /var/lib of this mount namespace.
mount -t tmpfs -o mode=755 tmpfs /var/lib
case "$repo" in
    /tmp/*|/var/tmp/*|/var/lib/*) mkdir -p "$repo"; mount --bind "$scratch/repo" "$repo" ;;
esac
mkdir -p "$run_dir/data"
chown -R "$uid:$uid" "$run_dir"
# The venv's Python may live under /root (mode 700): lent to the pod's user in this mount namespace only.
if [ -d /root/.pyenv ]; then
    mkdir "$scratch/pyenv"
    mount --bind /root/.pyenv "$scratch/pyenv"
    mount -t tmpfs -o mode=755 tmpfs /root
    mkdir /root/.pyenv
    mount --bind "$scratch/pyenv" /root/.pyenv
fi
as_pod="setpriv --reuid $uid --regid $uid --clear-groups --inh-caps=-all --bounding-set=-all"
HOME=/nonexistent $as_pod sh -c "exec $prosody_command" > "$scratch/prosody.log" 2>&1 &
HOME=/tmp $as_pod sh -c "until $exporter_command; do sleep 0.5; done" > "$scratch/exporter.log" 2>&1 &
"$venv/bin/python" "$scratch/check.py" "$@" > "$scratch/result.json"
find "$run_dir" /tmp /var/tmp -path "$repo" -prune -o \( -type f -o -type s \) -print > "$scratch/written.txt"
""".replace("POD_ADDRESS", POD_ADDRESS).replace("SCRATCH", SCRATCH)

CHECK = r"""
import json, socket, sys, time, urllib.request
address, http_port, probe_path, c2s_port, metrics_port = sys.argv[1:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
result = {}
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        with opener.open(f"http://{address}:{http_port}{probe_path}", timeout=2) as response:
            result["probe"] = response.status
        with socket.create_connection((address, int(c2s_port)), 2):
            result["c2s"] = True
        with opener.open(f"http://{address}:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        if "xmpp_server_metrics_up 1.0" not in metrics:
            raise OSError("the exporter has not fetched Prosody's metrics yet")
        result["metrics"] = [line for line in metrics.splitlines() if not line.startswith("#")]
        break
    except OSError as exc:
        result["last_error"] = str(exc)
        time.sleep(0.3)
print(json.dumps(result))
"""


def _deployment() -> dict[str, Any]:
    [deployment] = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "Deployment"]
    return deployment


def test_the_prosody_pod_serves_on_every_interface_as_its_user_and_its_exporter_watches_it(tmp_path: Path) -> None:
    missing = [tool for tool in ("unshare", "setpriv", "ip", "prosody") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'namespaces'} to run the pod's containers")
    pod = _deployment()["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    prosody, exporter = containers["prosody"], containers["exporter"]
    uid = pod["securityContext"]["runAsUser"]
    mounts = {m["name"]: m["mountPath"] for m in prosody["volumeMounts"]}
    config_dir, run_dir = mounts["config"], mounts["run"]
    ports = {p["name"]: p["containerPort"] for p in prosody["ports"]}
    metrics_port = exporter["ports"][0]["containerPort"]

    # /tmp/pytest-of-root is root's only: the pod's user reads its config from a scratch directory of its own, seen
    # as SCRATCH inside; SCRATCH/config stands for the ConfigMap's mount (the config names it too, for certificates).
    scratch = Path(subprocess.run(["mktemp", "-d", "/tmp/k8s-prosody-XXXXXX"], capture_output=True, text=True,
                                  check=True).stdout.strip())  # fmt: skip
    try:
        scratch.chmod(0o755)
        (scratch / "config").mkdir()
        (scratch / "config" / "prosody.cfg.lua").write_text(CONFIG.read_text().replace(config_dir, f"{SCRATCH}/config"))
        (scratch / "check.py").write_text(CHECK)
        prosody_command = " ".join(prosody["command"]).replace(config_dir, f"{SCRATCH}/config")
        venv_bin = Path(sys.executable).parent
        exporter_command = " ".join([str(venv_bin / exporter["command"][0]), *exporter["command"][1:]])
        checks = [POD_ADDRESS, str(ports["http"]), prosody["readinessProbe"]["httpGet"]["path"], str(ports["c2s"]),
                  str(metrics_port)]  # fmt: skip
        result = subprocess.run(["timeout", "90", "unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc",
                                 "sh", "-c", INSIDE, "inside", str(scratch), str(venv_bin.parent), str(uid), run_dir,
                                 prosody_command, exporter_command, *checks], capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        logs = {name: (scratch / f"{name}.log").read_text() for name in ("prosody", "exporter")}
        assert result.returncode == 0, (result.stdout, result.stderr, logs)
        found = json.loads((scratch / "result.json").read_text())
        written = (scratch / "written.txt").read_text().split()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert found.get("probe") == 200, (found, logs)
    assert found.get("c2s") is True, (found, logs)
    metrics = dict(line.rsplit(" ", 1) for line in found["metrics"] if "{" not in line)
    assert metrics["xmpp_server_up"] == "1.0"
    assert float(metrics["xmpp_server_process_open_fds"]) > 3, "the exporter reads Prosody's fds: same user"
    assert float(metrics["xmpp_server_process_resident_memory_bytes"]) > 0
    assert any(line.startswith("prosody_") for line in found["metrics"]), "Prosody's own metrics, passed on"
    assert not re.search(r"\serror\t", logs["prosody"]), logs["prosody"]
    assert all(path.startswith(run_dir + "/") for path in written), written
    assert f"{run_dir}/prosody.pid" in written
