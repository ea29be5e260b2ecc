"""Write the files that the kustomizations of ``k8s/`` make ConfigMaps of and that live elsewhere in the tree:
kustomize reads no file outside a kustomization's directory.

    python k8s/build.py          # copy locustfiles/*.py to k8s/base/locustfiles/, render k8s/prosody/prosody.cfg.lua
    python k8s/build.py --check  # exit 1 if a committed copy differs from what this script writes

``k8s/prosody/prosody.cfg.lua`` is the lab's Prosody configuration (``xmpp_user/lab/prosody.cfg.lua.in``, rooms
persistent, internal storage) rendered for a pod: it listens on every interface of the pod (c2s 5222, HTTP and
WebSocket 5280), keeps its files in the pod's run directory and logs to the console.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, without installing the package

from xmpp_user.lab.prosody import ProsodyLab  # noqa: E402

LOCUSTFILES = ROOT / "locustfiles"
LOCUSTFILES_COPY = ROOT / "k8s" / "base" / "locustfiles"
PROSODY_CONFIG = ROOT / "k8s" / "prosody" / "prosody.cfg.lua"
PROSODY_RUN_DIR = "/var/lib/prosody-lab"
"""The Prosody pod's run directory (an emptyDir): its data, PID file and admin socket."""
PROSODY_CONFIG_DIR = "/etc/prosody-lab"
"""Where the pod mounts the ConfigMap of the configuration."""
PROSODY_C2S_PORT = 5222
PROSODY_HTTP_PORT = 5280

HEADER = """\
-- Prosody configuration for the locust-xmpp lab in a Kubernetes pod (k8s/prosody), written by k8s/build.py from
-- xmpp_user/lab/prosody.cfg.lua.in: edit that file, then run  python k8s/build.py. As the lab's, except that it
-- listens on every interface of the pod, logs to the console, and runs as the pod's non-root user.
-- No TLS, tuned so that the server, not its configuration, limits a load test.
"""


def _replace(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"k8s/build.py: the lab's Prosody template changed: {old.strip()!r} is not in it once")
    return text.replace(old, new)


def prosody_config() -> str:
    lab = ProsodyLab(PROSODY_RUN_DIR, c2s_port=PROSODY_C2S_PORT, http_port=PROSODY_HTTP_PORT, storage="internal",
                     log_level="warn", rooms="persistent")  # fmt: skip
    text = lab.render_config()
    head, _, body = text.partition("\n\n")  # the template's opening comment, then the settings
    assert head.startswith("-- Prosody configuration for the locust-xmpp lab"), head
    text = HEADER + "\n" + body
    text = _replace(text, "run_as_root = true -- CI and lab machines run as root; Prosody refuses otherwise.\n", "")
    text = _replace(text, f'to = "file", filename = "{PROSODY_RUN_DIR}/prosody.log" }};', 'to = "console" };')
    text = _replace(text, '-- 127.0.0.1, or the lab\'s own address in a network namespace (Lab\'s interface).\n'
                    'interfaces = { "127.0.0.1" }\nhttp_interfaces = { "127.0.0.1" }\n',
                    '-- Every interface of the pod: the Service xmpp-server reaches it on its address.\n'
                    'interfaces = { "*" }\nhttp_interfaces = { "*" }\n')  # fmt: skip
    text = _replace(text, f'certificates = "{PROSODY_RUN_DIR}/certs"',
                    '-- No TLS, so no certificates: a directory that exists (Prosody does not create one).\n'
                    f'certificates = "{PROSODY_CONFIG_DIR}"')  # fmt: skip
    text = _replace(text, "-- Clients reach us as http://ADDRESS:PORT;",
                    "-- Clients reach us by the Service's name (http://xmpp-server:5280);")  # fmt: skip
    return text


def outputs() -> dict[Path, str]:
    """Every file this script writes, with its content."""
    files = {LOCUSTFILES_COPY / path.name: path.read_text() for path in sorted(LOCUSTFILES.glob("*.py"))}
    files[PROSODY_CONFIG] = prosody_config()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed copy is not up to date")
    args = parser.parse_args(argv)
    files = outputs()
    stale = sorted(set(LOCUSTFILES_COPY.glob("*.py")) - set(files))
    if args.check:
        wrong = [path for path, text in files.items() if not path.exists() or path.read_text() != text] + stale
        for path in wrong:
            print(f"{path.relative_to(ROOT)} is not what k8s/build.py writes: run  python k8s/build.py",
                  file=sys.stderr)  # fmt: skip
        return 1 if wrong else 0
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
