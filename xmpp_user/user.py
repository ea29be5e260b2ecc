"""The abstract Locust user that speaks XMPP over WebSocket."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import gevent
from locust import User, constant, events
from locust.exception import StopUser

from xmpp_user import observe
from xmpp_user.distribute import dispatch
from xmpp_user.observe import timeline  # noqa: F401  (registers --xmpp-server-pid)
from xmpp_user.run import options as _options  # registers the command-line options
from xmpp_user.run import outcome, phases
from xmpp_user.session.client import XmppClient, XmppRequestFailed

log = logging.getLogger(__name__)

_logging_in = 0
"""Users of this process started and not yet through their first login and ``on_session``."""


def logging_in() -> int:
    """Users of this process still on their way to their first session."""
    return _logging_in


outcome.awaiting.append(logging_in)


class XmppUser(User):
    """A Locust user holding one XMPP session.

    Subclasses write tasks that call ``self.xmpp`` (an ``XmppClient``); each task should
    start with ``self.ensure_connected()``. Requests fire their own Locust events; a failed
    one raises ``XmppRequestFailed``, which ends the task (the failure is already recorded)
    and the next task reconnects with exponential backoff. Nothing escapes ``on_start``:
    a user whose first connection fails stays alive and retries. A user that Locust stops
    closes its session, cancelling what is still in flight without recording failures.
    """

    abstract = True
    wait_time = constant(1)

    backoff_min: float = 1.0
    """Seconds before the first reconnection attempt after a failure."""
    backoff_max: float = 30.0
    """Ceiling of the exponential reconnection backoff."""
    close_timeout: float = 2.0
    """Seconds to wait for the server's ``<close/>`` when the user stops."""
    patience: float = 60.0
    """Seconds a user goes on waiting for a reply its request timed out on (the failure is recorded): a
    saturated server answers late, and a browser client waits rather than drop its session and log in again.
    Also how long a stopping user reads its stream for the answer to its room leave (message truth)."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        runner = environment.runner
        self.number = _options.next_user_number(getattr(runner, "worker_index", 0) or 0)
        """Unique across workers: picks the account and makes nicknames unique."""
        self.settings: _options.Settings | None = None
        self.config_error = ""
        try:
            self.settings = _options.settings_from(environment.parsed_options, self.host)
        except ValueError as exc:
            self.config_error = str(exc)
        self.xmpp: XmppClient = self._make_client()
        self._backoff = 0.0
        self._next_attempt = 0.0

    def _make_client(self) -> XmppClient:
        s = self.settings
        if s is None:
            return XmppClient("ws://invalid/", "invalid", request_event=self.environment.events.request)
        return XmppClient(
            s.url,
            s.domain,
            s.credentials(self.number),
            request_event=self.environment.events.request,
            timeout=s.timeout,
            connect_timeout=s.timeout,
            stream_management=s.stream_management,
            verify_tls=s.verify_tls,
            source_address=s.source_address(self.number),
            patience=self.patience,
        )

    @property
    def nick(self) -> str:
        return f"u{self.number}"

    def on_start(self) -> None:
        if self.settings is None:
            self._record_config_error()
            return  # the first task stops the user: StopUser raised here would be logged with a traceback
        global _logging_in
        _logging_in += 1
        try:
            gevent.sleep(phases.login_delay())  # the users of one batch do not all log in at once
            self.ensure_connected()
        except XmppRequestFailed:
            pass  # recorded; the first task retries after the backoff
        finally:
            _logging_in -= 1

    def on_session(self) -> None:
        """Called after each successful (re)connection: join rooms, enable features."""

    def ensure_connected(self) -> None:
        """Reconnect if needed, waiting out the backoff; raises XmppRequestFailed on failure."""
        if self.xmpp.connected:
            return
        if self.settings is None:
            raise StopUser()
        delay = self._next_attempt - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        try:
            self.xmpp.connect()
            self.on_session()
        except XmppRequestFailed:
            self._backoff = min(self.backoff_max, max(self.backoff_min, self._backoff * 2))
            self._next_attempt = time.monotonic() + self._backoff
            self.xmpp.abort()
            raise
        self._backoff = 0.0

    def on_stop(self) -> None:
        """Stop as a user closing the app: what is in flight is cancelled (nothing of it is the
        server's fault), ``on_leave`` says goodbye, and the session closes."""
        try:
            if self.xmpp.connected:
                self.xmpp.cancel_all()
                self.on_leave()
        except XmppRequestFailed:
            pass  # recorded, or the session is gone
        finally:
            self.xmpp.close(self.close_timeout)

    def on_leave(self) -> None:
        """Called when the user stops with its session open, before it closes: leave rooms here."""

    def _record_config_error(self) -> None:
        self.environment.events.request.fire(
            request_type="XMPP",
            name="config",
            response_time=0.0,
            response_length=0,
            exception=ValueError(self.config_error),
            context={},
        )
        log.error("locust-xmpp: %s", self.config_error)


@events.init.add_listener
def _install_outcome(environment: Any, **_kw: Any) -> None:
    if environment.runner is not None and any(issubclass(cls, XmppUser) for cls in environment.user_classes):
        outcome.install(environment)
        observe.install(environment)
        dispatch.install(environment)


@events.init.add_listener
def _check_headless_settings(environment: Any, **_kw: Any) -> None:
    """Refuse bad settings before a headless run starts: one line, exit code 2."""
    opts = environment.parsed_options
    if opts is None or not getattr(opts, "headless", False) or getattr(opts, "worker", False):
        return
    if not any(issubclass(cls, XmppUser) for cls in environment.user_classes):
        return
    try:
        _options.settings_from(opts, environment.host or opts.host)
    except ValueError as exc:
        sys.stderr.write(f"locust-xmpp: error: {exc}\n")
        sys.exit(2)
