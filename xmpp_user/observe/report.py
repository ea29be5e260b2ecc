"""The report of a run: ``PREFIX_report.html`` with its charts, from one model whichever source filled it.

``report_files(prefix)`` reads the files a run wrote with ``--csv PREFIX`` (``report_files(prefix,
prometheus=URL)`` reads the same series from Prometheus instead, the phases still from
``PREFIX_phases.json``), and writes:

- ``PREFIX_report_server.png``: the server's CPU % and RSS over time, the phases as labelled bands;
- ``PREFIX_report_load.png``: users, sessions open and messages per second on the same time axis,
  with requests and failures per second below;
- ``PREFIX_report.html``: both charts inlined (the file stands alone), the per-phase table (with the
  seconds each phase waited for the server, and the deliveries lost apart from those still in flight),
  latency by phase and request name, and the conclusions in sentences;
- ``PREFIX_report.json``: the table and the conclusions, for scripts.

The arithmetic lives in ``xmpp_user.observe.analysis``; this module only draws and writes.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xmpp_user.observe import analysis
from xmpp_user.observe.analysis import Conclusion, PhaseRow
from xmpp_user.observe.model import Run, load_files

MIB = 2**20
BAND_COLOURS = {"seed": "#b7e4c7", "join": "#ffd8a8", "talk": "#a5d8ff", "leave": "#dee2e6", "hold": "#d0bfff"}
DEFAULT_BAND = "#e9ecef"


@dataclass
class Report:
    html: Path
    charts: list[Path]
    json: Path
    conclusions: list[Conclusion]
    rows: list[PhaseRow]


def report_files(prefix: str | Path, prometheus: str | None = None, step: float = 1.0) -> Report:
    """Read a run (from its files, or from Prometheus) and write its report beside its files."""
    if prometheus:
        from xmpp_user.observe import prometheus as source

        run = source.load(prometheus, prefix, step=step)
    else:
        run = load_files(prefix)
    return write_report(run, prefix)


def write_report(run: Run, prefix: str | Path) -> Report:
    rows = analysis.phase_rows(run)
    found = analysis.conclusions(run, rows)
    origin = _origin(run)
    charts = []
    server_png = Path(f"{prefix}_report_server.png")
    if draw_server(run, origin, server_png):
        charts.append(server_png)
    load_png = Path(f"{prefix}_report_load.png")
    if draw_load(run, origin, load_png):
        charts.append(load_png)
    html_path = Path(f"{prefix}_report.html")
    html_path.write_text(render_html(run, rows, found, charts, origin, Path(prefix).name), encoding="utf-8")
    json_path = Path(f"{prefix}_report.json")
    data = _finite(report_data(run, rows, found, origin))
    json_path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return Report(html_path, charts, json_path, found, rows)


def _origin(run: Run) -> float:
    start = run.start
    return start if start is not None else 0.0


# ---- charts -----------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band_colour(name: str) -> str:
    for kind, colour in BAND_COLOURS.items():
        if name == kind or name.endswith(f"-{kind}") or name.startswith(kind):
            return colour
    return DEFAULT_BAND


def _draw_phases(axes: Sequence[Any], run: Run, origin: float, label: bool) -> None:
    end = run.end if run.end is not None else origin
    for phase in run.phases:
        if phase.skipped:
            continue
        left, right = phase.start - origin, (phase.end if phase.end is not None else end) - origin
        for ax in axes:
            ax.axvspan(left, right, color=_band_colour(phase.name), alpha=0.55, linewidth=0, zorder=0)
            ax.axvline(left, color="#868e96", linewidth=0.5, zorder=1)
        if label:
            top = axes[0]
            top.text((left + right) / 2, 1.02, phase.name, transform=top.get_xaxis_transform(), rotation=50,
                     ha="left", va="bottom", fontsize=7, color="#343a40")  # fmt: skip


def _finish(fig: Any, axes: Sequence[Any], run: Run, origin: float, path: Path) -> None:
    plt = _pyplot()
    end = run.end
    if end is not None and end > origin:
        axes[0].set_xlim(0, end - origin)
    axes[-1].set_xlabel(f"seconds since {datetime.fromtimestamp(origin, tz=UTC):%Y-%m-%d %H:%M:%S} UTC")
    for ax in axes:
        ax.grid(True, linewidth=0.3, alpha=0.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_server(run: Run, origin: float, path: Path) -> bool:
    """Chart (a): the server's CPU % and RSS with the phases as bands; False when there is nothing to draw."""
    if not run.server:
        return False
    plt = _pyplot()
    fig, (cpu_ax, rss_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 6), layout="constrained")
    _draw_phases([cpu_ax, rss_ax], run, origin, label=True)
    cpu = [(s.t - origin, s.cpu_percent) for s in run.server if s.cpu_percent is not None]
    rss = [(s.t - origin, s.rss_bytes / MIB) for s in run.server if s.rss_bytes is not None]
    if cpu:
        cpu_ax.plot(*zip(*cpu, strict=True), color="#c92a2a", linewidth=0.8)
    if rss:
        rss_ax.plot(*zip(*rss, strict=True), color="#1864ab", linewidth=1.0)
    cpu_ax.set_ylabel("CPU %")
    cpu_ax.set_ylim(bottom=0, top=max(100.0, max((c for _, c in cpu), default=0) * 1.05))
    rss_ax.set_ylabel("RSS MiB")
    rss_ax.set_ylim(bottom=0, top=max((r for _, r in rss), default=1) * 1.1)
    fig.suptitle(f"{run.server_name}: CPU and memory by phase", fontsize=11)
    _finish(fig, [cpu_ax, rss_ax], run, origin, path)
    return True


