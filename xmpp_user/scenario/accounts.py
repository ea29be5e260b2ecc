"""Register test accounts by in-band registration (XEP-0077), many at a time."""

from __future__ import annotations

from gevent.pool import Pool

from xmpp_user.core.stream import Credentials
from xmpp_user.session.client import XmppClient, XmppRequestFailed


def register_accounts(
    url: str,
    domain: str,
    pattern: str = "user{n}",
    count: int = 100,
    password: str = "secret",
    concurrency: int = 50,
    timeout: float = 20.0,
    mechanism: str = "SCRAM",
) -> int:
    """Register ``pattern.format(n=0..count-1)``; existing accounts count as done.

    Each account logs in once with ``mechanism`` (by default the strongest SCRAM the server
    offers) after registering, which proves the password works. Returns the number of usable
    accounts; raises RuntimeError naming the first failure.
    """
    failures: list[str] = []

    def register(n: int) -> None:
        creds = Credentials(mechanism, pattern.format(n=n), password)
        client = XmppClient(url, domain, creds, register=True, timeout=timeout, connect_timeout=timeout)
        try:
            client.connect()
        except XmppRequestFailed as exc:
            failures.append(f"{creds.username}: {exc}")
        finally:
            client.close()

    Pool(max(1, concurrency)).map(register, range(count))
    if failures:
        raise RuntimeError(f"{len(failures)} of {count} registrations failed; first: {failures[0]}")
    return count
