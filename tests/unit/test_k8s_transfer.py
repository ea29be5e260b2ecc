"""How a run on Kubernetes is told to the master, and how its files come back through the master's log:
``master.RunSpec`` and ``master.run_command``, ``transfer``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from xmpp_user.deploy import transfer
from xmpp_user.deploy.master import RunSpec, run_command


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
