"""One user's XMPP session under gevent: what ``core`` knows of XMPP, over a real WebSocket.

- ``transport``: the WebSocket (RFC 7395) with websocket-client, its limits and its errors;
- ``connection``: the life of one connection, the only place that knows whether a session is usable;
- ``requests``: the requests awaiting their reply, and the Locust request events they fire;
- ``rooms``: the MUC rooms a client is in, keyed by normalised JID;
- ``muc``: our part in those rooms: joins, leaves, nick changes and messages, settled by what the rooms send;
- ``client``: ``XmppClient``, the features a scenario calls, over one connection.

Nothing here knows of a Locust run, its phases or its accounting (``run``), or of what users do (``scenario``).
"""
