"""Command-line options of XMPP users, registered with Locust's own parser.

Locust shows custom options in its web UI form too, so a run is configured the same way
headless and in the browser. ``--host`` takes the WebSocket URL.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import events
from locust.runners import WorkerRunner

from xmpp_user.core.stream import Credentials
from xmpp_user.session.rooms import normalise
from xmpp_user.session.transport import check_url

AUTH_MODES = {
    "anonymous": "ANONYMOUS",
    "plain": "PLAIN",
    "scram": "SCRAM",  # the strongest SCRAM the server offers
    "scram-sha-1": "SCRAM-SHA-1",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-512": "SCRAM-SHA-512",
}


def positive(kind: type) -> Any:
    """An argparse type accepting only numbers above zero; argparse names it in its error."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(kind: type) -> Any:
    """An argparse type accepting only numbers of zero or more."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not value >= 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def option_group(parser: Any, title: str, description: str) -> Any:
    """An argument group whose options show in Locust's web UI form.

    Locust marks arguments for its web UI in its parser's own ``add_argument``; argparse
    groups bypass it, so the group's ``add_argument`` is wrapped to mark them too.
    """
    group = parser.add_argument_group(title, description)
    plain_add = group.add_argument

    def add_argument(*args: Any, secret: bool = False, **kwargs: Any) -> Any:
        # The web UI shows help texts raw: expand the default here rather than leave "%(default)s".
        if "%(default)s" in kwargs.get("help", ""):
            kwargs["help"] = kwargs["help"].replace("%(default)s", str(kwargs.get("default")))
        action = plain_add(*args, **kwargs)
        action.include_in_web_ui = True
        action.is_secret = secret
        action.is_required = False
        action.is_multiple = False
        return action

    group.add_argument = add_argument
    return group


def require_positive(options: Any, *names: str) -> None:
    """Check values that may come from the web UI form, which bypasses argparse types."""
    for name in names:
        value = getattr(options, name)
        if not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be above 0, got {value!r}")


def require_non_negative(options: Any, *names: str) -> None:
    """Like ``require_positive``, for values that may be zero."""
    for name in names:
        value = getattr(options, name)
        if not value >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {value!r}")


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = option_group(parser, "XMPP", "Options of locust-xmpp users (--host is the WebSocket URL)")
    group.add_argument("--xmpp-domain", default="localhost", help="XMPP domain to log in to (default %(default)s)")
    group.add_argument("--xmpp-muc", default="muc.localhost", help="MUC service domain (default %(default)s)")
    group.add_argument("--xmpp-room", default="loadtest", help="Room name (local part) (default %(default)s)")
    group.add_argument(
        "--xmpp-auth",
        default="anonymous",
        choices=sorted(AUTH_MODES),
        help="SASL mechanism: anonymous, plain, scram (the strongest the server offers of SCRAM-SHA-512, "
        "SCRAM-SHA-256 and SCRAM-SHA-1), or scram-sha-1, scram-sha-256 or scram-sha-512 for exactly that one "
        "(default %(default)s)",
    )
    group.add_argument(
        "--xmpp-user",
        default="user{n}",
        help="Account name pattern for plain and scram logins, {n} = account number (default %(default)s)",
    )
    group.add_argument("--xmpp-password", default="secret", secret=True, help="Password of the pattern accounts")
    group.add_argument(
        "--xmpp-accounts",
        type=positive(int),
        default=100,
        help="Number of pattern accounts (user0..user{N-1}) users cycle through (default %(default)s)",
    )
    group.add_argument(
        "--xmpp-credentials",
        default="",
        help="CSV file of username,password lines; overrides the account pattern",
    )
    group.add_argument(
        "--xmpp-timeout", type=positive(float), default=10.0, help="Seconds to wait for any reply (default %(default)s)"
    )
    group.add_argument(
        "--xmpp-no-sm", action="store_true", default=False, help="Do not enable stream management (XEP-0198)"
    )
    group.add_argument(
        "--xmpp-insecure-tls",
        action="store_true",
        default=False,
        help="Skip TLS certificate verification (self-signed test servers only)",
    )
    group.add_argument(
        "--xmpp-source-ips",
        default="",
        help="Comma-separated local addresses to connect from, round robin (one per extra IP of this host); "
        "a worker uses its own, not the master's",
    )
    # Each floor above registers its own options: --xmpp-users-per-process (xmpp_user.distribute.dispatch),
    # --xmpp-metrics-port and --xmpp-metrics-host (xmpp_user.observe), --xmpp-server-pid (observe.timeline).


@dataclass(frozen=True)
class Settings:
    """Options as the users need them, validated once per process."""

    url: str
    domain: str
    muc: str
    """The MUC service's JID, normalised (as the room's): JIDs built from it are trusted as they are."""
    room: str
    """The room's name (the node of its JID), normalised."""
    mechanism: str
    timeout: float
    stream_management: bool
    verify_tls: bool
    source_ips: tuple[str, ...]
    accounts: tuple[tuple[str, str], ...]

    @property
    def room_jid(self) -> str:
        return f"{self.room}@{self.muc}"

    def credentials(self, n: int) -> Credentials:
        if self.mechanism == "ANONYMOUS":
            return Credentials()
        username, password = self.accounts[n % len(self.accounts)]
        return Credentials(self.mechanism, username, password)

    def source_address(self, n: int) -> str | None:
        return self.source_ips[n % len(self.source_ips)] if self.source_ips else None


