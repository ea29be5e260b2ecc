"""The two field tests at the field's own size, on the lab servers, each conclusion beside the field's figure.

    python benchmarks/seeds.py [--server prosody|ejabberd|both] [--pause 20] [--only livechat|jitsi]
                               [--viewers 100] [--join-rate 10] [--batches 3] [--json FILE] [--workdir DIR]
                               [any other livechat option, e.g. --talk-interval 1]
                               [--jitsi-options='--hold 60 ...' (Jitsi options after the seed's own)]

For each server, on a lab started afresh for each test (``locust-xmpp lab up`` semantics, private ports):

- **livechat** (shared/seeds/livechat-prosody-cpu.md): the livechat scenario with its defaults, the seed's
  plan: 2 seeders fill the archive with 60 messages, then 3 batches of 100 viewers joining at 10/s (every
  feature; no vCards; no vCards and no MAM), each talking once every 5 s for 20 s (20 messages/s), with
  ``--pause`` seconds between batches (the seed's 80 shortened to 20 by default) and every phase waiting
  for the server to be done with it (--settle). Two independent slixmpp observers sit in the room
  throughout (benchmarks/room_observer.py): the message truth is checked against their record of the room,
  member by member.
- **jitsi** (shared/seeds/jitsi-prosody-jxs.md): 5 batches of 100 participants every 10 s into conferences
  of 50 (500 in all), then a 30 s hold.

It prints the report's conclusions beside the seed's own findings, and writes everything measured as JSON.
Each run is bounded (a Locust run past its timeout is killed) and every lab is stopped at the end. This is a
measurement, not a test: on a 2-core machine the figures move from run to run (the README gives the
machine and a table from one run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from room_observer import RoomObserver, verify  # noqa: E402

from xmpp_user.lab.lab import Lab, free_port  # noqa: E402

RUN_TIMEOUT = 1800.0
"""Seconds a Locust run may take before it is killed (the livechat plan takes about 5 minutes)."""
JITSI = ["--jitsi-rooms", "10", "--jitsi-participants", "50", "--batch-size", "100", "--batch-interval", "10",
         "--hold", "30"]  # fmt: skip
"""The Jitsi seed: batches of 100 new participants (2 conferences of 50 each) every 10 s, to 500."""

SEED_FINDINGS = {
    "vcards": "the join with vCards drives Prosody to 100 % at once; without them it does not reach 100 %",
    "mam": "about 15 % of the CPU goes to MAM (comparing the joins without vCards, with and without MAM)",
    "flooding": "CPU load can raise to 60 % at 20 messages/s; the talks of batch 2 and 3 are very similar",
    "memory": "(not measured in the livechat seed)",
    "jitsi_memory": "RAM usage is linear in the number of participants",
    "batch_cpu": "CPU load stays very low on the Prosody pod",
    "failures": "HTTP 500 on the WebSocket upgrade while the fifth batch joined (400 to 500 participants)",
}
"""What the seeds found, in their own words (shared/seeds)."""


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        memory = 0
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory / 2**30, 1),
            "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}  # fmt: skip


def start_lab(workdir: Path, server: str, name: str) -> Lab:
    lab = Lab(workdir / f"lab-{server}-{name}", c2s_port=free_port(), http_port=free_port(), storage="internal",
              server=server, rooms="persistent")  # fmt: skip
    reason = lab.unavailable()
    if reason:
        raise SystemExit(f"seeds: {reason}")
    lab.up()
    return lab


def run_locust(lab: Lab, locustfile: str, prefix: Path, *args: str) -> tuple[int, float]:
    """A headless Locust run against the lab, observing its server; (exit code, seconds)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / locustfile), "--headless",
           "--host", lab.websocket_url, "--csv", str(prefix), "--only-summary", *args]  # fmt: skip
    env = {**os.environ, "LOCUST_XMPP_LAB_DIR": str(lab.run_dir)}
    started = time.monotonic()
    with open(f"{prefix}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
    return code, time.monotonic() - started


def results(prefix: Path) -> dict[str, Any]:
    """What a run wrote: truth, report (phases, conclusions), failures by request."""
    out: dict[str, Any] = {}
    for name, suffix in (("truth", "truth.json"), ("report", "report.json")):
        path = Path(f"{prefix}_{suffix}")
        out[name] = json.loads(path.read_text()) if path.exists() else None
    failures: dict[str, int] = {}
    path = Path(f"{prefix}_failures.csv")
    if path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                key = f"{row['Name']}: {row['Error']}"
                failures[key] = failures.get(key, 0) + int(row["Occurrences"])
    out["failures"] = failures
    return out


def livechat(workdir: Path, server: str, pause: float, extra: list[str]) -> dict[str, Any]:
    lab = start_lab(workdir, server, "livechat")
    room = f"seeds-{uuid.uuid4().hex[:8]}"
    jid = f"{room}@{lab.muc_domain}"
    prefix = workdir / f"{server}-livechat" / "livechat"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    observers = [RoomObserver(prefix.parent, *lab.c2s_address, lab.domain, [jid], nick=f"observer{i}",
                              max_seconds=RUN_TIMEOUT) for i in (1, 2)]  # fmt: skip
    try:
        for observer in observers:
            observer.start()
        code, seconds = run_locust(lab, "livechat.py", prefix, "--xmpp-room", room, "--pause", str(pause), *extra)
        records = [observer.stop() for observer in observers]
    finally:
        for observer in observers:
            observer.kill()
        lab.down()
    out = {"exit_code": code, "seconds": round(seconds, 1), "prefix": str(prefix), **results(prefix)}
    members = prefix.parent / "livechat_truth_members.csv"
    if members.exists():
        with open(members, newline="") as f:
            out["observers"] = verify(records, jid, list(csv.DictReader(f)))
    return out


def jitsi(workdir: Path, server: str, extra: list[str]) -> dict[str, Any]:
    lab = start_lab(workdir, server, "jitsi")
    prefix = workdir / f"{server}-jitsi" / "jitsi"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        code, seconds = run_locust(lab, "jitsi.py", prefix, *JITSI, *extra)  # given last, they override the seed
    finally:
        lab.down()
    return {"exit_code": code, "seconds": round(seconds, 1), "prefix": str(prefix), **results(prefix)}


def conclusions(run: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    report = (run or {}).get("report") or {}
    return {c["key"]: c for c in report.get("conclusions", [])}


def print_table(found: dict[str, dict[str, Any]]) -> None:
    """Each conclusion of our runs beside the seed's finding; then the truth beside the observers'."""
    for server, runs in found.items():
        print(f"\n## {server}")
        for scenario in ("livechat", "jitsi"):
            run = runs.get(scenario)
            if run is None:
                continue
            print(f"\n### {scenario}: exit code {run['exit_code']}, {run['seconds']:.0f} s")
            for key, c in conclusions(run).items():
                print(f"- {key}\n  seed: {SEED_FINDINGS.get(key, '-')}\n  ours: {c['text']}")
            truth = run.get("truth") or {}
            if truth.get("sent"):  # a run without messages (Jitsi) has no truth to show
                print("- truth: " + " ".join(f"{k}={v}" for k, v in truth.items() if k != "deviations"))
                print("  deviations: " + "; ".join(f"{k} x{v['count']}" for k, v in truth["deviations"].items()))
            seen = run.get("observers")
            if seen:
                print(f"- observers: {seen['messages']} messages ({seen['distinct_messages']} distinct, sequences "
                      f"{'complete' if seen['complete'] else 'INCOMPLETE'}, the two records "
                      f"{'identical' if seen['consistent'] else 'DIFFERENT'}), {seen['due']} deliveries due to "
                      f"{seen['members']} members; members whose expected differs: {len(seen['expected_differs'])}, "
                      f"whose delivered differs: {len(seen['delivered_differs'])}")  # fmt: skip
            if run.get("failures"):
                print("- failures: " + "; ".join(f"{k} x{v}" for k, v in run["failures"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("prosody", "ejabberd", "both"), default="both")
    parser.add_argument("--only", choices=("livechat", "jitsi"), help="run one of the two tests")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between livechat batches (seed: 80)")
    parser.add_argument("--viewers", type=int, default=100, help="livechat viewers per batch (seed: 100)")
    parser.add_argument("--join-rate", type=float, default=10.0, help="livechat viewers joining per second (seed: 10)")
    parser.add_argument("--batches", type=int, choices=(1, 2, 3), default=3, help="livechat batches (seed: 3)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "seeds.json"),
                        help="where to write the measurements (default %(default)s)")  # fmt: skip
    parser.add_argument("--workdir", help="where the runs' files go (default: a new temporary directory)")
    parser.add_argument("--jitsi-options", default="", metavar="'OPTIONS'",
                        help="options for the Jitsi locustfile, given after the seed's own so they override "
                             "them, e.g. --jitsi-options='--jitsi-rooms 1 --hold 5' (unknown options go to "
                             "livechat)")  # fmt: skip
    args, extra_livechat = parser.parse_known_args()
    extra_jitsi = shlex.split(args.jitsi_options)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="seeds-"))
    workdir.mkdir(parents=True, exist_ok=True)
    servers = ("prosody", "ejabberd") if args.server == "both" else (args.server,)
    found: dict[str, dict[str, Any]] = {}
    for server in servers:
        found[server] = {}
        if args.only in (None, "livechat"):
            print(f"seeds: livechat on {server} ...", flush=True)
            extra = ["--viewers", str(args.viewers), "--join-rate", str(args.join_rate), "--batches", str(args.batches),
                     *extra_livechat]
            found[server]["livechat"] = livechat(workdir, server, args.pause, extra)
        if args.only in (None, "jitsi"):
            print(f"seeds: jitsi on {server} ...", flush=True)
            found[server]["jitsi"] = jitsi(workdir, server, extra_jitsi)
    print_table(found)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = {"pause": args.pause, "viewers": args.viewers, "join_rate": args.join_rate, "batches": args.batches,
            "livechat_options": extra_livechat, "jitsi_options": extra_jitsi}
    out.write_text(json.dumps({"machine": machine(), "plan": plan, "runs": found}, indent=1) + "\n")
    print(f"\nJSON: {out}\nRun files: {workdir}")


if __name__ == "__main__":
    main()
