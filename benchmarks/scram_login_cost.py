"""Client CPU per login, by SASL mechanism, against a private lab Prosody on loopback.

    .venv/bin/python benchmarks/scram_login_cost.py [--logins 200] [--accounts 10] [--no-cache]

Logs in LOGINS times in a row, cycling through ACCOUNTS registered accounts, and prints this
process's CPU time per login (connect, auth, bind, close) and how many PBKDF2 derivations it
ran. ANONYMOUS is the baseline without SASL work. --no-cache forgets the derived SCRAM keys
before every login, to show what the cache saves. The lab's scram.localhost derives a new salt
at each login (it keeps passwords in plain text), so there every login pays PBKDF2 whatever the
cache: use the default, reg.localhost, for figures.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

import locust  # noqa: F401  (gevent monkey patching before sockets are made)

from xmpp_user.core import sasl
from xmpp_user.core.stream import Credentials
from xmpp_user.lab.lab import Lab, free_port
from xmpp_user.scenario.accounts import register_accounts
from xmpp_user.session.client import XmppClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--mechanisms", default="ANONYMOUS,SCRAM-SHA-1", help="comma-separated")
    parser.add_argument("--domain", default="", help="default: the lab's reg.localhost")
    parser.add_argument("--no-cache", action="store_true", help="forget derived keys before every login")
    args = parser.parse_args()

    derivations = [0]
    real_pbkdf2 = hashlib.pbkdf2_hmac

    def counting_pbkdf2(*a, **kw):
        derivations[0] += 1
        return real_pbkdf2(*a, **kw)

    hashlib.pbkdf2_hmac = counting_pbkdf2
    with tempfile.TemporaryDirectory() as run_dir:
        lab = Lab(run_dir, c2s_port=free_port(), http_port=free_port(), storage="memory")
        lab.up()
        try:
            domain = args.domain or lab.registered_domain
            register_accounts(lab.websocket_url, domain, "cost{n}", args.accounts, "pw")
            for mechanism in args.mechanisms.split(","):
                sasl.clear_key_cache()
                derivations[0] = 0
                started = time.process_time()
                for n in range(args.logins):
                    if args.no_cache:
                        sasl.clear_key_cache()
                    if mechanism == "ANONYMOUS":
                        client = XmppClient(lab.websocket_url, lab.domain)
                    else:
                        credentials = Credentials(mechanism, f"cost{n % args.accounts}", "pw")
                        client = XmppClient(lab.websocket_url, domain, credentials)
                    client.connect()
                    client.close()
                cpu_ms = (time.process_time() - started) / args.logins * 1000
                print(
                    f"{mechanism:14} {args.logins} logins of {args.accounts} accounts"
                    f"{' (no cache)' if args.no_cache else ''}: client CPU {cpu_ms:.2f} ms per login, "
                    f"{derivations[0]} PBKDF2 derivations"
                )
        finally:
            lab.down()


if __name__ == "__main__":
    main()
