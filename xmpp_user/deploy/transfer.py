"""The run's files through the master's log. While Locust runs, the master prints the run's directory into its log
as a block every so often (``STREAM_INTERVAL`` seconds or more), and once more when Locust has ended; ``locust-xmpp
k8s run`` reads the blocks as it follows the log and keeps the newest version of each file. Reading a pod's log is
the only right this takes (``pods/log``): no exec into the pod, no volume that outlives it.

    locust-xmpp k8s: files of run ID begin: SIZE bytes, sha256 DIGEST
    <the run's directory as a gzipped tar, in base64 lines of 76 characters>
    locust-xmpp k8s: files of run ID end: HOW

HOW says what the block is:

- ``the run goes on``: printed while Locust runs, the files as they are then;
- ``locust exit code CODE``: the run's last block, once Locust has ended;
- ``the run did not end``: the run's last block from a master container that was started again while Locust ran
  (killed, out of memory): what the run wrote until then.

Every block holds the whole directory, so the newest block that came through whole is enough: one that was cut or
damaged (the master killed while printing it, a log rotation in its middle) is ignored and the one before it stands.
A master that dies mid-run so leaves ``k8s run`` its files as of its last block, if the command was following the
log then (the log itself lasts only as long as the pod). The size and checksum tell a block that came through whole.

A block is written in whole lines, in writes of at most ``PIPE_BUF`` bytes, which a pipe never mixes with another
process's: Locust's output, printed meanwhile, comes between the block's lines and never inside one, and the receiver
passes it on as output.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import select
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath

PREFIX = "locust-xmpp k8s: files of run"
GOES_ON = "the run goes on"
NOT_ENDED = "the run did not end"
_BEGIN = re.compile(re.escape(PREFIX) + r" (?P<run>\S+) begin: (?P<size>\d+) bytes, sha256 (?P<digest>[0-9a-f]{64})")
_END = re.compile(
    re.escape(PREFIX) + rf" (?P<run>\S+) end: (?:locust exit code (?P<code>-?\d+)|(?P<how>{GOES_ON}|{NOT_ENDED}))"
)
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]{1,76}")
WRITING = ".part"
"""The suffix of a file being written: the run's own files are written whole under it, then renamed. Left out."""
STREAM_INTERVAL = 10.0
"""Seconds at least between two blocks printed while Locust runs."""
STREAM_RATE = 4096
"""Bytes a second that the blocks add to the master's log, at most on average: after a block of N bytes the next
waits N / STREAM_RATE seconds if that is longer than STREAM_INTERVAL (a livechat run's block grows by about 200 bytes
a second of run: one every 10 s for the first few minutes, one every 3 min after an hour)."""


class TransferError(Exception):
    """The block is cut or damaged: one line saying so."""


def run_files(directory: Path) -> dict[str, bytes]:
    """The regular files under ``directory`` by relative path, but those being written (``WRITING``)."""
    files: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.endswith(WRITING):
            continue
        try:
            files[path.relative_to(directory).as_posix()] = path.read_bytes()
        except FileNotFoundError:
            continue  # gone between the listing and the reading
    return files


