"""A small phased livechat run on each lab server writes its samples and its report: the files are there, the
charts are real images, the phase table follows the phase file, the conclusions are sentences with numbers or
with the reason they could not be drawn, and the lab server was sampled."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from runs import LIVECHAT_SMALL, room_name, run_locust

VIEWERS = 6


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


def test_a_phased_livechat_run_writes_its_report(lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUST_XMPP_LAB_DIR", str(lab.run_dir))  # how the run finds the lab it is pointed at
    prefix = tmp_path / "report"
    run = run_locust("livechat.py", prefix, "--headless", "--host", lab.websocket_url, "--xmpp-room",
                     room_name("report"), *LIVECHAT_SMALL, "--viewers", str(VIEWERS), "--batches", "2",
                     timeout=90)  # fmt: skip
    assert run.returncode == 0, run.tail()
    assert f"Observing the lab's {lab.name} in {lab.run_dir}, pid {lab.pid}" in run.output

    for suffix in ("timeline.csv", "server.csv", "phase_stats.json", "report.html", "report.json"):
        assert Path(f"{prefix}_{suffix}").stat().st_size > 0, suffix
    for chart in ("server", "load"):
        with Image.open(f"{prefix}_report_{chart}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 400
            assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # drawn, not blank

    # The lab's server was sampled about five times a second all through the run.
    phases = run.phases
    span = float(phases[-1]["end_unix"]) - float(phases[0]["start_unix"])
    with open(f"{prefix}_server.csv", newline="") as f:
        server = list(csv.DictReader(f))
    assert len(server) >= 4 * span, (len(server), span)
    cpu = [float(r["cpu_seconds"]) for r in server]
    assert cpu == sorted(cpu) and cpu[-1] > cpu[0]
    assert all(int(r["rss_bytes"]) > 1_000_000 for r in server)
    stats = json.loads(Path(f"{prefix}_phase_stats.json").read_text())
    assert stats["server"]["pid"] == lab.pid
    assert [s["phase"] for s in stats["snapshots"]] == [p["phase"] for p in phases] + [None]
    with open(f"{prefix}_timeline.csv", newline="") as f:
        timeline = list(csv.DictReader(f))
    assert len(timeline) >= span - 2
    assert max(int(r["users"]) for r in timeline) == VIEWERS == max(int(r["sessions"]) for r in timeline)
    assert int(timeline[-1]["requests.vcard_occupant"]) == VIEWERS * (VIEWERS - 1)

    # The phase table follows the phase file: one row per phase, in order, with its users and length.
    page = ReportPage()
    page.feed(Path(f"{prefix}_report.html").read_text())
    assert [(r[0], r[3]) for r in page.phase_rows] == [(p["phase"], p["users"]) for p in phases]
    for row, p in zip(page.phase_rows, phases, strict=True):
        assert float(row[2]) == pytest.approx(float(p["end_unix"]) - float(p["start_unix"]), abs=0.06)
        assert row[5] != "–" and row[8] != "–", row  # CPU and RSS figures for every phase
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    talks = [r for r in page.phase_rows if r[0].endswith("-talk")]
    assert all(float(r[10]) > 0 for r in talks)  # messages/s

    # Conclusions: numbers, or the reason they could not be drawn.
    texts = {key: text.split(". ", 1)[1] for key, text in page.conclusions.items()}  # less the bold title
    assert set(texts) == {"vcards", "mam", "memory", "failures"}
    for key, text in texts.items():
        assert "cannot be drawn, as " in text or re.search(r"\d", text), (key, text)
    assert "its CPU share cannot be drawn, as the run had 2 batches only, so no batch3-join" in texts["mam"]
    vcards = r"(took \d+%|showed no CPU cost).* used \d+\.\d\d CPU-seconds during batch1-join"
    assert re.search(vcards, texts["vcards"]) or "cannot be drawn, as" in texts["vcards"], texts["vcards"]
    # Six sessions may leave the server's RSS where it was (its allocator had room): that is said too.
    assert re.search(r"grows by -?\d+\.\d KiB per connected session: .* R² -?\d\.\d\d", texts["memory"]) \
        or re.search(r"did not change with the sessions open \(\d+ samples from 0 to \d sessions, RSS \d+\.\d MiB",
                     texts["memory"]) \
        or "cannot be drawn, as" in texts["memory"], texts["memory"]  # fmt: skip
    assert texts["failures"].startswith(f"No request failed: the server answered everything at up to {VIEWERS} users")
    data = json.loads(Path(f"{prefix}_report.json").read_text())
    assert {c["key"]: c["text"] for c in data["conclusions"]} == texts

