"""Message carbons (XEP-0280)."""

from __future__ import annotations

from xmpp_user.core import ns

ENABLE = f"<enable xmlns='{ns.CARBONS}'/>"
DISABLE = f"<disable xmlns='{ns.CARBONS}'/>"
