"""A stand-in for Locust's ``events.request`` hook in client tests: it keeps every event fired."""

from __future__ import annotations

from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def fire(self, **kwargs: Any) -> None:
        self.events.append(kwargs)

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.events]

    @property
    def records(self) -> list[tuple[str, str | None]]:
        """(name, failure message or None) of every event, in order."""
        return [(e["name"], None if e["exception"] is None else str(e["exception"])) for e in self.events]

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(n, e) for n, e in self.records if e is not None]

    def take(self) -> list[dict[str, Any]]:
        """The events fired so far, forgotten from now on."""
        events, self.events = self.events, []
        return events
