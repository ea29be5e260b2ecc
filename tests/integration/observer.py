"""An independent reference client (slixmpp over TCP c2s) that watches a room.

Run as a separate process, so slixmpp's asyncio loop never meets gevent:

    python observer.py HOST PORT DOMAIN ROOM SECONDS OUT.json

It logs in anonymously, joins ROOM without history, prints "joined", records every live
groupchat message for SECONDS, then reads the room's archive (MAM) and writes both to OUT.json.
"""

from __future__ import annotations

import asyncio
import json
import sys

import slixmpp


class Observer(slixmpp.ClientXMPP):
    def __init__(self, domain: str, room: str, seconds: float, out: str) -> None:
        super().__init__(domain, "")
        self.room, self.seconds, self.out = slixmpp.JID(room), seconds, out
        self.live: list[dict] = []
        self.register_plugin("xep_0045")
        self.register_plugin("xep_0313")
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("groupchat_message", self.on_groupchat)

    def on_groupchat(self, msg: slixmpp.Message) -> None:
        if msg["delay"]["stamp"] is None and msg["body"]:
            self.live.append({"from": str(msg["from"]), "body": msg["body"], "id": msg["id"]})

    async def start(self, _event: object) -> None:
        archived: list[str] = []
        try:
            await self.plugin["xep_0045"].join_muc_wait(self.room, "observer", maxstanzas=0, timeout=10)
            print("joined", flush=True)
            await asyncio.sleep(self.seconds)
            result = await self.plugin["xep_0313"].retrieve(jid=self.room, rsm={"max": "50", "before": ""}, timeout=10)
            for item in result["mam"]["results"]:
                archived.append(item["mam_result"]["forwarded"]["stanza"]["body"])
        finally:
            with open(self.out, "w") as f:
                json.dump({"jid": str(self.boundjid), "live": self.live, "archived": archived}, f)
            self.disconnect()


def main() -> None:
    host, port, domain, room, seconds, out = sys.argv[1:7]
    observer = Observer(domain, room, float(seconds), out)
    observer.enable_starttls = False
    observer.enable_direct_tls = False
    observer.enable_plaintext = True
    observer.connect(host, int(port))
    asyncio.get_event_loop().run_until_complete(observer.disconnected)


if __name__ == "__main__":
    main()
