"""What ``deploy.run.Run`` uses of a ``Cluster``, without a cluster: the steps of a run that need no answer are
recorded in ``calls``, the master's pod is there at once and its container runs. Tests subclass it for the log
and the container states they play."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xmpp_user.deploy.cluster import LogLine, MasterState


class RecordingCluster:
    namespace = "fake"
    poll = 0.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def deployment(self, name: str) -> Any:
        return None

    def check_capacity(self, *args: Any) -> None:
        pass

    def set_run(self, spec_json: str | None) -> None:
        self.calls.append(("set_run", spec_json is not None))

    def run_pod(self, run_id: str, timeout: float) -> str:
        return "master-pod"

    def scale(self, name: str, replicas: int) -> None:
        self.calls.append(("scale", replicas))

    def wait_ready(self, *args: Any) -> float:
        return 0.0

    def log(self, pod: str, since_seconds: int | None = None) -> Iterator[LogLine]:
        return iter(())

    def master_state(self, pod: str) -> MasterState:
        return MasterState(True)
