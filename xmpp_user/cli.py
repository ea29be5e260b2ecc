"""The ``locust-xmpp`` command: ``lab up | down | status | register``, ``exporter``, ``report``,
``k8s scale | run | master`` and ``fidelity record | compare | cost``.

Each subcommand is a parser built in ``build_parser`` plus a handler in ``COMMANDS``, keyed by the
command words (``"lab up"``); a new subcommand adds both.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xmpp_user.deploy.objects import NAMESPACE, RBAC, WORKER
from xmpp_user.distribute.budget import DEFAULT_USERS_PER_PROCESS, workers_needed
from xmpp_user.lab.lab import (
    DEFAULT_C2S_PORT,
    DEFAULT_HTTP_PORT,
    LOG_LEVELS,
    RESUME_TIMEOUT,
    ROOMS,
    SERVERS,
    STORAGES,
    Lab,
    LabError,
)
from xmpp_user.observe.names import SERVER_PORT

PROG = "locust-xmpp"
EXIT_OK, EXIT_ERROR, EXIT_NOT_RUNNING = 0, 2, 3


class CliError(Exception):
    """An expected failure: one line on stderr, exit status 2."""


def _number(kind: type, holds: Callable[[Any], bool], requirement: str, noun: str = "a number",
            shown: Callable[[str, Any], Any] = lambda text, value: value) -> Callable[[str], Any]:  # fmt: skip
    """An argparse type: ``kind`` of the text, refused in one line unless ``holds``; both errors quote the input."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not holds(value):
            raise argparse.ArgumentTypeError(f"{requirement}, not {shown(text, value)}")
        return value

    return parse


_port = _number(int, lambda v: 1 <= v <= 65535, "port must be 1-65535", "a port number")
_positive = _number(int, lambda v: v >= 1, "must be at least 1")
_positive_float = _number(float, lambda v: v > 0, "must be above 0")
_non_negative = _number(int, lambda v: v >= 0, "must be 0 or more")
_seconds = _number(float, lambda v: v > 0, "must be more than 0", "a number of seconds", shown=lambda text, _v: text)


def _add_cluster_options(parser: argparse.ArgumentParser, users: Callable[[str], int]) -> None:
    parser.add_argument("--users", type=users, required=True, metavar="N", help="the users to carry")
    parser.add_argument("--per-worker", type=_positive, default=DEFAULT_USERS_PER_PROCESS, metavar="B",
                        help=f"users one worker carries (default {DEFAULT_USERS_PER_PROCESS:,}, what a worker takes "
                        "at most unless its --xmpp-users-per-process says otherwise)")
    parser.add_argument("--namespace", "-n", metavar="NS",
                        help=f"default: the kubeconfig context's, in a pod its own, else {NAMESPACE} (the overlays')")
    parser.add_argument("--deployment", default=WORKER, metavar="NAME",
                        help=f"the workers' Deployment (default {WORKER}, the one {RBAC} lets the command scale)")
    parser.add_argument("--timeout", type=_seconds, default=300, metavar="S",
                        help="seconds to wait for the master's pod and for the workers to be ready (default 300)")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="default: $KUBECONFIG or ~/.kube/config; in a pod without one, its service account")


def _run_dir(args: argparse.Namespace) -> Path:
    # Read at run time, not when the parser is built, so tests and scripts can set it late.
    return Path(args.run_dir or os.environ.get("LOCUST_XMPP_LAB_DIR") or ".lab")


def _add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir", metavar="DIR", help="the lab's directory (default: $LOCUST_XMPP_LAB_DIR or ./.lab)"
    )


# Handlers: each returns the exit status and raises CliError or LabError for expected failures.


