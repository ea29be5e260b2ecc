"""Service discovery (XEP-0030)."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from xmpp_user.core import ns
from xmpp_user.core.framing import escape_attr

INFO = f"<query xmlns='{ns.DISCO_INFO}'/>"
ITEMS = f"<query xmlns='{ns.DISCO_ITEMS}'/>"
RESERVED_NICK_NODE = "x-roomuser-item"
"""The node a MUC client queries for its reserved nickname (XEP-0045 section 7.12)."""


def info(node: str | None = None) -> str:
    if node is None:
        return INFO
    return f"<query xmlns='{ns.DISCO_INFO}' node='{escape_attr(node)}'/>"


def features(result: Element) -> set[str]:
    return {f.get("var", "") for f in result.iterfind(f"{{{ns.DISCO_INFO}}}query/{{{ns.DISCO_INFO}}}feature")}


def items(result: Element) -> list[str]:
    return [i.get("jid", "") for i in result.iterfind(f"{{{ns.DISCO_ITEMS}}}query/{{{ns.DISCO_ITEMS}}}item")]


def identities(result: Element) -> list[tuple[str, str]]:
    """(category, type) of every identity of a disco#info result."""
    query = f"{{{ns.DISCO_INFO}}}query/{{{ns.DISCO_INFO}}}identity"
    return [(i.get("category", ""), i.get("type", "")) for i in result.iterfind(query)]
