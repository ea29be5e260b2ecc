"""The field test scaled down (40 viewers, 3 batches) on each lab server, on a server that falls behind: one run,
read every way.

The lab server is stopped twice for longer than the run's request timeout (SIGSTOP, then SIGCONT): while
viewers talk, so that message reflections come after their requests failed, and as they leave, so that
the room's answers to their leaves come late while deliveries are still queued for them. Two slixmpp
observers sit in the room from before the first message to after the last: the message truth must be what
their record of the room verifies, member by member. Then the exact request mix, the failures (only the
timeouts the stalls caused, each answered later), the archive read back independently, the samples and the
report: the files are there, the charts are real images, the phase table follows the phase file, the lab
server was sampled, and the conclusions are sentences with numbers. How much CPU the vCards and MAM take is
a measurement, not a test: benchmarks/seeds.py prints it at the seeds' size."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from room_observer import RoomObserver, verify
from runs import (
    LIVECHAT_SMALL,
    SEED,
    Run,
    Started,
    assert_phases_in_order,
    generator_skips,
    locust_command,
    read_archive,
    room_name,
)

pytestmark = pytest.mark.heavy

VIEWERS = 40
"""Enough viewers per batch that the avatars' O(n²) cost stands clear of the lab server's noise."""


class ReportPage(HTMLParser):
    """The phase rows and the conclusions of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.phase_rows: list[list[str]] = []
        self.conclusions: dict[str, str] = {}
        self.images: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._conclusion: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "phase":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "li" and a.get("data-key"):
            self._conclusion = a["data-key"]
            self.conclusions[self._conclusion] = ""
        elif tag == "img":
            self.images.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.phase_rows.append(self._row)
            self._row = None
        elif tag == "li":
            self._conclusion = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._conclusion is not None:
            self.conclusions[self._conclusion] += data


STALL = 7.0
"""Seconds the lab server is stopped, each time: longer than the run's request timeout (TIMEOUT)."""
TIMEOUT = 4.0