def lab_up(args: argparse.Namespace) -> int:
    lab = Lab(_run_dir(args), args.c2s_port, args.http_port, args.storage, args.log_level,
              server=args.server, rooms=args.rooms, resume_timeout=args.resume_timeout)  # fmt: skip
    wanted = (args.c2s_port, args.http_port, args.rooms)
    started = lab.up(timeout=args.timeout, exporter_port=args.exporter_port)
    state = "started" if started else "already running"
    print(f"lab {state}: {lab.server}, pid {lab.pid}, run dir {lab.run_dir}")
    if not started and wanted != (lab.c2s_port, lab.http_port, lab.rooms):
        print(f"  (still on its old ports and room setting: run  {PROG} lab down  first to change them)")
    print(f"  WebSocket   {lab.websocket_url}")
    print(f"  c2s         {lab.c2s_address[0]}:{lab.c2s_address[1]}")
    print(f"  metrics     {_metrics(lab.metrics_url, lab.server)}")
    if exporter_url := lab.exporter_url:
        print(f"  exporter    {exporter_url}")
    print(f"  domains     {lab.domain} (anonymous), {lab.registered_domain} (accounts), {lab.muc_domain} (rooms)")
    if scram_domain := getattr(lab, "scram_domain", ""):
        print(f"              {scram_domain} (accounts, every SCRAM {lab.name} has; for mechanism tests)")
    print(f"  rooms       {lab.rooms}")
    print(f"  resumption  a dropped session is kept {lab.resume_timeout} s")
    return EXIT_OK


def _metrics(url: str | None, server: str) -> str:
    return url or f"none ({server} has no metrics endpoint; lab status shows its CPU and memory)"


def lab_down(args: argparse.Namespace) -> int:
    lab = Lab.from_record(_run_dir(args))
    print("lab stopped" if lab.down(timeout=args.timeout) else f"lab not running (run dir {lab.run_dir})")
    return EXIT_OK


def lab_status(args: argparse.Namespace) -> int:
    status = Lab.from_record(_run_dir(args)).status()
    if not status["running"]:
        print(f"lab not running (run dir {status['run_dir']})")
        return EXIT_NOT_RUNNING
    print(f"lab running: {status['server']}, pid {status['pid']}, run dir {status['run_dir']}")
    print(f"  WebSocket   {status['websocket_url']}")
    print(f"  metrics     {_metrics(status['metrics_url'], status['server'])}")
    if status["exporter_url"]:
        print(f"  exporter    {status['exporter_url']}")
    print(f"  rooms       {status['rooms']}")
    print(f"  CPU         {status['cpu_seconds']:.2f} s")
    print(f"  RSS         {status['rss_bytes'] / 2**20:.1f} MiB")
    return EXIT_OK


# ---- lab register: accounts on the lab's registered domain (xmpp_user.scenario.accounts) ----
def lab_register(args: argparse.Namespace) -> int:
    url, domain = args.url, args.domain
    if url is None or domain is None:
        lab = Lab.from_record(_run_dir(args))
        if url is None and not lab.running:
            raise CliError(f"the lab in {lab.run_dir} is not running: start it with  {PROG} lab up  or pass --url")
        url, domain = url or lab.websocket_url, domain or lab.registered_domain
    # Imported here: it pulls in gevent, which the other subcommands do not need.
    from gevent import monkey

    monkey.patch_all()
    from xmpp_user.scenario.accounts import register_accounts

    pattern = args.prefix.replace("{", "{{").replace("}", "}}") + "{n}"
    try:
        done = register_accounts(url, domain, pattern=pattern, count=args.count, password=args.password)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    print(f"{done} accounts ready: {args.prefix}0..{args.prefix}{args.count - 1}@{domain}, password {args.password!r}")
    return EXIT_OK


# ---- end of lab register ----


def exporter(args: argparse.Namespace) -> int:
    # It runs for hours beside a server: what it says later (a failed fetch, a restarted server) has a time.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from xmpp_user.observe import server
    except ImportError:
        raise CliError("the exporter needs prometheus-client: pip install 'locust-xmpp[metrics]'") from None
    try:
        target = server.Target(pid=args.pid, pidfile=args.pidfile, name=args.process_name)
        own_metrics = server.ServerMetrics(args.server_metrics) if args.server_metrics else None
        if own_metrics is not None:
            own_metrics.fetch()  # a wrong URL is said now, not as a gap in the graphs
    except server.TargetError as exc:
        raise CliError(str(exc)) from None
    except (OSError, ValueError) as exc:
        reason = server.fetch_error(exc)
        raise CliError(f"cannot read the server's metrics at {args.server_metrics}: {reason}") from None
    try:
        server.serve(server.ServerCollector(target, own_metrics), args.port, args.host,
                     ready=lambda line: print(line, flush=True))  # fmt: skip
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return EXIT_OK


