"""Fidelity: compare the emulated clients with the real clients they name.

A viewer of this project claims to behave like Converse.js as the PeerTube livechat plugin runs it.
``converse.py`` records what real Converse sends and receives over its WebSocket when it joins a room
on a lab server; ``kinds.py`` reduces such frames to symbolic request kinds (``presence join``,
``iq-set mam room``, ...); ``scene.py`` fills a room, drives a client profile (xmpp_user.scenario.profiles) outside
Locust and compares two kind sequences; ``motion.py`` is the moving scene (clients joining one after another and
staying: kinds both ways, the server's CPU per join); ``run.py`` is ``locust-xmpp fidelity record | compare |
cost``; ``converse-14.json`` and ``converse-14-motion.json`` the checked-in recordings of real Converse.js 14.
"""
