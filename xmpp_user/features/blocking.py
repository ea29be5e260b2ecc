"""Blocking command (XEP-0191): the block list a client reads at login."""

from __future__ import annotations

from xmpp_user.core import ns

GET = f"<blocklist xmlns='{ns.BLOCKING}'/>"
