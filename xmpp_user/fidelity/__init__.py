"""Fidelity: compare the emulated clients with the real clients they name.

A viewer of this project claims to behave like Converse.js as the PeerTube livechat plugin runs it.
``converse.py`` records what real Converse sends and receives over its WebSocket when it joins a room
on a lab server; ``kinds.py`` reduces such frames to symbolic request kinds (``presence join``,
``iq-get mam room``, ...) so that a real client's sequence and an emulated one can be compared.
"""
