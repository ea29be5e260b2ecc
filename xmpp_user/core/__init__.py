"""The XMPP protocol core: no sockets, no gevent, no Locust."""

from xmpp_user.core.errors import FrameError, ProtocolError, SaslError
from xmpp_user.core.stream import Credentials, StreamSettings, XmppStream

__all__ = ["Credentials", "FrameError", "ProtocolError", "SaslError", "StreamSettings", "XmppStream"]
