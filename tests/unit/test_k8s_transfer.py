"""How a run on Kubernetes is told to the master, and how its files come back through the master's log:
``master.RunSpec`` and ``master.run_command``, ``transfer``; the blocks the master prints while its run goes on, and
what ``k8s run`` brings back from them when the master dies before the run's end (on a fake cluster).
"""

from __future__ import annotations

# xmpp_user first: Locust monkey-patches with gevent on import, which must come before the Kubernetes client's.
from xmpp_user.deploy import transfer  # isort: skip

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmpp_user.deploy import master
from xmpp_user.deploy.master import RunSpec, run_command
from xmpp_user.observe.model import Sample, write_timeline

pytest.importorskip("kubernetes", reason="the k8s extra is missing: run  bash scripts/setup.sh")
from fake_cluster import RecordingCluster  # noqa: E402

from xmpp_user.deploy.cluster import LogLine, MasterState  # noqa: E402
from xmpp_user.deploy.run import EXIT_MASTER_DIED, Run  # noqa: E402


def test_a_run_spec_round_trips_and_refuses_what_is_not_one() -> None:
    spec = RunSpec("20300101-000000-ab12", 2, 360, ("-f", "/locustfiles/livechat.py", "--viewers", "500"))
    assert RunSpec.from_json(spec.to_json()) == spec
    for bad in ("", "{}", '{"id": "../x", "workers": 1, "wait": 1, "args": []}', '{"id": "a", "workers": "two"}'):
        with pytest.raises(ValueError):
            RunSpec.from_json(bad)


def test_the_master_runs_headless_for_its_workers_with_csv_files_unless_told_otherwise() -> None:
    spec = RunSpec("r1", 3, 400, ("-f", "/locustfiles/quickstart.py", "-t", "2m"))
    command = run_command(spec, ["--config", "/etc/locust-xmpp/locust.conf"])
    assert Path(command[0]).name == "locust"
    assert command[1:] == ["--config", "/etc/locust-xmpp/locust.conf", "--master", "--headless", "--expect-workers",
                           "3", "--expect-workers-max-wait", "400", "--csv", "run", "-f", "/locustfiles/quickstart.py",
                           "-t", "2m"]  # fmt: skip
    own = run_command(RunSpec("r1", 1, 60, ("--csv=mine",)), [])
    assert "run" not in own and own[-1] == "--csv=mine"


def _run_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "run1"
    (directory / "sub").mkdir(parents=True)
    (directory / "run_stats.csv").write_text("Type,Name\nXMPP,connect\n")
    (directory / "run_truth.json").write_text('{"lost": 0}\n')
    (directory / "sub" / "run_report.html").write_bytes(bytes(range(256)) * 100)
    return directory