# ---- report: the HTML report of a run (xmpp_user.observe.report) ----
def report(args: argparse.Namespace) -> int:
    # Imported here: matplotlib is slow to import and the lab subcommands do not need it.
    from xmpp_user.observe.model import MissingData
    from xmpp_user.observe.prometheus import PrometheusError
    from xmpp_user.observe.report import report_files

    try:
        done = report_files(args.prefix, prometheus=args.prometheus, step=args.step)
    except (MissingData, PrometheusError) as exc:
        raise CliError(str(exc)) from None
    for conclusion in done.conclusions:
        print(f"- {conclusion.text}")
    print(f"Report: {done.html}")
    return EXIT_OK


# ---- end of report ----
# ---- k8s: workers and headless runs on a cluster (xmpp_user.deploy, manifests in k8s/) ----
def _cluster(args: argparse.Namespace) -> Any:
    try:
        from xmpp_user.deploy import cluster
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("kubernetes", "urllib3"):
            raise
        raise CliError("the k8s commands need the Kubernetes client: pip install 'locust-xmpp[k8s]'") from None
    try:
        return cluster.connect(args.kubeconfig, args.namespace)
    except cluster.DeployError as exc:
        raise CliError(str(exc)) from None


def k8s_scale(args: argparse.Namespace) -> int:
    from xmpp_user.deploy.cluster import DeployError

    cluster = _cluster(args)
    replicas = workers_needed(args.users, args.per_worker)
    asked = f" ({args.users:,} users at {args.per_worker:,} per worker)"
    try:
        cluster.check_capacity(cluster.deployment(args.deployment), replicas, asked)
        cluster.scale(args.deployment, replicas)
        waited = cluster.wait_ready(args.deployment, replicas, args.timeout, asked)
    except DeployError as exc:
        raise CliError(str(exc)) from None
    print(f"{args.deployment}: {replicas} replicas ready in namespace {cluster.namespace}{asked} after {waited:.0f} s")
    return EXIT_OK


def k8s_run(args: argparse.Namespace) -> int:
    from xmpp_user.deploy.cluster import DeployError
    from xmpp_user.deploy.run import Run

    locust_args = args.locust_args[1:] if args.locust_args[:1] == ["--"] else args.locust_args
    cluster = _cluster(args)
    try:
        return Run(cluster, args.users, args.per_worker, args.timeout, args.output, worker=args.deployment)(locust_args)
    except DeployError as exc:
        raise CliError(str(exc)) from None


def k8s_master(args: argparse.Namespace) -> int:
    from xmpp_user.deploy import master

    locust_args = args.locust_args[1:] if args.locust_args[:1] == ["--"] else args.locust_args
    return master.main(Path(args.results), locust_args)


# ---- end of k8s ----
# ---- fidelity: the emulated viewers against real Converse.js (xmpp_user.fidelity) ----
def fidelity_record(args: argparse.Namespace) -> int:
    from xmpp_user.fidelity import converse, motion, run, scene

    out = args.out or (motion.FIXTURE if args.motion else scene.FIXTURE)
    version = args.converse or (scene.load_fixture()["converse"] if scene.FIXTURE.is_file() else converse.VERSION)
    try:
        if args.motion:
            fixture = run.record_motion(args.server or list(SERVERS), out, version)
        else:
            fixture = run.record(args.server or list(SERVERS), out, version)
    except (converse.RecorderError, motion.MotionError) as exc:
        raise CliError(str(exc)) from None
    for server, entry in fixture["servers"].items():
        if args.motion:
            sent = sum(len(p["sent"]) for p in entry["pages"])
            print(f"{server}: {entry['joins']} converse.js {version} pages sent {sent} frames in {entry['stay']:g} s")
        else:
            print(f"{server}: converse.js {version} sent {len(entry['kinds'])} requests")
    print(f"Fixture: {out}")
    return EXIT_OK


def fidelity_compare(args: argparse.Namespace) -> int:
    from xmpp_user.fidelity import converse, run
    from xmpp_user.scenario.profiles import PROFILES

    if args.client not in PROFILES:
        raise CliError(f"no client profile {args.client!r} (choose from {', '.join(PROFILES)})")
    try:
        found = run.compare(args.server or list(SERVERS), args.client, args.live)
    except (converse.RecorderError, KeyError) as exc:
        raise CliError(f"cannot compare: {exc}") from None
    for server, problems in found.items():
        print(f"{server}: {args.client} " + ("sends what real Converse.js sends" if not problems else "differs:"))
        for problem in problems:
            print(f"  - {problem}")
    return 1 if any(found.values()) else EXIT_OK


