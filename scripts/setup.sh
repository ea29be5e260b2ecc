#!/usr/bin/env bash
# Installs everything locust-xmpp needs on a fresh Debian/Ubuntu machine, idempotently:
# Prosody and ejabberd (the lab servers), Chromium (for the web UI tests) and Prometheus (promtool checks
# the dashboard's queries; the exporter and report tests run a private one) from apt, the package with
# its test tools (Playwright, kubernetes-validate, kmock) in .venv, and, where npm is, the Node test
# tools of tests/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prosody >/dev/null || need_apt+=(prosody)
# ejabberdctl lives in /usr/sbin, which a user's PATH may lack.
[ -x /usr/sbin/ejabberdctl ] || need_apt+=(ejabberd)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# Debian's Chromium, for the web UI test (Playwright drives it; it cannot download its own browser here).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# Prometheus: promtool checks the exporters' output, the scrape config and the dashboard's PromQL; the exporter
# and report tests run a private one (never the service).
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
# Tsung, the generator benchmarks/tsung_compare.py measures ours against (an Erlang program: ejabberd brings the runtime).
command -v tsung >/dev/null || need_apt+=(tsung)
# podman and what it runs with, for the image (scripts/image.sh: a Debian base from debootstrap, no registry) and the
# container test (tests/containers: the rendered k8s/ played with podman kube play). Its settings for this machine
# are the project's own (k8s/podman/containers.conf, through CONTAINERS_CONF), not /etc's.
for package in podman debootstrap uidmap slirp4netns fuse-overlayfs netavark aardvark-dns catatonit iptables runc; do
    dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed || need_apt+=("$package")
done
if ((${#need_apt[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${need_apt[*]} with apt-get"
    # The labs run private servers; the packages' system services must not start. A policy-rc.d that says
    # "101" (forbidden) makes invoke-rc.d and deb-systemd-invoke skip every start, for this install only.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        trap '$sudo rm -f "$policy"' EXIT
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    if [ -n "$policy" ]; then
        $sudo rm -f "$policy"
        trap - EXIT
    fi
    # Had a system ejabberd started all the same (its pid file names a live process), stop it: its init
    # script stops the node and then the epmd it started, if no other Erlang node uses it.
    if [[ " ${need_apt[*]} " == *" ejabberd "* ]] && [ -f /run/ejabberd/ejabberd.pid ] \
        && $sudo kill -0 "$(cat /run/ejabberd/ejabberd.pid)" 2>/dev/null; then
        echo "setup: stopping the system ejabberd the package started (the lab runs its own)"
        $sudo /etc/init.d/ejabberd stop >/dev/null
    fi
    # Likewise a system Prometheus: it would scrape its default targets and hold port 9090.
    if [[ " ${need_apt[*]} " == *" prometheus "* ]] && [ -f /run/prometheus/prometheus.pid ] \
        && $sudo kill -0 "$(cat /run/prometheus/prometheus.pid)" 2>/dev/null; then
        echo "setup: stopping the system Prometheus the package started (the tests run their own)"
        $sudo /etc/init.d/prometheus stop >/dev/null
    fi
fi

python3 - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "setup: installing locust-xmpp and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test,metrics,k8s,dashboards]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# Playwright is only a test tool, not in pyproject's extras; pinned to a release pip installs here.
if ! .venv/bin/python -c 'import playwright' 2>/dev/null; then
    echo "setup: installing Playwright into .venv"
    .venv/bin/python -m pip install -q playwright==1.65.2
fi
# kubernetes-validate checks the Kubernetes manifests against the official schemas (a test tool, pinned).
if ! .venv/bin/python -c 'import kubernetes_validate' 2>/dev/null; then
    echo "setup: installing kubernetes-validate into .venv"
    .venv/bin/python -m pip install -q kubernetes-validate==1.37.0
fi
# kmock emulates the Kubernetes API on loopback for the tests of locust-xmpp k8s (a test tool, pinned). Its pytest
# plugin needs pytest-asyncio, which we do not use: pyproject's addopts block it (-p no:kmock).
if ! .venv/bin/python -c 'import kmock' 2>/dev/null; then
    echo "setup: installing kmock into .venv"
    .venv/bin/python -m pip install -q kmock==0.8
fi
# Node test tools, pinned by tests/tools/package-lock.json: Grafana's dashboard schema (TypeScript types, checked
# with tsc) and the prometheus-operator models (ServiceMonitor/PodMonitor schemas). Without npm the tests that
# need them are skipped and say so.
if command -v npm >/dev/null; then
    tools=tests/tools
    stamp=$tools/node_modules/.installed-$(sha1sum "$tools/package-lock.json" | cut -c1-12)
    if [ ! -f "$stamp" ]; then
        echo "setup: installing the Node test tools into $tools/node_modules"
        (cd "$tools" && npm ci --silent --no-audit --no-fund >/dev/null)
        touch "$stamp"
    fi
else
    echo "setup: npm is missing: the dashboard schema and ServiceMonitor checks will be skipped" >&2
fi
