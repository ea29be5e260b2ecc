#!/usr/bin/env bash
# Set up (if needed), start the lab Prosody, run the livechat test scaled down, headless,
# and end with its stats, message truth and phases. Extra arguments go to locust.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
out=results/demo
mkdir -p "$out"
locust-xmpp lab up
trap 'locust-xmpp lab down' EXIT
code=0
locust -f locustfiles/livechat.py --headless --host ws://127.0.0.1:15280/xmpp-websocket \
    --viewers 20 --join-rate 10 --talk-delay 5 --talk-interval 2 --talk-duration 10 \
    --pause 5 --seed-wait 3 --csv "$out/livechat" --only-summary "$@" || code=$?
python - "$out/livechat_phases.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\n{'phase':14} {'start (UTC)':12} {'seconds':>8} {'users':>6} {'connected':>10}")
for r in rows:
    seconds = float(r['end_unix']) - float(r['start_unix'])
    connected = f"{r['connected_min']}-{r['connected_max']}" if r['connected_max'] else ""
    print(f"{r['phase']:14} {r['start_iso'][11:23]:12} {seconds:8.1f} {r['users']:>6} {connected:>10}")
PY
echo; echo "Files: $out/livechat_stats.csv, livechat_phases.csv, livechat_truth.json"
exit "$code"  # Locust's: 0 clean, 1 failures, lost messages or a lost worker