def stall(pid: int, seconds: float) -> None:
    """Stop the lab server (a process this test session started) for ``seconds``."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_field_test_scaled_down_on_a_server_that_falls_behind(
    lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed, then 3 batches of 40 viewers: everything, no vCards, no vCards and no MAM."""
    monkeypatch.setenv("LOCUST_XMPP_LAB_DIR", str(lab.run_dir))  # the report samples the lab's server
    room = room_name("lc")
    jid = f"{room}@{lab.muc_domain}"
    n = VIEWERS
    observers = [RoomObserver(tmp_path, *lab.c2s_address, lab.domain, [jid], nick=f"observer{i}") for i in (1, 2)]
    prefix = tmp_path / "lc"
    cmd = locust_command(
        "livechat.py", "--headless", "--host", lab.websocket_url, "--xmpp-room", room, "--csv", str(prefix),
        "--only-summary", *LIVECHAT_SMALL, "--viewers", str(n), "--xmpp-timeout", str(TIMEOUT),
    )  # fmt: skip
    try:
        for observer in observers:
            observer.start()
        run = Started(cmd, tmp_path / "lc.log")
        run.wait_for("Phase 'batch1-talk' starts", timeout=180)
        time.sleep(1)
        stall(lab.pid, STALL)  # reflections come after their requests timed out
        run.wait_for("Phase 'batch2-leave' starts", timeout=180)
        time.sleep(0.5)
        stall(lab.pid, STALL)  # answers to leaves come late, with deliveries queued before them
        code = run.finish(timeout=240)
        records = [observer.stop() for observer in observers]
    finally:
        for observer in observers:
            observer.kill()
    result = Run(code, run.output, 0.0, prefix)
    truth = result.truth

    # The truth is what the observers verify: every message the room sent, every delivery due by the room's
    # order, member by member, delivered; nothing lost, unexpected, unverified or left in flight.
    seen = verify(records, jid, result.rows("truth_members"))
    assert seen["errors"] == [] and seen["consistent"], seen["errors"]
    talk = n * 3  # each viewer talks for 3 s at 1 message/s, in every batch
    # The server is stopped, not the generator; but on a busy machine the generator itself may reach a message a
    # whole interval after its time: then that message is skipped, and said to be skipped for that reason only.
    skipped = generator_skips(truth)
    assert skipped < talk, truth
    sent = 3 * talk + SEED - skipped
    assert seen["messages"] == seen["distinct_messages"] == truth["sent"] == sent and seen["complete"]
    assert seen["expected_differs"] == [] and seen["delivered_differs"] == [], seen
    assert {k: v for k, v in truth.items() if k != "deviations"} == {
        "sent": sent, "confirmed": sent, "unconfirmed": 0, "skipped": skipped,
        "expected": seen["due"], "delivered": seen["due"], "in_flight": 0, "lost": 0, "unexpected": 0,
        "unverified": 0, "duplicated": 0, "out_of_order": 0, "missing_workers": 0, "missing_users": 0,
    }  # fmt: skip
    assert seen["due"] == (sent - SEED) * n + SEED * 2

    # Failures: only requests held past the timeout (by the stalls: messages and leaves; by a busy server: maybe
    # others), and the server answered every one of them.
    assert code == 1, result.tail()
    errors = result.errors
    no_reply = f"XmppRequestFailed('no reply within {TIMEOUT:g} s')"
    slow_stream = f"XmppRequestFailed('negotiation did not finish within {TIMEOUT:g} s')"  # a login in a stall
    kinds = {e["Error"] for e in errors}
    assert no_reply in kinds and kinds <= {no_reply, slow_stream}, errors
    assert {"message", "muc_leave"} <= {e["Name"] for e in errors}, errors
    failed = sum(int(e["Occurrences"]) for e in errors)
    assert failed == result.failures and truth["deviations"]["late_replies"]["count"] == failed, truth
    expected_counts = {
        "connect": 3 * n + 2, "auth": 3 * n + 2, "bind": 3 * n + 2,
        "disco_info": 3 * 3 * n,  # the host, the room, the room's reserved-nick node
        "disco_items": 3 * n, "roster": 3 * n, "carbons": 3 * n,
        "vcard_set": 3 * n,  # every viewer publishes its avatar, in every batch
        "vcard": 2 * n,  # own and room vCard, batch 1 only
        "vcard_occupant": n * (n - 1 + len(observers)),  # every other occupant's (observers too), batch 1 only
        "mam": 2 * n,  # batches 1 and 2
        "muc_join": 3 * n + 2, "muc_leave": 3 * n + 2,  # and the 2 seeders
        "message": sent,
    }  # fmt: skip
    assert {k: result.count(k) for k in expected_counts} == expected_counts
    # Stock Prosody has no room vCards: said once, as a difference from the plan, not as a failure.
    planned = {"no_room_vcard", "late_replies"}
    generator = {"messages_late", "generator_behind"}  # the generator's own delays, if the machine was busy
    assert planned <= set(truth["deviations"]) <= planned | generator, truth["deviations"]
    assert truth["deviations"]["no_room_vcard"]["count"] == n
    assert result.output.count("Run differs from the plan: the room has no vCard") == 1
    assert result.count("message_delivery") == truth["delivered"]
    # The stats file holds what the console table shows: the last leaves, made while users stopped, included.
    assert result.console_total == result.stats["Aggregated"]
    assert_phases_in_order(
        result, ["seed", "seed-leave"] + [f"batch{b}-{s}" for b in (1, 2, 3) for s in ("join", "talk", "leave")]
    )
    assert [int(p["users"]) for p in result.phases] == [2, 0] + [n, n, 0] * 3
    # Every phase waited for the server to be done with it (it was, each time, within the settle time).
    assert {p["settled"] for p in result.phases} == {"quiet"}, result.phases
    stalled = {p["phase"]: float(p["waited"]) for p in result.phases if p["phase"] in ("batch1-talk", "batch2-leave")}
    assert stalled["batch1-talk"] > 0, result.phases  # its deliveries were still coming when its plan ended
    # Sessions really open: every viewer all through each talk phase.
    talks = [p for p in result.phases if p["phase"].endswith("-talk")]
    assert [(int(p["connected_min"]), int(p["connected_max"])) for p in talks] == [(n, n)] * 3
    # Read back independently: the archive holds every message once, each with its marker.
    archive = read_archive(lab, tmp_path, jid)
    assert len(archive) == truth["sent"]
    assert len({tuple(a["marker"]) for a in archive}) == truth["sent"]
    assert sum(a["body"].startswith("seed message ") for a in archive) == SEED
    check_report(result, lab, n, failures=True)


