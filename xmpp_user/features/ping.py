"""XMPP ping (XEP-0199). The core answers the server's pings by itself."""

from __future__ import annotations

from xmpp_user.core import ns

PING = f"<ping xmlns='{ns.PING}'/>"
