-- Prosody configuration for the locust-xmpp lab in a Kubernetes pod (k8s/prosody), written by k8s/build.py from
-- xmpp_user/lab/prosody.cfg.lua.in: edit that file, then run  python k8s/build.py. As the lab's, except that it
-- listens on every interface of the pod, logs to the console, and runs as the pod's non-root user.
-- No TLS, tuned so that the server, not its configuration, limits a load test.

pidfile = "/var/lib/prosody-lab/prosody.pid"
data_path = "/var/lib/prosody-lab/data"
-- No TLS, so no certificates: a directory that exists (Prosody does not create one).
certificates = "/etc/prosody-lab"
admin_socket = "/var/lib/prosody-lab/prosody.sock"

-- Warnings only by default: per-stanza logging costs real CPU under load.
log = {
	{ levels = { min = "warn" }, to = "console" };
}

-- Every interface of the pod: the Service xmpp-server reaches it on its address.
interfaces = { "*" }
http_interfaces = { "*" }
c2s_ports = { 5222 }
http_ports = { 5280 }
https_ports = { }
s2s_ports = { }
component_ports = { }
-- Clients reach us by the Service's name (http://xmpp-server:5280); without this mod_http answers "Unknown host".
http_default_host = "localhost"

network_backend = "epoll"
-- The default backlog of 128 overflows in connect storms: SYN retries then look like server slowness.
network_settings = { tcp_backlog = 1024 }

-- mod_blocklist caches only 64 users' lists by default; past that every routed stanza re-reads storage.
blocklist_cache_size = 100000

c2s_require_encryption = false
allow_unencrypted_plain_auth = true
consider_websocket_secure = true
consider_bosh_secure = true

-- The default (600 s) keeps dropped sessions, and their MUC occupants, for 10 minutes.
smacks_hibernation_time = 60

modules_enabled = {
	"saslauth"; "disco"; "roster"; "carbons"; "ping";
	"vcard4"; "vcard_legacy"; "pep"; "private"; "blocklist"; "bookmarks";
	"smacks"; "mam"; "csi_simple"; "register";
	"http"; "websocket"; "bosh"; "http_openmetrics";
	"posix"; "admin_shell";
}
-- No "limits": it would throttle every c2s connection.
modules_disabled = { "s2s"; "dialback"; "offline" }

-- "manual" collects on each scrape of /metrics instead of once a minute.
statistics = "internal"
statistics_interval = "manual"
-- The lab fetches the metrics from the interface's own address when it is not loopback.
openmetrics_allow_ips = { "127.0.0.1", "::1", "127.0.0.1" }

storage = "internal"
max_archive_query_results = 50

VirtualHost "localhost"
	authentication = "anonymous"
	-- Livechat viewers are anonymous and still have avatars (PeerTube's Prosody gives them one). In the lab each
	-- viewer publishes its own vCard; without this, Prosody accepts the vCard of an anonymous user and drops it,
	-- and every avatar request is answered with an empty vCard that costs the server next to nothing.
	allow_anonymous_storage = true

VirtualHost "reg.localhost"
	authentication = "internal_hashed"
	allow_registration = true
	-- No min_seconds_between_registrations: unset, mod_register_limits throttles nobody. Set, even to 0, it
	-- throttles addresses outside registration_allowlist (default: loopback); 0 makes a zero-period throttle.

-- Passwords kept in plain text, so that Prosody can offer every SCRAM it has (SHA-1 and SHA-256):
-- reg.localhost keeps SCRAM-SHA-1 keys, as a production server does, and offers that one alone.
-- Prosody derives the keys at each login here: a host for testing mechanisms, not for load figures.
VirtualHost "scram.localhost"
	authentication = "internal_plain"
	allow_registration = true

Component "muc.localhost" "muc"
	modules_enabled = { "muc_mam" }
	restrict_room_creation = false
	muc_room_default_history_length = 20
	max_history_messages = 50
	-- Rooms kept in memory (default 100); past that, rooms are swapped out to storage and read back on use.
	muc_room_cache_size = 1000
	-- Room archives (mod_muc_mam): a room is archived unless its config says otherwise. This is Prosody's
	-- default as well, so both room settings archive. mod_muc_mam deletes a room's archive when the room is
	-- destroyed (both storages here support deletion): a temporary room's history ends with the room.
	muc_log_by_default = true
	-- The room setting (--rooms). "persistent" keeps the two lines below: live chat rooms exist before viewers
	-- arrive and outlive them, as on a livechat server (a room re-created per visitor would answer disco and
	-- vCard queries with item-not-found), and a new room is open at once. "stock" comments them out, leaving
	-- Prosody's defaults: muc_room_default_persistent = false (a room is destroyed when its last occupant
	-- leaves) and muc_room_locking = true (a new room stays locked, refusing others with item-not-found, until
	-- its creator submits the configuration form or muc_room_lock_timeout, 300 s, passes).
	muc_room_default_persistent = true
	muc_room_locking = false
