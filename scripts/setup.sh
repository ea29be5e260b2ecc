#!/usr/bin/env bash
# Installs everything locust-xmpp needs on a fresh Debian/Ubuntu machine, idempotently:
# Prosody and ejabberd (the lab servers), Chromium (for the web UI test) and Prometheus (for the report's
# Prometheus source test) from apt, and the package with its test tools (and Playwright) in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prosody >/dev/null || need_apt+=(prosody)
# ejabberdctl lives in /usr/sbin, which a user's PATH may lack.
[ -x /usr/sbin/ejabberdctl ] || need_apt+=(ejabberd)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# Debian's Chromium, for the web UI test (Playwright drives it; it cannot download its own browser here).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# Prometheus, for the test of the report's Prometheus source (the tests run their own, never the service).
command -v prometheus >/dev/null || need_apt+=(prometheus)
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
    .venv/bin/python -m pip install -q -e '.[test,metrics]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# Playwright is only a test tool, not in pyproject's extras; pinned to a release pip installs here.
if ! .venv/bin/python -c 'import playwright' 2>/dev/null; then
    echo "setup: installing Playwright into .venv"
    .venv/bin/python -m pip install -q playwright==1.65.2
fi