def rates(run: Run) -> list[tuple[float, float, float, float]]:
    """(seconds since origin, messages sent/s, requests/s, failures/s) between timeline samples."""
    out = []
    for a, b in zip(run.timeline, run.timeline[1:], strict=False):
        dt = b.t - a.t
        if dt <= 0:
            continue
        sent = b.truth.get("sent", 0) - a.truth.get("sent", 0)
        requests = sum(b.requests.values()) - sum(a.requests.values())
        failures = sum(b.failures.values()) - sum(a.failures.values())
        out.append((b.t, max(0, sent) / dt, max(0, requests) / dt, max(0, failures) / dt))
    return out


def draw_load(run: Run, origin: float, path: Path) -> bool:
    """Chart (b): users, sessions open and messages/s; requests/s and failures/s below."""
    if not run.timeline:
        return False
    plt = _pyplot()
    fig, (load_ax, req_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 5.5), layout="constrained",
                                          gridspec_kw={"height_ratios": [3, 2]})  # fmt: skip
    _draw_phases([load_ax, req_ax], run, origin, label=True)
    t = [s.t - origin for s in run.timeline]
    load_ax.step(t, [s.users for s in run.timeline], where="post", color="#212529", label="users", linewidth=1.4,
                 linestyle=(0, (4, 3)), zorder=3)  # fmt: skip
    sessions = [(x, s.sessions) for x, s in zip(t, run.timeline, strict=True) if s.sessions is not None]
    if sessions:
        load_ax.step(*zip(*sessions, strict=True), where="post", color="#2b8a3e", label="sessions open",
                     linewidth=1.2)  # fmt: skip
    load_ax.set_ylabel("users, sessions")
    load_ax.set_ylim(bottom=0)
    per_second = rates(run)
    msg_ax = load_ax.twinx()
    if per_second:
        times = [r[0] - origin for r in per_second]
        msg_ax.plot(times, [r[1] for r in per_second], color="#1971c2", linewidth=0.9, label="messages sent/s")
        req_ax.plot(times, [r[2] for r in per_second], color="#495057", linewidth=0.9, label="requests/s")
        req_ax.plot(times, [r[3] for r in per_second], color="#e03131", linewidth=1.2, label="failures/s")
    msg_ax.set_ylabel("messages sent/s")
    msg_ax.set_ylim(bottom=0)
    handles = load_ax.get_legend_handles_labels()[0] + msg_ax.get_legend_handles_labels()[0]
    load_ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.9)
    req_ax.set_ylabel("per second")
    req_ax.set_ylim(bottom=0)
    req_ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.suptitle("Load: users, sessions and messages", fontsize=11)
    _finish(fig, [load_ax, req_ax], run, origin, path)
    return True


# ---- HTML and JSON ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if value is None:
        return "–"
    return f"{value / scale:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "over the last bucket"
    return f"{value:,.0f}"


def _waited(row: PhaseRow, gave_up: list[PhaseRow]) -> str:
    """The cell of the seconds a phase waited for the server: why it waited in its title, and a footnote mark
    (the row added to ``gave_up``) when it stopped waiting before the server went quiet."""
    if row.waited is None:
        return "–"
    if not row.gave_up:
        return f'<td title="settled: {html.escape(row.settled or "")}">{row.waited:,.1f}</td>'
    gave_up.append(row)
    return f'<td class="gave-up" title="gave up: {html.escape(row.settled or "")}">{row.waited:,.1f}*</td>'


def _sessions(row: PhaseRow) -> str:
    if row.connected_max is None:
        return "–"
    return (
        f"{row.connected_min}–{row.connected_max}" if row.connected_min != row.connected_max else str(row.connected_max)
    )