def pack(files: dict[str, bytes]) -> bytes:
    """The files as a gzipped tar."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size, member.mtime, member.mode = len(content), now, 0o644
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def block(run_id: str, directory: Path, exit_code: int | None, going_on: bool = False) -> list[str]:
    """The lines (without line ends) of a block of ``directory``'s files: the run's last block with Locust's exit
    code, or with None the block of a run that has not ended: one printed while it goes on (``going_on``), or by a
    master container started again while Locust ran."""
    data = pack(run_files(directory))
    how = GOES_ON if going_on else NOT_ENDED if exit_code is None else f"locust exit code {exit_code}"
    return [
        f"{PREFIX} {run_id} begin: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}",
        *base64.encodebytes(data).decode("ascii").splitlines(),
        f"{PREFIX} {run_id} end: {how}",
    ]


def write_lines(lines: list[str], fd: int = 1) -> int:
    """Write the lines to ``fd`` in writes of whole lines of at most PIPE_BUF bytes each; the bytes written."""
    sys.stdout.flush()  # what was printed before comes before
    chunk, total = b"", 0
    for line in lines:
        data = (line + "\n").encode()
        if chunk and len(chunk) + len(data) > select.PIPE_BUF:
            total += _write_all(fd, chunk)
            chunk = b""
        chunk += data
    return total + (_write_all(fd, chunk) if chunk else 0)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def next_wait(written: int) -> float:
    """Seconds until the next block while the run goes on, after one of ``written`` bytes."""
    return max(STREAM_INTERVAL, written / STREAM_RATE)


class Receiver:
    """Reads one run's blocks out of the master's log, line by line; everything else is Locust's output.

    ``latest`` holds the newest version of each file from the blocks that came through whole; a block that came
    damaged is said in ``problems`` and ignored. The run's last block makes it ``done``: with Locust's exit code, or
    without one when a master container started again printed what the run wrote until it died.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.latest: dict[str, bytes] = {}
        """The newest version of each file (a new dict at each block: another thread may read it)."""
        self.blocks = 0
        """The blocks that came through whole."""
        self.last_block: float | None = None
        """``time.monotonic()`` when the last block that came through whole ended."""
        self.problems: list[str] = []
        """One line for each block of the run going on that came damaged (ignored)."""
        self.exit_code: int | None = None
        """Locust's exit code, from the run's last block once Locust has ended."""
        self.done = False
        """The run's last block has come (whole or not)."""
        self._final: dict[str, bytes] | None = None
        self._error = ""
        self._lines: list[str] | None = None
        self._size = 0
        self._digest = ""

    @property
    def ended(self) -> bool:
        """Locust ended, and its last block said with what exit code."""
        return self.exit_code is not None

    def feed(self, line: str) -> bool:
        """Take one log line; True if it belongs to a block (not to be shown as Locust's output)."""
        line = line.rstrip("\r\n")
        if self.done:
            return False
        begin = _BEGIN.fullmatch(line)
        if begin and begin["run"] == self.run_id:
            # A stream read again from an earlier point repeats the block: start it over (a block cut by the master's
            # end is followed by the next container's).
            self._lines, self._size, self._digest = [], int(begin["size"]), begin["digest"]
            return True
        if self._lines is None:
            return False
        end = _END.fullmatch(line)
        if end and end["run"] == self.run_id:
            self._close(end)
            return True
        if _BASE64_LINE.fullmatch(line):
            self._lines.append(line)
            return True
        return False  # Locust's output, printed between two of the block's lines

    def _close(self, end: re.Match[str]) -> None:
        lines, self._lines = self._lines or [], None
        last = end["how"] != GOES_ON
        try:
            files = self._decode(lines)
        except TransferError as exc:
            if last:
                self._error = str(exc)
            else:
                self.problems.append(f"a block of run {self.run_id} {exc}: ignored, the one before it stands")
            files = None
        if files is not None:
            self.latest = {**self.latest, **files}
            self.blocks += 1
            self.last_block = time.monotonic()
        if last:
            self._final = files
            self.exit_code = int(end["code"]) if end["code"] is not None else None
            self.done = True

    def _decode(self, lines: list[str]) -> dict[str, bytes]:
        try:
            data = base64.b64decode("".join(lines), validate=True)
        except ValueError:
            data = b""
        if len(data) != self._size or hashlib.sha256(data).hexdigest() != self._digest:
            raise TransferError(f"came through the master's log damaged ({len(data)} of {self._size} bytes, or a "
                                f"wrong checksum)")  # fmt: skip
        return unpack(data)

    def cut(self) -> str:
        """A line saying that the log ended in the middle of a block, which is ignored; '' if it did not."""
        if self._lines is None:
            return ""
        got = len("".join(self._lines)) * 3 // 4
        before = "the files are those of the block before" if self.blocks else "no block came through whole before it"
        return f"the last block of run {self.run_id} was cut after about {got} of {self._size} bytes: ignored; {before}"

    def files(self) -> dict[str, bytes]:
        """The run's files from its last block; TransferError if that block is incomplete or damaged."""
        if not self.done:
            raise TransferError(f"the files of run {self.run_id} did not come through the master's log whole")
        if self._final is None:
            raise TransferError(f"the files of run {self.run_id} {self._error}")
        return self._final


def unpack(data: bytes) -> dict[str, bytes]:
    """The regular files of a gzipped tar; anything else in it (links, absolute or upward paths) is refused."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                raise TransferError(f"refusing {member.name!r} in the run's files: not a plain relative file")
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file always has content
            files[path.as_posix()] = extracted.read()
    return files


def save(files: dict[str, bytes], directory: Path) -> list[Path]:
    """Write the files under ``directory``; the paths written."""
    written = []
    for name, content in sorted(files.items()):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written
