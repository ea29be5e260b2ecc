"""Where a run differs from its plan: fewer archived messages than seeded, a feature the server
does not offer, skipped messages, a lost worker. Each kind is said once, with how often it
happened; never silence.

A ``Deviations`` holds, per kind, a count and the message of its first occurrence. Like the
message tally it merges by addition, so workers ship deltas and the master sums them; the
process that reports the run (master or local runner) logs each kind the first time it hears
of it and writes them all with the run's results. No I/O here, no Locust.
"""

from __future__ import annotations

from collections.abc import Callable


class Deviations:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.messages: dict[str, str] = {}
        self.on_new: list[Callable[[str, str], None]] = []
        """Called with (kind, message) the first time a kind is noted or merged in."""

    def note(self, kind: str, message: str, count: int = 1) -> None:
        """``count`` more occurrences of ``kind``; ``message`` says what and why in one line."""
        if kind not in self.counts:
            self.counts[kind] = 0
            self.messages[kind] = message
            for callback in self.on_new:
                callback(kind, message)
        self.counts[kind] += count

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {kind: {"count": count, "message": self.messages[kind]} for kind, count in self.counts.items()}

    def merge(self, other: dict[str, dict[str, object]]) -> None:
        for kind, entry in (other or {}).items():
            self.note(kind, str(entry.get("message", kind)), int(entry.get("count", 1)))  # type: ignore[call-overload]

    def reset(self) -> None:
        self.counts.clear()
        self.messages.clear()

    def __bool__(self) -> bool:
        return bool(self.counts)


DEVIATIONS = Deviations()
"""The deviations noted by the users of this process."""