def fidelity_cost(args: argparse.Namespace) -> int:
    from xmpp_user.fidelity import converse, motion, run

    if args.client not in motion.VIEWS:
        raise CliError(f"no real page for client profile {args.client!r} (choose from {', '.join(motion.VIEWS)})")
    for name, value in (("--joins", args.joins), ("--runs", args.runs)):
        if value < 1:
            raise CliError(f"{name} must be at least 1, not {value}")
    for name, seconds in (("--interval", args.interval), ("--stay", args.stay)):
        if not 0 <= seconds <= 600:
            raise CliError(f"{name} must be between 0 and 600 seconds, not {seconds:g}")
    if args.joins > 100:
        raise CliError(f"--joins {args.joins}: at most 100 Chromium pages on one machine")
    print(f"{args.server}: {args.runs} run(s) of {args.joins} joins every {args.interval:g} s, staying "
          f"{args.stay:g} s: real Converse.js pages ({motion.VIEWS[args.client].viewport[0]}x"
          f"{motion.VIEWS[args.client].viewport[1]}) vs {args.client} viewers", flush=True)  # fmt: skip
    try:
        runs, summary = run.cost(args.server, args.client, args.joins, args.interval, args.stay, args.runs,
                                 out=functools.partial(print, flush=True))  # fmt: skip
    except (converse.RecorderError, motion.MotionError) as exc:
        raise CliError(str(exc)) from None
    print(
        f"median ratio real/emulated {summary['ratio_median']:.2f} over {summary['runs']} run(s) "
        f"(spread {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}); median server CPU per join: real "
        f"{summary['real_ms_per_join_median']:.1f} ms, {args.client} {summary['emulated_ms_per_join_median']:.1f} ms"
    )
    if args.json:
        body = {"server": args.server, "client": args.client, "joins": args.joins, "interval": args.interval,
                "stay": args.stay, "summary": summary,
                "runs": [{"real": r.real.to_json(), "emulated": r.emulated.to_json()} for r in runs]}  # fmt: skip
        Path(args.json).write_text(json.dumps(body) + "\n")
        print(f"JSON: {args.json}")
    return EXIT_OK


