#!/usr/bin/env bash
# Set up (if needed), start the lab Prosody, run the livechat test scaled down, headless,
# and end with its stats, message truth, the phase table with the server's CPU and memory, and the
# report's conclusions and path. Extra arguments go to locust.
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
python - "$out/livechat" <<'PY'
import json, sys
prefix = sys.argv[1]
try:
    report = json.load(open(f"{prefix}_report.json"))
except OSError:
    print(f"\nNo report: {prefix}_report.json was not written (see the log above)")
    sys.exit(0)
print(f"\n{'phase':14} {'seconds':>8} {'waited':>7} {'users':>6} {'connected':>10} {'CPU % mean/max':>15} "
      f"{'RSS MiB':>8} {'msg/s':>6} {'failures':>8} {'lag s':>6}")
gave_up = []
for r in report["phases"]:
    # waited: seconds the phase went on after its plan, waiting for the server to go quiet; * gave up first
    waited = f"{r['waited']:.1f}" if r.get("waited") is not None else ""
    if r.get("settled") not in (None, "quiet"):
        waited += "*"
        gave_up.append(f"* {r['name']} stopped waiting before the server went quiet: {r['settled']}")
    connected = f"{r['connected_min']}-{r['connected_max']}" if r["connected_max"] is not None else ""
    cpu = f"{r['cpu_mean']:.0f}/{r['cpu_max']:.0f}" if r["cpu_mean"] is not None else ""
    rss = f"{r['rss_max'] / 2**20:.1f}" if r["rss_max"] is not None else ""
    rate = f"{r['message_rate']:.1f}" if r["message_rate"] is not None else ""
    # lag: the largest delay of the generator's own event loop (latencies include up to this much of it)
    lag = f"{r['generator_lag']:.2f}" if r.get("generator_lag") is not None else ""
    print(f"{r['name']:14} {r['seconds']:8.1f} {waited:>7} {r['users']:>6} {connected:>10} {cpu:>15} {rss:>8} "
          f"{rate:>6} {r['failures'] if r['failures'] is not None else '':>8} {lag:>6}")
for line in gave_up:
    print(line)
print("\nConclusions:")
for c in report["conclusions"]:
    print(f"- {c['text']}")
print(f"\nReport: {prefix}_report.html")
PY
echo "Files: $out/livechat_stats.csv, livechat_phases.csv, livechat_truth.json,"
echo "       livechat_timeline.csv, livechat_server.csv, livechat_phase_stats.json,"
echo "       livechat_report.html (charts inlined; also livechat_report_*.png), livechat_report.json"
exit "$code"  # Locust's: 0 clean, 1 failures, lost messages or a lost worker
