"""Options as users see them: URL checks, account sources, per-user credentials."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from xmpp_user.run import options
from xmpp_user.session.transport import check_url


def make(**overrides):
    values = dict(
        xmpp_domain="localhost",
        xmpp_muc="muc.localhost",
        xmpp_room="loadtest",
        xmpp_auth="anonymous",
        xmpp_user="user{n}",
        xmpp_password="secret",
        xmpp_accounts=3,
        xmpp_credentials="",
        xmpp_timeout=5.0,
        xmpp_no_sm=False,
        xmpp_insecure_tls=False,
        xmpp_source_ips="",
    )
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.org/ws", "not a WebSocket URL"),
        ("ws:///xmpp-websocket", "without a host"),
        ("ws://host:99999/ws", "bad port"),
        ("", "not a WebSocket URL"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_url(url)


def test_missing_host_names_the_option() -> None:
    with pytest.raises(ValueError, match="--host"):
        options.settings_from(make(), None)


def test_anonymous_settings() -> None:
    s = options.settings_from(make(), "wss://chat.example.org/xmpp-websocket")
    assert s.mechanism == "ANONYMOUS"
    assert s.room_jid == "loadtest@muc.localhost"


def test_the_room_jid_is_normalised_where_it_enters() -> None:
    s = options.settings_from(make(xmpp_room="LoadTest", xmpp_muc="MUC.LocalHost"), "ws://127.0.0.1:1/ws")
    assert (s.room, s.muc, s.room_jid) == ("loadtest", "muc.localhost", "loadtest@muc.localhost")
    assert s.credentials(7).mechanism == "ANONYMOUS"
    assert s.source_address(0) is None


def test_account_pattern_cycles_through_accounts() -> None:
    s = options.settings_from(make(xmpp_auth="scram"), "ws://127.0.0.1:1/ws")
    names = [s.credentials(n).username for n in range(5)]
    assert names == ["user0", "user1", "user2", "user0", "user1"]
    assert s.credentials(0).mechanism == "SCRAM"  # the strongest the server offers
    assert s.credentials(0).password == "secret"


def test_credentials_file(tmp_path) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text("alice,pw1\n\nbob, pw2\n")
    s = options.settings_from(make(xmpp_auth="plain", xmpp_credentials=str(path)), "ws://127.0.0.1:1/ws")
    assert [(s.credentials(n).username, s.credentials(n).password) for n in range(3)] == [
        ("alice", "pw1"),
        ("bob", "pw2"),
        ("alice", "pw1"),
    ]


def test_unreadable_or_empty_credentials_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read --xmpp-credentials"):
        options.settings_from(make(xmpp_auth="plain", xmpp_credentials=str(tmp_path / "none")), "ws://h/ws")
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no username,password line"):
        options.settings_from(make(xmpp_auth="plain", xmpp_credentials=str(empty)), "ws://h/ws")


def test_source_ips_round_robin() -> None:
    s = options.settings_from(make(xmpp_source_ips="127.0.0.2, 127.0.0.3"), "ws://h/ws")
    assert [s.source_address(n) for n in range(3)] == ["127.0.0.2", "127.0.0.3", "127.0.0.2"]


def test_user_numbers_are_unique_across_workers() -> None:
    a = options.next_user_number(0)
    b = options.next_user_number(1)
    assert b - a >= 1_000_000 - 1
    assert options.next_user_number(0) != a


def test_a_worker_keeps_its_own_source_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    # Locust copies the master's options over a worker's at every spawn; a worker's addresses are its own.
    monkeypatch.setattr(options, "_own", {})
    worker_options = make(xmpp_source_ips="10.0.0.1,10.0.0.2", xmpp_users_per_process=700)
    options.keep_host_options(worker_options)  # what a worker does at init
    vars(worker_options).update({"xmpp_source_ips": "", "xmpp_users_per_process": 5000})  # the master's
    settings = options.settings_from(worker_options, "ws://example.org/ws")
    assert settings.source_ips == ("10.0.0.1", "10.0.0.2")
    assert options.host_option(worker_options, "xmpp_users_per_process") == 700


def test_settings_follow_options_changed_in_place() -> None:
    """The web UI form writes its values into the same options object: settings must follow."""
    values = make()
    first = options.settings_from(values, "ws://127.0.0.1:5280/xmpp-websocket")
    values.xmpp_room = "another"
    second = options.settings_from(values, "ws://127.0.0.1:5280/xmpp-websocket")
    assert (first.room, second.room) == ("loadtest", "another")


def test_settings_accept_the_phase_the_master_publishes() -> None:
    """Phased runs put the current phase, a dict, among the options (``xmpp_phase``): it is not a setting."""
    values = make(xmpp_phase={"phase": "batch1-join", "settings": {"vcards": True}})
    first = options.settings_from(values, "ws://127.0.0.1:5280/xmpp-websocket")
    values.xmpp_phase = {"phase": "batch1-talk", "settings": {"talk": True}}
    assert options.settings_from(values, "ws://127.0.0.1:5280/xmpp-websocket") is first
