"""Message truth: markers, receivers, tallies and their judgement, and the tally's trip from workers
to the master."""

from __future__ import annotations

import argparse
import json
from xml.etree.ElementTree import Element, fromstring

import pytest
from locust import User, constant, task
from locust.env import Environment
from locust.runners import WorkerRunner

from xmpp_user.run import outcome, truth
from xmpp_user.run.deviations import Deviations
from xmpp_user.run.truth import TAG, Receiver, Sender, Tally
from xmpp_user.session import requests


def _marker(sender: str, seq: int, ts: int = 1_000) -> Element:
    return fromstring(truth.marker(sender, seq, ts))


def _receive_all(receiver: Receiver, sender: str, seqs: list[int]) -> list[float | None]:
    return [receiver.receive(_marker(sender, n), 1_010) for n in seqs]


def _judged(tally: Tally, missing: tuple[str, ...] = ()) -> dict[str, int]:
    """The totals as judged at the end of a run."""
    s = tally.summary(missing, final=True)
    return {k: s[k] for k in ("expected", "delivered", "lost", "unexpected", "unverified")}


def test_marker_round_trip_through_a_full_message() -> None:
    tally = Tally()
    sender = Sender("w3.17", tally)
    xml = (
        "<message xmlns='jabber:client' to='room@conf.example' type='groupchat'>"
        f"<body>hello</body>{sender.next_marker(1_700_000_000_123.9)}</message>"
    )
    element = truth.find_marker(fromstring(xml))
    assert element is not None and element.tag == TAG == "{urn:locust-xmpp:truth}t"
    assert element.attrib == {"s": "w3.17", "n": "1", "ts": "1700000000123"}
    assert Receiver("w1.2.1", tally).receive(element, 1_700_000_000_150) == 27.0
    assert tally.delivered == {"w1.2.1|w3": 1}


def test_member_element_round_trip_and_foreign_occupants() -> None:
    presence = fromstring(
        f"<presence xmlns='jabber:client' from='room@muc/nick'><x xmlns='http://jabber.org/protocol/muc#user'/>"
        f"{truth.member_element('w2.5.9')}</presence>"
    )
    assert truth.member_of(presence) == "w2.5.9"
    assert truth.member_of(fromstring("<presence xmlns='jabber:client' from='room@muc/human'/>")) == ""
    hostile = f"<presence xmlns='jabber:client'><m xmlns='{truth.NS}' id='a b|c'/></presence>"
    assert truth.member_of(fromstring(hostile)) == ""


def test_sender_numbers_from_one_and_rejects_unsafe_ids() -> None:
    sender = Sender("l.1", Tally())
    seqs = [_marker_seq(sender.next_marker(0)) for _ in range(3)]
    assert seqs == [1, 2, 3] and sender.seq == 3
    for bad in ["", "a'b", "a b", "x" * 65, "<t/>", "a|b"]:
        with pytest.raises(ValueError):
            Sender(bad)


def _marker_seq(xml: str) -> int:
    return int(fromstring(xml).attrib["n"])


def test_in_order_deliveries_return_latencies() -> None:
    tally = Tally()
    latencies = _receive_all(Receiver("l.1.1", tally), "l.2", [1, 2, 3, 4])
    assert latencies == [10.0] * 4
    assert (tally.delivered["l.1.1|l"], tally.duplicated, tally.out_of_order) == (4, 0, 0)


def test_duplicates_are_counted_once_and_return_none() -> None:
    tally = Tally()
    receiver = Receiver("l.1.1", tally)
    assert _receive_all(receiver, "a", [1, 2, 2, 1, 2]) == [10.0, 10.0, None, None, None]
    assert (sum(tally.delivered.values()), tally.duplicated, tally.out_of_order) == (2, 3, 0)


def test_late_first_delivery_is_out_of_order_and_its_repeat_a_duplicate() -> None:
    tally = Tally()
    receiver = Receiver("l.1.1", tally)
    assert _receive_all(receiver, "a", [1, 3, 2, 2, 4]) == [10.0, 10.0, 10.0, None, 10.0]
    assert (sum(tally.delivered.values()), tally.duplicated, tally.out_of_order) == (4, 1, 1)


def test_senders_are_tracked_apart_and_counted_by_their_worker() -> None:
    tally = Tally()
    receiver = Receiver("w0.1.1", tally)
    _receive_all(receiver, "w0.7", [1, 2, 3])
    _receive_all(receiver, "w1.3", [1, 2])
    assert receiver.senders == 2
    assert tally.delivered == {"w0.1.1|w0": 3, "w0.1.1|w1": 2}


