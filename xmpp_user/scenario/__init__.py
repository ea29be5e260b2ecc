"""What users do in the field scenarios, on top of a session and a run.

- ``talk``: groupchat with message truth: members announced in presence, marked messages, deliveries checked;
- ``profiles``: the client profiles of the livechat viewer (the field's bots, Converse.js 14, PeerTube's Converse);
- ``viewer``: what a client profile needs of the viewer it drives (a protocol both livechat viewers fulfil);
- ``ghosts``: closed browser tabs: how long a server keeps a dropped session in its rooms;
- ``accounts``: registered accounts for runs that log in with passwords.
"""
