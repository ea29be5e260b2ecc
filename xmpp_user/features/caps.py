"""Entity capabilities (XEP-0115): the ``<c/>`` a client puts in its presence, and its disco#info answer."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_attr

_QUERY = ns.clark(ns.DISCO_INFO, "query")


@dataclass(frozen=True)
class Capabilities:
    """What a client says it is (one identity) and supports (its features), under its caps node."""

    node: str
    name: str
    features: tuple[str, ...]
    category: str = "client"
    type_: str = "web"

    @property
    def ver(self) -> str:
        """The verification string of XEP-0115 section 5.1 (SHA-1, no extended forms)."""
        s = f"{self.category}/{self.type_}//{self.name}<" + "".join(f"{f}<" for f in sorted(self.features))
        return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()

    def element(self) -> str:
        return f"<c xmlns='{ns.CAPS}' hash='sha-1' node='{escape_attr(self.node)}' ver='{self.ver}'/>"

    def answers(self, iq: Element) -> bool:
        """True if ``iq`` is a disco#info query about us (our caps node, or none)."""
        query = iq.find(_QUERY)
        if iq.get("type") != "get" or query is None:
            return False
        return query.get("node", "") in ("", self.node, f"{self.node}#{self.ver}")

    def disco_info(self, node: str = "") -> str:
        node_attr = f" node='{escape_attr(node)}'" if node else ""
        features = "".join(f"<feature var='{escape_attr(f)}'/>" for f in self.features)
        return (
            f"<query xmlns='{ns.DISCO_INFO}'{node_attr}><identity category='{self.category}' type='{self.type_}' "
            f"name='{escape_attr(self.name)}'/>{features}</query>"
        )