def test_expected_is_counted_at_confirmation_for_the_members_then_present() -> None:
    tally = Tally()
    before = frozenset({"l.1.1", "l.2.2"})
    after = frozenset({"l.1.1", "l.2.2", "l.3.3"})
    tally.confirm(before, "l")
    tally.confirm(before, "l")
    tally.confirm(after, "l")
    assert tally.confirmed == 3
    assert tally.as_dict()["expected"] == {"l.1.1|l": 3, "l.2.2|l": 3, "l.3.3|l": 1}


def test_lost_unexpected_and_unverified_never_cancel_out() -> None:
    tally = Tally()
    tally.expected.update({"l.1.1|l": 10, "l.2.2|l": 10, "l.3.3|l": 10})
    # l.1.1 got 8 of its 10; l.2.2 got 12 (2 nobody announced); l.3.3 broke after 4.
    tally.delivered.update({"l.1.1|l": 8, "l.2.2|l": 12, "l.3.3|l": 4})
    tally.ended("l.3.3", False, 0.0)
    assert _judged(tally) == {"expected": 30, "delivered": 24, "lost": 2, "unexpected": 2, "unverified": 6}


def test_a_shortfall_is_in_flight_until_its_member_left_and_the_grace_time_passed() -> None:
    tally = Tally()
    tally.expected.update({"l.1.1|l": 10, "l.2.2|l": 10, "l.3.3|l": 10})
    tally.delivered.update({"l.1.1|l": 7, "l.2.2|l": 9, "l.3.3|l": 12})
    now = 1_000.0
    # Everyone still in the room: what is missing is on its way, and a surplus is not judged either.
    assert {k: tally.summary(now=now)[k] for k in ("in_flight", "lost", "unexpected", "unverified")} == {
        "in_flight": 4, "lost": 0, "unexpected": 0, "unverified": 0}  # fmt: skip
    tally.ended("l.1.1", True, now)  # left, its leave answered: every delivery due to it was read
    tally.ended("l.2.2", False, now)  # its session ended without the answer
    soon = {k: tally.summary(now=now + truth.GRACE - 0.1)[k] for k in ("in_flight", "lost", "unverified")}
    assert soon == {"in_flight": 4, "lost": 0, "unverified": 0}  # other workers' counts may still come
    later = tally.summary(now=now + truth.GRACE)
    assert {k: later[k] for k in ("in_flight", "lost", "unexpected", "unverified")} == {
        "in_flight": 0, "lost": 3, "unexpected": 0, "unverified": 1}  # fmt: skip
    # At the end of the run every pair is judged: l.3.3, still in the room, for its surplus.
    final = tally.summary(now=now, final=True)
    assert {k: final[k] for k in ("in_flight", "lost", "unexpected", "unverified")} == {
        "in_flight": 0, "lost": 3, "unexpected": 2, "unverified": 1}  # fmt: skip


def test_a_surplus_from_messages_whose_sender_never_saw_their_reflection_is_unverified() -> None:
    tally = Tally()
    tally.expected.update({"w0.1.1|w1": 5, "w0.2.2|w1": 5, "w0.3.3|w0": 5})
    tally.delivered.update({"w0.1.1|w1": 6, "w0.2.2|w1": 9, "w0.3.3|w0": 6})
    tally.uncertain["w1"] += 2  # a sender on w1 lost its session with two messages unreflected
    assert _judged(tally) == {"expected": 15, "delivered": 21, "lost": 0, "unexpected": 3, "unverified": 3}


def test_a_missing_worker_takes_its_receivers_and_its_senders_out_of_judgement() -> None:
    tally = Tally()
    tally.expected.update({"w0.1.1|w0": 5, "w0.1.1|w1": 5, "w1.2.2|w0": 5, "w1.2.2|w1": 5})
    tally.delivered.update({"w0.1.1|w0": 5, "w0.1.1|w1": 3, "w1.2.2|w0": 1})
    assert _judged(tally) == {"expected": 20, "delivered": 9, "lost": 11, "unexpected": 0, "unverified": 0}
    assert _judged(tally, ("w1",)) == {"expected": 20, "delivered": 9, "lost": 0, "unexpected": 0, "unverified": 11}


def test_replayed_messages_are_neither_counted_nor_remembered() -> None:
    tally = Tally()
    receiver = Receiver("l.1.1", tally)
    assert receiver.receive(_marker("a", 1), 2_000, live=False) is None
    assert tally.as_dict() == Tally().as_dict()
    assert receiver.receive(_marker("a", 1), 2_000) == 1_000.0


