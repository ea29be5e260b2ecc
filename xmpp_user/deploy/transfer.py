"""The run's files through the master's log: the master prints them as one block when Locust has ended, and
``locust-xmpp k8s run`` reads them back from the pod's log. Reading a pod's log is the only right this takes
(``pods/log``): no exec into the pod, no shared volume.

    locust-xmpp k8s: files of run ID begin: SIZE bytes, sha256 DIGEST
    <the run's directory as a gzipped tar, in base64 lines of 76 characters>
    locust-xmpp k8s: files of run ID end: locust exit code CODE

The block is written in one go after Locust's own output; its size and checksum tell a block that a log rotation
or a broken stream cut.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

PREFIX = "locust-xmpp k8s: files of run"
_BEGIN = re.compile(re.escape(PREFIX) + r" (?P<run>\S+) begin: (?P<size>\d+) bytes, sha256 (?P<digest>[0-9a-f]{64})")
_END = re.compile(re.escape(PREFIX) + r" (?P<run>\S+) end: locust exit code (?P<code>-?\d+)")


class TransferError(Exception):
    """The block is cut or damaged: one line saying so."""


def pack(directory: Path) -> bytes:
    """The regular files under ``directory`` as a gzipped tar, named relative to it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
            tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return buffer.getvalue()


def block(run_id: str, directory: Path, exit_code: int) -> Iterator[str]:
    """The lines (without line ends) that carry ``directory``'s files and Locust's exit code."""
    data = pack(directory)
    yield f"{PREFIX} {run_id} begin: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    yield from base64.encodebytes(data).decode("ascii").splitlines()
    yield f"{PREFIX} {run_id} end: locust exit code {exit_code}"


class Receiver:
    """Reads one run's block out of the master's log, line by line; everything else is Locust's output."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.exit_code: int | None = None
        """Locust's exit code, once the block has ended."""
        self._lines: list[str] | None = None
        self._size = 0
        self._digest = ""

    @property
    def done(self) -> bool:
        return self.exit_code is not None

    def feed(self, line: str) -> bool:
        """Take one log line; True if it belongs to the block (not to be shown as Locust's output)."""
        line = line.rstrip("\r\n")
        if self.done:
            return False
        begin = _BEGIN.fullmatch(line)
        if begin and begin["run"] == self.run_id:
            # A stream read again from an earlier point repeats the block: start it over.
            self._lines, self._size, self._digest = [], int(begin["size"]), begin["digest"]
            return True
        if self._lines is None:
            return False
        end = _END.fullmatch(line)
        if end and end["run"] == self.run_id:
            self.exit_code = int(end["code"])
        else:
            self._lines.append(line)
        return True

    def files(self) -> dict[str, bytes]:
        """The run's files by relative path; TransferError if the block is incomplete or damaged."""
        if self._lines is None or not self.done:
            raise TransferError(f"the files of run {self.run_id} did not come through the master's log whole")
        try:
            data = base64.b64decode("".join(self._lines), validate=True)
        except ValueError:
            data = b""
        if len(data) != self._size or hashlib.sha256(data).hexdigest() != self._digest:
            raise TransferError(f"the files of run {self.run_id} came through the master's log damaged "
                                f"({len(data)} of {self._size} bytes, or a wrong checksum)")  # fmt: skip
        return unpack(data)


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
