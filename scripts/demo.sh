#!/usr/bin/env bash
# Set up (if needed), start the lab Prosody, run a short headless load test, print its stats.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
out=results/demo
mkdir -p "$out"
locust-xmpp lab up
trap 'locust-xmpp lab down' EXIT
url=$(locust-xmpp lab status --url)
locust -f locustfiles/quickstart.py --headless -u 20 -r 10 -t 30s --host "$url" \
    --csv "$out/run" --only-summary "$@"