def test_malformed_marker_raises() -> None:
    for xml in [
        f"<t xmlns='{truth.NS}' s='a' n='1'/>",
        f"<t xmlns='{truth.NS}' s='a' n='x' ts='1'/>",
        truth.marker("a", 0, 1),
    ]:
        with pytest.raises(ValueError):
            Receiver("l.1.1", Tally()).receive(fromstring(xml), 0)


def test_clock_skew_gives_zero_latency_not_negative() -> None:
    assert Receiver("l.1.1", Tally()).receive(_marker("a", 1, ts=5_000), 4_990) == 0.0


def test_worker_deltas_merge_into_master_totals() -> None:
    master = Tally()
    workers = [Tally(), Tally()]
    reports = []
    for round_ in range(3):
        for i, worker in enumerate(workers):
            worker.sent += 1 + i
            worker.confirm(frozenset({f"w{i}.1.1", "w9.1.1"}), f"w{i}")
            worker.delivered[f"w{i}.1.1|w{i}"] += 1
            worker.delivered["w9.1.1|w0"] += round_ % 2
            worker.duplicated += i
            if round_ == 2 and i == 1:
                worker.ended("w1.1.1", False, 5.0)
            reports.append(worker.as_dict())
            worker.reset()
    workers[0].ended("w0.1.1", True, 4.0)
    workers[1].uncertain["w1"] += 1
    for worker in workers:
        reports.append(worker.as_dict())
        worker.reset()
    for report in reports:
        master.merge(json.loads(json.dumps(report)))  # what crosses the wire is plain data
    assert (master.sent, master.confirmed, master.duplicated, master.broken) == (9, 6, 3, {"w1.1.1": 5.0})
    assert (master.left, master.uncertain) == ({"w0.1.1": 4.0}, {"w1": 1})
    assert master.expected == {"w0.1.1|w0": 3, "w1.1.1|w1": 3, "w9.1.1|w0": 3, "w9.1.1|w1": 3}
    assert _judged(master) == {"expected": 12, "delivered": 8, "lost": 4, "unexpected": 0, "unverified": 0}
    assert all(not v for w in workers for v in w.as_dict().values())
    master.merge({"sent": 1, "lost": 99, "unknown": 5})
    assert master.sent == 10 and master.summary(final=True)["lost"] == 4


def test_memory_stays_bounded_with_many_senders_and_losses() -> None:
    tally = Tally()
    receiver = Receiver("l.1.1", tally)
    element = Element(TAG, ts="1000")
    for n in range(1, 3_001):
        element.set("n", str(n))
        for s in range(100):
            if (n + s) % 10:  # one message in ten never arrives
                element.set("s", f"s{s}")
                receiver.receive(element, 1_010)
    states = receiver._senders.values()
    assert receiver.senders == 100
    assert max(seen.window.bit_length() for seen in states) <= Receiver.WINDOW
    assert sum(tally.delivered.values()) == 270_000 and tally.duplicated == 0 and tally.out_of_order == 0


def test_arrival_beyond_the_window_counts_as_late_delivery() -> None:
    tally = Tally()
    receiver = Receiver("l.1.1", tally)
    _receive_all(receiver, "a", [1, Receiver.WINDOW + 5])
    assert receiver.receive(_marker("a", 2), 1_010) == 10.0
    assert receiver.receive(_marker("a", 6), 1_010) == 10.0
    assert receiver.receive(_marker("a", 6), 1_010) is None
    assert (sum(tally.delivered.values()), tally.duplicated, tally.out_of_order) == (4, 1, 2)


def test_deviations_merge_and_say_each_kind_once() -> None:
    said: list[str] = []
    master = Deviations()
    master.on_new.append(lambda kind, message: said.append(message))
    worker = Deviations()
    for _ in range(3):
        worker.note("archive_short", "the archive returned 0 messages")
    worker.note("messages_skipped", "skipped", count=4)
    master.merge(json.loads(json.dumps(worker.as_dict())))
    worker.reset()
    worker.note("archive_short", "the archive returned 1 message")
    master.merge(worker.as_dict())
    assert said == ["the archive returned 0 messages", "skipped"]
    assert master.as_dict() == {
        "archive_short": {"count": 4, "message": "the archive returned 0 messages"},
        "messages_skipped": {"count": 4, "message": "skipped"},
    }


class _Quiet(User):
    wait_time = constant(1)

    @task
    def idle(self) -> None:
        pass


