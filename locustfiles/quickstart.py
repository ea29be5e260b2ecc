"""The smallest useful run: join a room, fetch vCards, read the archive, talk.

    locust-xmpp lab up
    locust -f locustfiles/quickstart.py --headless -u 10 -r 5 -t 30s \
        --host ws://127.0.0.1:15280/xmpp-websocket
"""

from __future__ import annotations

from locust import between, task

from xmpp_user import XmppUser
from xmpp_user.session.client import NO_VCARD


class QuickstartUser(XmppUser):
    wait_time = between(0.5, 1.5)

    def on_session(self) -> None:
        room = self.settings.room_jid
        self.xmpp.muc_join(room, self.nick)
        self.xmpp.mam(room, max_=20)

    @task(5)
    def talk(self) -> None:
        self.ensure_connected()
        self.xmpp.groupchat(self.settings.room_jid, f"hello from {self.nick}")

    @task(2)
    def occupant_vcards(self) -> None:
        self.ensure_connected()
        room = self.xmpp.rooms.get(self.settings.room_jid)
        if room is None:
            return
        # Pipelined as a browser client does: all requests out, then every reply awaited. An occupant
        # that has just left, or has no vCard, is a normal answer (no avatar), not a failure.
        nicks = list(room.occupants)[:10]
        self.xmpp.wait_all([self.xmpp.vcard(f"{room.jid}/{nick}", wait=False, accept=NO_VCARD) for nick in nicks])

    @task(1)
    def ping(self) -> None:
        self.ensure_connected()
        self.xmpp.ping()