_cache: dict[tuple[Any, ...], Settings] = {}

HOST_OPTIONS = ("xmpp_source_ips", "xmpp_users_per_process")
"""Options about a generator's own host and process. Locust copies the master's options over a worker's at
every spawn message; for these a worker keeps what its own command line said (its addresses are not the
master's): read them with ``host_option``."""
NOT_SETTINGS = ("xmpp_phase",)
"""Carried among the options but not settings: the current phase the master publishes (``phases.OPTION``)."""
_own: dict[str, Any] = {}
"""On a worker: the ``HOST_OPTIONS`` as its command line gave them."""


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) and environment.parsed_options is not None:
        keep_host_options(environment.parsed_options)


def keep_host_options(options: Any) -> None:
    """Remember this worker's ``HOST_OPTIONS`` from its own command line, before the master's arrive."""
    _own.update({name: getattr(options, name, None) for name in HOST_OPTIONS})


def host_option(options: Any, name: str) -> Any:
    """One of ``HOST_OPTIONS``: a worker's own value, whatever the master sent; elsewhere the option's value."""
    return _own[name] if name in _own else getattr(options, name, None)


def settings_from(options: Any, host: str | None) -> Settings:
    """Build and validate settings; raises ValueError with a one-line reason.

    Cached by the values they come from: the web UI form changes the same options object in place.
    """
    values = {k: v for k, v in vars(options).items() if k.startswith("xmpp_") and k not in NOT_SETTINGS} \
        if hasattr(options, "__dict__") else {}  # fmt: skip
    values.update((name, host_option(options, name)) for name in HOST_OPTIONS)
    # repr: an option a locustfile adds may hold a list or a dict.
    key = (host, *sorted((name, repr(value)) for name, value in values.items()))
    cached = _cache.get(key)
    if cached is not None:
        return cached
    if not host:
        raise ValueError("no WebSocket URL: pass --host ws://HOST:PORT/xmpp-websocket")
    url = check_url(host)
    require_positive(options, "xmpp_timeout", "xmpp_accounts")
    mechanism = AUTH_MODES[getattr(options, "xmpp_auth", "anonymous")]
    accounts: tuple[tuple[str, str], ...] = ()
    if mechanism != "ANONYMOUS":
        accounts = _accounts(options)
    elif getattr(options, "xmpp_credentials", ""):
        raise ValueError("--xmpp-credentials needs --xmpp-auth plain or scram (anonymous logins use no accounts)")
    try:
        room = normalise(f"{options.xmpp_room}@{options.xmpp_muc}")
        normalise(options.xmpp_domain)
    except ValueError as exc:
        raise ValueError(f"bad --xmpp-domain, --xmpp-muc or --xmpp-room: {exc}") from None
    source_ips = tuple(ip.strip() for ip in (host_option(options, "xmpp_source_ips") or "").split(",") if ip.strip())
    settings = Settings(
        url=url,
        domain=options.xmpp_domain,
        muc=room.split("@", 1)[1],
        room=room.split("@", 1)[0],
        mechanism=mechanism,
        timeout=float(options.xmpp_timeout),
        stream_management=not options.xmpp_no_sm,
        verify_tls=not options.xmpp_insecure_tls,
        source_ips=source_ips,
        accounts=accounts,
    )
    _cache[key] = settings
    return settings


def _accounts(options: Any) -> tuple[tuple[str, str], ...]:
    path = getattr(options, "xmpp_credentials", "")
    if path:
        try:
            with Path(path).open(newline="") as f:
                rows = [(r[0].strip(), r[1].strip()) for r in csv.reader(f) if len(r) >= 2 and r[0].strip()]
        except OSError as exc:
            raise ValueError(f"cannot read --xmpp-credentials {path}: {exc.strerror}") from None
        if not rows:
            raise ValueError(f"--xmpp-credentials {path} holds no username,password line")
        return tuple(rows)
    pattern = options.xmpp_user
    if "{n}" not in pattern:
        return ((pattern, options.xmpp_password),)
    return tuple((pattern.format(n=n), options.xmpp_password) for n in range(options.xmpp_accounts))


_user_numbers = itertools.count()


def next_user_number(worker_index: int) -> int:
    """A number unique across workers, used for account choice and nicknames."""
    return worker_index * 1_000_000 + next(_user_numbers)