def test_install_on_a_worker_ships_deltas() -> None:
    env = Environment(user_classes=[_Quiet])
    env.runner = WorkerRunner.__new__(WorkerRunner)  # not connected anywhere: only its type matters here
    env.runner.greenlet, env.runner.custom_messages = None, {}
    tally, deviations = Tally(), Deviations()
    tally.sent, tally.delivered["w0.1.1|w0"] = 2, 5
    deviations.note("messages_skipped", "skipped")
    outcome.install(env, tally, deviations)
    outcome.install(env, tally, deviations)  # a second call must not double the listeners
    data: dict = {}
    env.events.report_to_master.fire(client_id="w", data=data)
    assert data[outcome.TRUTH_KEY]["sent"] == 2 and data[outcome.TRUTH_KEY]["delivered"] == {"w0.1.1|w0": 5}
    assert data[outcome.DEVIATIONS_KEY] == {"messages_skipped": {"count": 1, "message": "skipped"}}
    assert tally.sent == 0 and not tally.delivered and not deviations


def test_local_run_logs_writes_json_and_fails_the_exit_code_on_loss(tmp_path, caplog) -> None:
    options = argparse.Namespace(csv_prefix=str(tmp_path / "out" / "run"))
    env = Environment(user_classes=[_Quiet], parsed_options=options)
    runner = env.create_local_runner()
    tally, deviations = Tally(), Deviations()
    outcome.install(env, tally, deviations)
    env.events.test_start.fire(environment=env)
    tally.sent, tally.confirmed = 3, 3
    tally.expected["l.1.1|l"], tally.delivered["l.1.1|l"] = 9, 8
    with caplog.at_level("INFO", logger="xmpp_user.run.outcome"):
        deviations.note("no_room_vcard", "the room has no vCard")
        env.events.test_stop.fire(environment=env)
        env.events.quitting.fire(environment=env)
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("Run differs from the plan: the room has no vCard") == 1
    assert [line for line in lines if line.startswith("Message truth")] == [
        "Message truth: sent=3 confirmed=3 unconfirmed=0 skipped=0 duplicated=0 out_of_order=0 expected=9 "
        "delivered=8 in_flight=0 lost=1 unexpected=0 unverified=0 missing_workers=0 missing_users=0"
    ]
    written = json.loads((tmp_path / "out" / "run_truth.json").read_text())
    assert written == outcome.summary(env)
    assert written["deviations"] == {"no_room_vcard": {"count": 1, "message": "the room has no vCard"}}
    assert env.process_exit_code == 1
    runner.quit()


def test_a_clean_local_run_leaves_the_exit_code_to_locust(tmp_path) -> None:
    env = Environment(user_classes=[_Quiet], parsed_options=argparse.Namespace(csv_prefix=None))
    runner = env.create_local_runner()
    tally = Tally()
    outcome.install(env, tally, Deviations())
    env.events.test_start.fire(environment=env)
    tally.expected["l.1.1|l"] = tally.delivered["l.1.1|l"] = 4
    env.events.test_stop.fire(environment=env)
    assert env.process_exit_code is None
    runner.quit()


def test_web_ui_serves_the_totals(monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["locust"])  # the web UI parses the command line for its extra options
    env = Environment(user_classes=[_Quiet])
    env.create_local_runner()
    web_ui = env.create_web_ui("127.0.0.1", 0, delayed_start=True)
    tally = Tally()
    tally.sent, tally.expected["l.1.1|l"], tally.delivered["l.1.1|l"] = 1, 2, 2
    outcome.install(env, tally, Deviations())
    reply = web_ui.app.test_client().get(outcome.ROUTE)
    assert reply.status_code == 200
    body = reply.get_json()
    assert (body["sent"], body["expected"], body["delivered"], body["lost"]) == (1, 2, 2, 0)
    env.runner.quit()


def test_a_late_reply_is_said_as_a_deviation_of_the_run(monkeypatch) -> None:
    deviations = Deviations()
    monkeypatch.setattr(outcome, "DEVIATIONS", deviations)
    for hook in requests.on_late_reply:
        hook()
        hook()
    assert deviations.as_dict() == {"late_replies": {"count": 2, "message": outcome.LATE_REPLIES}}


def test_sender_id_is_unique_and_safe() -> None:
    env = Environment(user_classes=[_Quiet])
    env.create_local_runner()
    ids = {outcome.sender_id(env) for _ in range(50)}
    assert len(ids) == 50
    for sender_id in ids:
        Sender(sender_id, Tally())
        truth.new_member(sender_id)
    env.runner.quit()