# ---- end of fidelity ----


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "lab up": lab_up,
    "lab down": lab_down,
    "lab status": lab_status,
    "lab register": lab_register,
    "exporter": exporter,
    "report": report,
    "k8s scale": k8s_scale,
    "k8s run": k8s_run,
    "k8s master": k8s_master,
    "fidelity record": fidelity_record,
    "fidelity compare": fidelity_compare,
    "fidelity cost": fidelity_cost,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Load tests for XMPP servers over WebSocket.")
    commands = parser.add_subparsers(metavar="COMMAND", required=True)
    lab = commands.add_parser("lab", help="a private Prosody or ejabberd on loopback to test against")
    lab_commands = lab.add_subparsers(metavar="ACTION", required=True)

    up = lab_commands.add_parser("up", help="start the lab (does nothing if it runs already)")
    _add_run_dir(up)
    up.add_argument("--server", choices=SERVERS, default="prosody",
                    help="prosody (0.12, the default) or ejabberd (23.01); both from Debian packages")
    up.add_argument("--rooms", choices=ROOMS, default="persistent",
                    help="persistent (rooms outlive their occupants, archived, open at once; the default) or "
                         "stock (the server's own defaults for room lifetime, locking and archiving)")
    up.add_argument("--c2s-port", type=_port, default=DEFAULT_C2S_PORT, metavar="N")
    up.add_argument("--http-port", type=_port, default=DEFAULT_HTTP_PORT, metavar="N",
                    help=f"WebSocket, BOSH and Prosody's /metrics (default {DEFAULT_HTTP_PORT})")
    up.add_argument("--storage", choices=STORAGES, default="internal",
                    help="internal (files, fresh on each up; Mnesia for ejabberd) or memory (Prosody only; "
                         "default internal)")
    up.add_argument("--resume-timeout", type=_non_negative, default=RESUME_TIMEOUT, metavar="SECONDS",
                    help="how long the server keeps a dropped resumable session, and its viewer in the room as a "
                         f"ghost (default {RESUME_TIMEOUT})")  # fmt: skip
    up.add_argument("--log-level", choices=LOG_LEVELS, default="warn",
                    help="the server's log level; anything below warn costs CPU under load")
    up.add_argument("--exporter-port", type=_port, metavar="N",
                    help=f"also start  {PROG} exporter  for the server on this port ({SERVER_PORT} is the one "
                         "dashboards/prometheus.yml scrapes); lab down stops it")
    up.add_argument("--timeout", type=float, default=20, help=argparse.SUPPRESS)
    up.set_defaults(command="lab up")

    down = lab_commands.add_parser("down", help="stop the lab")
    _add_run_dir(down)
    down.add_argument("--timeout", type=float, default=10, help=argparse.SUPPRESS)
    down.set_defaults(command="lab down")

    status = lab_commands.add_parser("status", help="is the lab running; its URLs, CPU and memory (exit 3 if not)")
    _add_run_dir(status)
    status.set_defaults(command="lab status")

    register = lab_commands.add_parser("register", help="register accounts PREFIX0..PREFIXn-1 on the lab")
    _add_run_dir(register)
    register.add_argument("--count", type=_positive, default=100, metavar="N")
    register.add_argument("--prefix", default="user")
    register.add_argument("--password", default="secret")
    register.add_argument("--url", help="WebSocket URL (default: the running lab's)")
    register.add_argument("--domain", help="XMPP domain (default: the lab's registered domain)")
    register.set_defaults(command="lab register")

    export = commands.add_parser(
        "exporter",
        help="Prometheus metrics of a server process (CPU, memory, open files) and the server's own metrics",
        description="Serve, until SIGTERM or SIGINT, the CPU seconds, memory, open files and threads of a server "
        "process read from /proc at each scrape, and with --server-metrics the server's own metrics passed on.",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=_positive, metavar="N", help="the server process (beam.smp for ejabberd)")
    which.add_argument("--pidfile", metavar="FILE", help="a file holding its PID, read again at each scrape")
    which.add_argument("--process-name", metavar="NAME",
                       help="its program name (prosody, beam.smp), looked up again if the server restarts")
    export.add_argument("--port", type=_port, default=SERVER_PORT, metavar="N", help=f"default {SERVER_PORT}")
    export.add_argument("--host", default="127.0.0.1", metavar="H", help="address to serve on (default 127.0.0.1)")
    export.add_argument("--server-metrics", metavar="URL",
                        help="the server's own metrics endpoint to pass on (Prosody: http://HOST:5280/metrics)")
    export.set_defaults(command="exporter")
    rep = commands.add_parser("report", help="write PREFIX_report.html (charts, phase table, conclusions) "
                              "for a run made with --csv PREFIX")  # fmt: skip
    rep.add_argument("prefix", metavar="PREFIX", help="the --csv prefix of the run")
    rep.add_argument("--prometheus", metavar="URL",
                     help="read the series from this Prometheus (e.g. http://prometheus:9090) over the span of "
                          "PREFIX_phases.json, instead of the run's own files")  # fmt: skip
    rep.add_argument("--step", type=_positive_float, default=1.0, metavar="SECONDS",
                     help="resolution of the series read from Prometheus (default 1)")  # fmt: skip
    rep.set_defaults(command="report")

    k8s = commands.add_parser("k8s", help="scale the workers and run headless tests on Kubernetes (manifests in k8s/)")
    k8s_commands = k8s.add_subparsers(metavar="ACTION", required=True)
    scale = k8s_commands.add_parser(
        "scale", help="scale the workers for N users and wait until they are ready",
        description="Scale the worker Deployment to ceil(N / B) replicas through its scale subresource and wait "
        "until that many are ready (connected to the master). Errors are one line, exit code 2.")  # fmt: skip
    _add_cluster_options(scale, users=_non_negative)
    scale.set_defaults(command="k8s scale")

    run = k8s_commands.add_parser(
        "run", help="a headless run on the cluster: scale, run, bring the files back, scale to zero",
        description="Run Locust headless on the master pod with ceil(N / B) workers, show its output, write the "
        "run's files under --output, and scale the workers back to zero, also after a failure or Ctrl+C. The "
        "exit code is Locust's (0, 1, 2); errors on the cluster's side are one line, exit code 2.",
        usage=f"{PROG} k8s run --users N [options] [-- LOCUST_ARGS ...]")  # fmt: skip
    _add_cluster_options(run, users=_positive)
    run.add_argument("--output", type=Path, metavar="DIR", help="where the run's files go (default results/k8s/RUN_ID)")
    run.add_argument("locust_args", nargs=argparse.REMAINDER, metavar="-- LOCUST_ARGS",
                     help="Locust's arguments for the run, e.g. -f /locustfiles/livechat.py --viewers 500; "
                          "--users N is added unless they give -u")  # fmt: skip
    run.set_defaults(command="k8s run")

    master = k8s_commands.add_parser(
        "master", help="the Locust master's entry point in its pod (k8s/base/master.yaml)",
        description="Run the master for the run in $LOCUST_XMPP_RUN (headless, then print its files into the log), "
        "or without one the interactive master with its web UI.")  # fmt: skip
    master.add_argument("--results", default="/results", metavar="DIR", help="where runs write (default /results)")
    master.add_argument("locust_args", nargs=argparse.REMAINDER, metavar="-- LOCUST_ARGS",
                        help="Locust's arguments for every master, e.g. --config FILE")  # fmt: skip
    master.set_defaults(command="k8s master")

    fidelity = commands.add_parser("fidelity", help="compare the emulated viewers with real Converse.js in Chromium")
    fidelity_commands = fidelity.add_subparsers(metavar="ACTION", required=True)
    rec = fidelity_commands.add_parser(
        "record", help="record real Converse.js joining a populated room on each lab server; write the fixture",
        description="Start each lab server on free loopback ports, fill a room (30 occupants with avatars, 10 "
        "archived messages), let real Converse.js (npm, headless Chromium) join it, and write what it sent, "
        "normalised, to the fixture the tests compare the converse-14 profile with.")  # fmt: skip
    rec.add_argument("--converse", default=None, metavar="VERSION", help="the converse.js release (default: the "
                     "fixture's own)")  # fmt: skip
    rec.add_argument("--server", choices=SERVERS, action="append", help="one lab server (default: both)")
    rec.add_argument("--out", type=Path, default=None, metavar="FILE", help="default: the package's fixture")
    rec.add_argument("--motion", action="store_true", help="the moving scene instead: 10 pages joining a room with "
                     "a 50-message archive one every 2 s and staying a minute (converse-14-motion.json)")  # fmt: skip
    rec.set_defaults(command="fidelity record")
    cmp = fidelity_commands.add_parser(
        "compare", help="how a client profile's viewer differs from real Converse.js (exit 1 if it does)",
        description="Join the same populated room with the profile's viewer and compare its requests with the "
        "fixture's recording of real Converse.js (or, with --live, with one made now).")  # fmt: skip
    cmp.add_argument("--client", default="converse-14", help="the profile (default converse-14)")
    cmp.add_argument("--server", choices=SERVERS, action="append", help="one lab server (default: both)")
    cmp.add_argument("--live", action="store_true", help="record real Converse.js now instead of reading the fixture")
    cmp.set_defaults(command="fidelity compare")
    cost = fidelity_commands.add_parser(
        "cost", help="the server's CPU per join: real Converse.js pages joining one after another vs a profile",
        description="For each run: on a fresh lab, a room with a 50-message archive; N real Converse.js pages "
        "(one headless Chromium, a browser context each) join one every S seconds and stay; the server's CPU "
        "from the first join to the end of the stay, per join. At the same time, on another fresh lab, the same "
        "with N viewers of the profile, viewer k starting when page k sends its first frame, so both servers "
        "work under the same load. Prints per run both costs, their ratio and the frames per join.")  # fmt: skip
    cost.add_argument("--client", default="converse-14", help="the profile (default converse-14)")
    cost.add_argument("--server", choices=SERVERS, default="prosody", help="the lab server (default prosody)")
    cost.add_argument("--joins", type=int, default=20, metavar="N", help="clients per run (default 20)")
    cost.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between joins (default 2)")
    cost.add_argument("--stay", type=float, default=60.0, metavar="S",
                      help="seconds every client stays after the last one opened (default 60)")  # fmt: skip
    cost.add_argument("--runs", type=int, default=1, metavar="R", help="runs (default 1)")
    cost.add_argument("--json", default=None, metavar="FILE", help="write every frame and figure as JSON")
    cost.set_defaults(command="fidelity cost")

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CliError, LabError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