def check_report(run: Run, lab, viewers: int, failures: bool = False) -> None:
    """The run's samples and report, written because the run was made with --csv and observed the lab;
    ``failures``: whether requests failed in the run."""
    prefix = run.prefix
    assert f"Observing the lab's {lab.name} in {lab.run_dir}, pid {lab.pid}" in run.output
    for suffix in ("timeline.csv", "server.csv", "phase_stats.json", "report.html", "report.json"):
        assert Path(f"{prefix}_{suffix}").stat().st_size > 0, suffix
    for chart in ("server", "load"):
        with Image.open(f"{prefix}_report_{chart}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 400
            assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # drawn, not blank

    # The lab's server was sampled all through the run: in every phase. (How often, five times a second, is not
    # asserted: a count per second is a timed claim, and the run saturates the machine on purpose.)
    phases = run.phases
    with open(f"{prefix}_server.csv", newline="") as f:
        server = list(csv.DictReader(f))
    times = [float(r["t_unix"]) for r in server]
    for p in phases:
        assert any(float(p["start_unix"]) <= t <= float(p["end_unix"]) for t in times), (p["phase"], times)
    cpu = [float(r["cpu_seconds"]) for r in server]
    assert cpu == sorted(cpu) and cpu[-1] > cpu[0]
    assert all(int(r["rss_bytes"]) > 1_000_000 for r in server)
    stats = json.loads(Path(f"{prefix}_phase_stats.json").read_text())
    assert stats["server"]["pid"] == lab.pid
    assert [s["phase"] for s in stats["snapshots"]] == [p["phase"] for p in phases] + [None]
    with open(f"{prefix}_timeline.csv", newline="") as f:
        timeline = list(csv.DictReader(f))
    assert {r["phase"] for r in timeline} >= {p["phase"] for p in phases}  # a row in every phase (each 2 s+)
    assert max(int(r["users"]) for r in timeline) == viewers == max(int(r["sessions"]) for r in timeline)
    assert int(timeline[-1]["requests.vcard_occupant"]) == run.count("vcard_occupant")

    # The phase table follows the phase file: one row per phase, in order, with its users and length.
    page = ReportPage()
    page.feed(Path(f"{prefix}_report.html").read_text())
    assert [(r[0], r[4]) for r in page.phase_rows] == [(p["phase"], p["users"]) for p in phases]
    for row, p in zip(page.phase_rows, phases, strict=True):
        assert float(row[2]) == pytest.approx(float(p["end_unix"]) - float(p["start_unix"]), abs=0.06)
        assert row[6] != "–" and row[9] != "–", row  # CPU and RSS figures for every phase
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    talks = [r for r in page.phase_rows if r[0].endswith("-talk")]
    assert all(float(r[11]) > 0 for r in talks)  # messages/s

    # Conclusions: numbers, or the reason they could not be drawn.
    texts = {key: text.split(". ", 1)[1] for key, text in page.conclusions.items()}  # less the bold title
    assert set(texts) == {"vcards", "mam", "flooding", "memory", "failures", "generator"}
    for key, text in texts.items():
        assert "cannot be drawn, as " in text or re.search(r"\d", text), (key, text)
    assert re.search(r"took \d+% of the server's CPU while viewers joined: .* used \d+\.\d\d CPU-seconds during "
                     r"batch1-join", texts["vcards"]), texts["vcards"]  # fmt: skip
    assert re.search(r"took \d+% .* and \d+% of batch2-join's", texts["mam"]), texts["mam"]
    # A few sessions may leave the server's RSS where it was (its allocator had room): that is said too.
    assert re.search(r"grows by -?\d+\.\d KiB per connected session: .* R² -?\d\.\d\d", texts["memory"]) \
        or re.search(r"did not change with the sessions open \(\d+ samples from 0 to \d sessions, RSS \d+\.\d MiB",
                     texts["memory"]) \
        or "cannot be drawn, as" in texts["memory"], texts["memory"]  # fmt: skip
    if failures:
        assert re.search(r"^Requests began to fail \d+ s into the run in phase \S+, with \d+ users", texts["failures"])
    else:
        assert texts["failures"].startswith(f"No request failed: the server answered everything at up to {viewers} "
                                            "users")  # fmt: skip
    data = json.loads(Path(f"{prefix}_report.json").read_text())
    assert {c["key"]: c["text"] for c in data["conclusions"]} == texts