def render_html(
    run: Run, rows: list[PhaseRow], found: list[Conclusion], charts: list[Path], origin: float, name: str
) -> str:
    e = html.escape
    title = f"locust-xmpp report: {name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#212529}"
        "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}"
        "th,td{border:1px solid #ced4da;padding:3px 7px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}th{background:#f1f3f5}"
        "li{margin:0.4em 0}.not-drawn{color:#868e96}img{max-width:100%}.gave-up{color:#c92a2a}"
        ".footnote{font-size:13px;margin:-1em 0 1.5em}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>From {e(run.source)}. Run start {datetime.fromtimestamp(origin, tz=UTC).isoformat(timespec='seconds')}; "
        f"server: {e(run.server_name if run.server else run.server_note or 'not observed')}.</p>",
        *([f'<p class="unfinished"><b>{e(unfinished)}</b></p>'] if (unfinished := unfinished_run(run)) else []),
        "<h2>Conclusions</h2>",
        '<ul class="conclusions">',
    ]
    for c in found:
        css = "drawn" if c.drawn else "not-drawn"
        parts.append(f'<li class="{css}" data-key="{e(c.key)}"><b>{e(c.title)}.</b> {e(c.text)}</li>')
    parts.append("</ul>")
    parts.append("<h2>Charts</h2>")
    if not run.server:
        parts.append(f"<p>No server chart: {e(run.server_note or 'the server was not observed')}.</p>")
    for chart in charts:
        data = base64.b64encode(chart.read_bytes()).decode("ascii")
        parts.append(f'<p><img alt="{e(chart.name)}" src="data:image/png;base64,{data}"></p>')
    parts.append("<h2>Phases</h2>")
    parts.append(
        '<table class="phases"><tr><th>phase</th><th>start s</th><th>seconds</th>'
        '<th title="seconds the phase went on after its planned end, waiting for the server to go quiet">waited s</th>'
        "<th>users</th><th>sessions</th><th>CPU % mean</th><th>CPU % max</th><th>CPU s</th><th>RSS MiB mean</th>"
        "<th>RSS MiB max</th><th>messages/s</th><th>failures</th>"
        '<th title="deliveries judged lost during the phase">lost</th>'
        '<th title="deliveries due and not delivered yet at the phase\'s end, not judged yet">in flight</th>'
        '<th title="the largest delay of the generator\'s own event loop: latencies include up to this much of it">'
        "generator lag s</th></tr>"
    )
    gave_up = []
    for r in rows:
        cells = [
            _num(r.start - origin, 1), _num(r.seconds, 1), _waited(r, gave_up), str(r.users), _sessions(r),
            _num(r.cpu_mean), _num(r.cpu_max), _num(r.cpu_seconds, 2), _num(r.rss_mean, 1, MIB),
            _num(r.rss_max, 1, MIB), _num(r.message_rate, 1), _num(r.failures), _num(r.lost), _num(r.in_flight),
            _num(r.generator_lag, 2),
        ]  # fmt: skip
        name = e(r.name) + (" (skipped)" if r.skipped else "")
        row = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
        parts.append(f'<tr class="phase" data-phase="{e(r.name)}"><td>{name}</td>{row}</tr>')
    parts.append("</table>")
    for r in gave_up:
        parts.append(f'<p class="footnote">* {e(r.name)} stopped waiting for the server after {r.waited:.1f} s, '
                     f"before it went quiet: {e(r.settled or '')}.</p>")  # fmt: skip
    names = sorted({n for r in rows for n in r.latency})
    if names:
        unit = "ms, histogram bucket bounds" if run.latency_buckets else "ms"
        parts.append(f"<h2>Latency by phase: p50 / p95 ({unit}), requests</h2>")
        parts.append('<table class="latency"><tr><th>request</th>'
                     + "".join(f"<th>{e(r.name)}</th>" for r in rows) + "</tr>")  # fmt: skip
        for n in names:
            cells = []
            for r in rows:
                lat = r.latency.get(n)
                if lat is None:
                    cells.append("<td></td>")
                    continue
                failed = f", {lat.failures} failed" if lat.failures else ""
                cells.append(f"<td>{_ms(lat.p50)} / {_ms(lat.p95)}<br><small>{lat.requests}{failed}</small></td>")
            parts.append(f'<tr data-request="{e(n)}"><td>{e(n)}</td>{"".join(cells)}</tr>')
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _finite(value: Any) -> Any:
    """JSON has no infinity: a latency past the last histogram bucket is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _rates(row: PhaseRow) -> dict[str, float | None]:
    return {"seconds": row.seconds, "message_rate": row.message_rate, "delivery_rate": row.delivery_rate}


def unfinished_run(run: Run) -> str:
    """A sentence saying that the run did not end (its last phase has no end: the generator stopped or was killed
    while it went on), or '' for a run that ended."""
    if not run.phases or run.phases[-1].end is not None:
        return ""
    last = run.phases[-1]
    until = run.end if run.end is not None else last.start
    stamp = datetime.fromtimestamp(until, tz=UTC).isoformat(timespec="seconds")
    return (f"This run did not end: its files stop at {stamp}, {until - last.start:.0f} s into phase {last.name} "
            "(the generator stopped or was killed). What follows is the run up to then; deliveries still in flight "
            "then were not judged.")  # fmt: skip


def report_data(run: Run, rows: list[PhaseRow], found: list[Conclusion], origin: float) -> dict[str, Any]:
    return {
        "source": run.source,
        "server": run.server_name if run.server else None,
        "server_note": run.server_note,
        "unfinished": unfinished_run(run) or None,
        "start_unix": origin,
        "phases": [{**asdict(r), **_rates(r)} for r in rows],
        "conclusions": [asdict(c) for c in found],
    }