def test_files_come_back_through_the_log_between_locusts_output(tmp_path: Path) -> None:
    directory = _run_directory(tmp_path)
    block = list(transfer.block("run1", directory, 1))
    assert all(len(line) <= 76 for line in block[1:-1])
    log = ["Starting Locust", "XMPP connect 5 0(0.00%)", *block, "the interactive master takes over"]
    receiver = transfer.Receiver("run1")
    shown = [line for line in log if not receiver.feed(line + "\n")]
    assert shown == ["Starting Locust", "XMPP connect 5 0(0.00%)", "the interactive master takes over"]
    assert receiver.done and receiver.exit_code == 1
    files = receiver.files()
    assert files == {"run_stats.csv": b"Type,Name\nXMPP,connect\n", "run_truth.json": b'{"lost": 0}\n',
                     "sub/run_report.html": bytes(range(256)) * 100}  # fmt: skip
    written = transfer.save(files, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == sorted(files)


def test_a_block_read_twice_after_a_broken_stream_counts_once(tmp_path: Path) -> None:
    block = list(transfer.block("run1", _run_directory(tmp_path), 0))
    receiver = transfer.Receiver("run1")
    for line in block[:5] + block:
        assert receiver.feed(line)
    assert receiver.exit_code == 0 and len(receiver.files()) == 3


def test_a_cut_or_damaged_block_is_said_and_another_runs_block_is_output(tmp_path: Path) -> None:
    block = list(transfer.block("run1", _run_directory(tmp_path), 0))
    damaged = transfer.Receiver("run1")
    for line in block[:3] + block[4:]:
        damaged.feed(line)
    with pytest.raises(transfer.TransferError, match="damaged"):
        damaged.files()
    cut = transfer.Receiver("run1")
    for line in block[:-1]:
        cut.feed(line)
    with pytest.raises(transfer.TransferError, match="did not come through"):
        cut.files()
    other = transfer.Receiver("run2")
    assert not any(other.feed(line) for line in block)


@pytest.mark.parametrize("name", ["../escape.csv", "/etc/passwd", "link"])
def test_unpacking_refuses_anything_but_plain_relative_files(name: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo(name)
        if name == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        else:
            member.size = 2
            tar.addfile(member, io.BytesIO(b"x\n"))
    with pytest.raises(transfer.TransferError, match="refusing"):
        transfer.unpack(buffer.getvalue())


# ---- the blocks of a run that goes on ----


def _files(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(content)
    return directory


def test_the_newest_of_each_file_wins_over_several_blocks(tmp_path: Path) -> None:
    directory = _files(tmp_path / "run1", {"run_truth.json": '{"sent": 1, "partial": "..."}', "run_phases.csv": "a"})
    first = transfer.block("run1", directory, None, going_on=True)
    assert first[-1] == f"{transfer.PREFIX} run1 end: the run goes on"
    _files(directory, {"run_truth.json": '{"sent": 9, "partial": "..."}', "run_timeline.csv": "t_unix\n1\n"})
    second = transfer.block("run1", directory, None, going_on=True)
    receiver = transfer.Receiver("run1")
    # Locust's output comes between the blocks and between two of a block's lines (never inside one).
    log = ["Starting Locust", *first[:2], "[2030-01-01 00:00:05] master/INFO/locust.runners: 2 workers", *first[2:],
           " Type     Name  # reqs", *second]  # fmt: skip
    shown = [line for line in log if not receiver.feed(line)]
    assert shown == ["Starting Locust", "[2030-01-01 00:00:05] master/INFO/locust.runners: 2 workers",
                     " Type     Name  # reqs"]  # fmt: skip
    assert receiver.blocks == 2 and not receiver.done and receiver.exit_code is None and receiver.cut() == ""
    assert receiver.latest == {"run_truth.json": b'{"sent": 9, "partial": "..."}', "run_phases.csv": b"a",
                               "run_timeline.csv": b"t_unix\n1\n"}  # fmt: skip
    with pytest.raises(transfer.TransferError, match="did not come through"):
        receiver.files()  # the run's last block has not come


def test_a_truncated_last_block_is_ignored_with_a_clear_line(tmp_path: Path) -> None:
    directory = _files(tmp_path / "run1", {"run_truth.json": "old"})
    first = transfer.block("run1", directory, None, going_on=True)
    (directory / "run_truth.json").write_bytes(bytes(range(256)) * 40)  # several lines of base64
    second = transfer.block("run1", directory, None, going_on=True)
    receiver = transfer.Receiver("run1")
    for line in first + second[:4]:  # the master killed while it printed the second
        receiver.feed(line)
    assert receiver.latest == {"run_truth.json": b"old"}
    said = receiver.cut()
    assert said.startswith("the last block of run run1 was cut after about 171 of ") and said.endswith(
        " bytes: ignored; the files are those of the block before"
    ), said
    alone = transfer.Receiver("run1")
    for line in second[:4]:
        alone.feed(line)
    assert alone.cut().endswith("ignored; no block came through whole before it") and alone.latest == {}


def test_a_damaged_block_while_the_run_goes_on_is_said_and_the_one_before_stands(tmp_path: Path) -> None:
    directory = _files(tmp_path / "run1", {"run_truth.json": "first"})
    first = transfer.block("run1", directory, None, going_on=True)
    (directory / "run_truth.json").write_text("second")
    second = transfer.block("run1", directory, None, going_on=True)
    receiver = transfer.Receiver("run1")
    for line in first + second[:1] + [second[1][:-3]] + second[2:]:  # a line cut short
        receiver.feed(line)
    assert receiver.latest == {"run_truth.json": b"first"} and receiver.blocks == 1
    [problem] = receiver.problems
    assert problem.startswith("a block of run run1 came through the master's log damaged (")
    assert problem.endswith("): ignored, the one before it stands")


def test_a_master_container_started_again_gives_the_runs_files_without_an_exit_code(tmp_path: Path) -> None:
    directory = _files(tmp_path / "run1", {"run_truth.json": "written until the kill", "run_stats.csv": "x"})
    (directory / "run_timeline.csv.part").write_text("half a file, being written when the master was killed")
    lines = transfer.block("run1", directory, None)
    assert lines[-1] == f"{transfer.PREFIX} run1 end: the run did not end"
    receiver = transfer.Receiver("run1")
    assert all(receiver.feed(line) for line in lines)
    assert receiver.done and not receiver.ended and receiver.exit_code is None
    assert receiver.files() == receiver.latest == {"run_truth.json": b"written until the kill", "run_stats.csv": b"x"}


def test_a_block_is_written_in_whole_lines_of_at_most_pipe_buf_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _files(tmp_path / "run1", {})
    (directory / "random").write_bytes(__import__("os").urandom(20_000))  # about 360 lines of base64
    lines = transfer.block("run1", directory, 0)
    writes: list[bytes] = []
    monkeypatch.setattr(transfer, "_write_all", lambda fd, data: writes.append(data) or len(data))
    total = transfer.write_lines(lines, 99)
    assert b"".join(writes).decode().splitlines() == lines and total == sum(map(len, writes))
    assert len(writes) > 1 and all(len(w) <= transfer.select.PIPE_BUF and w.endswith(b"\n") for w in writes)


def test_the_blocks_wait_longer_as_they_grow() -> None:
    assert transfer.next_wait(20_000) == transfer.STREAM_INTERVAL
    assert transfer.next_wait(40 * transfer.STREAM_RATE) == 40


def test_the_master_prints_the_runs_files_while_locust_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(transfer, "STREAM_INTERVAL", 0.3)
    directory = tmp_path / "run1"
    directory.mkdir()
    locust = ("import pathlib, time\n"
              "for n in range(4):\n"
              "    pathlib.Path('run_truth.json').write_text(str(n)); time.sleep(0.4)\n"
              "raise SystemExit(3)\n")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", locust], cwd=directory)
    assert master.stream(process, "run1", directory) == 3
    receiver = transfer.Receiver("run1")
    for line in capfd.readouterr().out.splitlines():
        assert receiver.feed(line), line
    assert receiver.blocks >= 3 and not receiver.done
    assert receiver.latest["run_truth.json"] in (b"2", b"3")


@pytest.mark.parametrize("locust_ended", [False, True])
def test_a_master_container_started_again_prints_the_runs_files_instead_of_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], locust_ended: bool
) -> None:
    spec = RunSpec("run1", 1, 60, ("-f", "/locustfiles/livechat.py"))
    _files(tmp_path / "run1", {"run_truth.json": "until the kill", "run_timeline.csv.part": "half"})
    if locust_ended:
        (tmp_path / ".run1.exit-code").write_text("1\n")
    monkeypatch.setenv(master.RUN_ENV, spec.to_json())
    monkeypatch.setattr(master, "_run", lambda *a: pytest.fail("the run was started again"))

    def interactive(base_args: list[str]) -> None:
        raise SystemExit("interactive")

    monkeypatch.setattr(master, "_interactive", interactive)
    monkeypatch.setattr(master.signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit, match="interactive"):
        master.main(tmp_path, [])
    receiver = transfer.Receiver("run1")
    shown = [line for line in capfd.readouterr().out.splitlines() if not receiver.feed(line)]
    assert receiver.done and receiver.exit_code == (1 if locust_ended else None)
    assert receiver.files() == {"run_truth.json": b"until the kill"}
    assert ("it did not end, and its files are what it wrote until then" in shown[0]) is not locust_ended, shown


def test_the_runs_csv_prefix_is_its_own_or_run() -> None:
    assert master.csv_prefix(["-f", "x.py"]) == "run"
    assert master.csv_prefix(["--csv", "mine", "-t", "1m"]) == "mine"
    assert master.csv_prefix(["--csv=sub/mine"]) == "sub/mine"


# ---- k8s run when the master dies, on a fake cluster ----


T0 = 1_900_000_000.0


def _run_so_far(directory: Path, seconds: int) -> Path:
    """What a livechat run has written ``seconds`` s into its join phase: the phase in force has no end yet."""
    directory.mkdir(parents=True, exist_ok=True)
    common = {"connected_min": 0, "params": {}, "skipped": False, "settle": 0, "waited": 0, "settled": ""}
    phases = [{"phase": "seed", "start_unix": T0, "end_unix": T0 + 3, "users": 2, "connected_max": 2, **common},
              {"phase": "batch1-join", "start_unix": T0 + 3, "end_unix": None, "users": 20, "connected_max": 20,
               **common}]  # fmt: skip
    (directory / "run_phases.json").write_text(json.dumps(phases))
    samples = [Sample(T0 + t, "seed" if t < 3 else "batch1-join", min(20, 2 + t), min(20, 2 + t), {"connect": t})
               for t in range(seconds + 4)]  # fmt: skip
    write_timeline(directory / "run_timeline.csv", samples)
    (directory / "run_truth.json").write_text(json.dumps({"sent": seconds, "partial": "the run had not ended"}))
    return directory


class DyingMaster(RecordingCluster):
    """Each look at the master's log gives the next of ``logs``, each look at its container the next of ``states``
    (the last one stays)."""

    def __init__(self, logs: list[list[str]], states: list[MasterState]) -> None:
        super().__init__()
        self.logs, self.states = logs, states

    def log(self, pod: str, since_seconds: int | None = None) -> Iterator[LogLine]:
        for line in self.logs.pop(0) if self.logs else []:
            yield LogLine(("", ""), line)

    def master_state(self, pod: str) -> MasterState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def test_a_killed_master_leaves_its_last_blocks_files_and_their_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = MasterState(False, 0, "OOMKilled, exit code 137 (SIGKILL)", final=True)
    run = Run(DyingMaster([], [killed]), users=20, per_worker=10, timeout=5, output=tmp_path / "out")  # type: ignore[arg-type]
    early = transfer.block(run.id, _run_so_far(tmp_path / "early", 2), None, going_on=True)
    later = transfer.block(run.id, _run_so_far(tmp_path / "later", 12), None, going_on=True)
    run.cluster.logs = [["[master] Starting Locust", *early, "[master] 20 users", *later, *later[:3]]]  # type: ignore[attr-defined]
    assert run(["-f", "/locustfiles/livechat.py"]) == EXIT_MASTER_DIED
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith(f"locust-xmpp k8s: run {run.id}: ")]
    assert any("the last block of run" in line and "was cut after about" in line for line in said), said
    [died] = [line for line in said if "the master died" in line]
    assert died.startswith(f"locust-xmpp k8s: run {run.id}: the master died before the run ended (OOMKilled, exit "
                           "code 137 (SIGKILL)): 3 files as of its last block, 0 s old, in ")  # fmt: skip
    truth = json.loads((tmp_path / "out" / "run_truth.json").read_text())
    assert truth == {"sent": 12, "partial": "the run had not ended"}, "the newest block's"
    [report] = [line for line in said if " report " in line]
    assert "This run did not end: its files stop at " in report and "into phase batch1-join" in report
    data = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert data["unfinished"].startswith("This run did not end")
    assert run.cluster.calls == [("set_run", True), ("scale", 2), ("scale", 0), ("set_run", False)]  # type: ignore[attr-defined]


def test_a_master_started_again_in_its_pod_gives_what_the_run_wrote_until_it_died(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    restarted = MasterState(True, 1, "OOMKilled, exit code 137 (SIGKILL)")
    run = Run(DyingMaster([], [restarted]), users=20, per_worker=10, timeout=5, output=tmp_path / "out")  # type: ignore[arg-type]
    early = transfer.block(run.id, _run_so_far(tmp_path / "early", 2), None, going_on=True)
    on_disk = transfer.block(run.id, _run_so_far(tmp_path / "on-disk", 14), None)
    run.cluster.logs = [[*early], ["run was started before in this pod", *on_disk]]  # type: ignore[attr-defined]
    assert run([]) == EXIT_MASTER_DIED
    out = capsys.readouterr().out
    assert ("the master died before the run ended (OOMKilled, exit code 137 (SIGKILL)): 3 files as its container, "
            "started again, printed them") in out  # fmt: skip
    assert json.loads((tmp_path / "out" / "run_truth.json").read_text())["sent"] == 14
