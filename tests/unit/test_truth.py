"""Message truth: markers, receivers, tallies, and the tally's trip from workers to the master."""

from __future__ import annotations

import argparse
import json
from xml.etree.ElementTree import Element, fromstring

import pytest
from locust import User, constant, task
from locust.env import Environment

from xmpp_user import truth, truth_locust
from xmpp_user.truth import TAG, Receiver, Sender, Tally


def _marker(sender: str, seq: int, ts: int = 1_000) -> Element:
    return fromstring(truth.marker(sender, seq, ts))


def _receive_all(receiver: Receiver, sender: str, seqs: list[int]) -> list[float | None]:
    return [receiver.receive(_marker(sender, n), 1_010) for n in seqs]


def test_marker_round_trip_through_a_full_message() -> None:
    tally = Tally()
    sender = Sender("w3.17", tally)
    xml = (
        "<message xmlns='jabber:client' to='room@conf.example' type='groupchat'>"
        f"<body>hello</body>{sender.next_marker(1_700_000_000_123.9, expected=3)}</message>"
    )
    element = truth.find_marker(fromstring(xml))
    assert element is not None and element.tag == TAG == "{urn:locust-xmpp:truth}t"
    assert element.attrib == {"s": "w3.17", "n": "1", "ts": "1700000000123"}
    assert Receiver(tally).receive(element, 1_700_000_000_150) == 27.0
    assert (sender.sent, tally.summary()) == (
        1,
        {"sent": 1, "expected": 3, "delivered": 1, "duplicated": 0, "out_of_order": 0, "lost": 2},
    )


def test_sender_numbers_from_one_and_rejects_unsafe_ids() -> None:
    sender = Sender("l.1", Tally())
    seqs = [_marker_seq(sender.next_marker(0, expected=1)) for _ in range(3)]
    assert seqs == [1, 2, 3] and sender.sent == 3
    for bad in ["", "a'b", "a b", "x" * 65, "<t/>"]:
        with pytest.raises(ValueError):
            Sender(bad)


def _marker_seq(xml: str) -> int:
    return int(fromstring(xml).attrib["n"])


def test_in_order_deliveries_return_latencies() -> None:
    tally = Tally()
    latencies = _receive_all(Receiver(tally), "a", [1, 2, 3, 4])
    assert latencies == [10.0] * 4
    assert (tally.delivered, tally.duplicated, tally.out_of_order) == (4, 0, 0)


def test_duplicates_are_counted_once_and_return_none() -> None:
    tally = Tally()
    receiver = Receiver(tally)
    assert _receive_all(receiver, "a", [1, 2, 2, 1, 2]) == [10.0, 10.0, None, None, None]
    assert (tally.delivered, tally.duplicated, tally.out_of_order) == (2, 3, 0)


def test_late_first_delivery_is_out_of_order_and_its_repeat_a_duplicate() -> None:
    tally = Tally()
    receiver = Receiver(tally)
    assert _receive_all(receiver, "a", [1, 3, 2, 2, 4]) == [10.0, 10.0, 10.0, None, 10.0]
    assert (tally.delivered, tally.duplicated, tally.out_of_order) == (4, 1, 1)


def test_senders_are_tracked_apart() -> None:
    tally = Tally()
    receiver = Receiver(tally)
    _receive_all(receiver, "a", [1, 2, 3])
    _receive_all(receiver, "b", [1, 2])
    assert receiver.senders == 2
    assert (tally.delivered, tally.duplicated, tally.out_of_order) == (5, 0, 0)


def test_lost_is_expected_minus_delivered_and_never_negative() -> None:
    tally = Tally(sent=3, expected=6, delivered=4)
    assert tally.lost == 2
    tally.delivered = 7
    assert tally.lost == 0


def test_replayed_messages_are_neither_counted_nor_remembered() -> None:
    tally = Tally()
    receiver = Receiver(tally)
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
            Receiver(Tally()).receive(fromstring(xml), 0)


def test_clock_skew_gives_zero_latency_not_negative() -> None:
    assert Receiver(Tally()).receive(_marker("a", 1, ts=5_000), 4_990) == 0.0


def test_worker_deltas_merge_into_master_totals() -> None:
    master = Tally()
    workers = [Tally(), Tally()]
    reports = []
    for round_ in range(3):
        for i, worker in enumerate(workers):
            worker.sent += 1 + i
            worker.expected += 4
            worker.delivered += 3 + round_ % 2
            worker.duplicated += i
            reports.append(worker.as_dict())
            worker.reset()
    for report in reports:
        master.merge(report)
    assert master.summary() == {
        "sent": 9,
        "expected": 24,
        "delivered": 20,
        "duplicated": 3,
        "out_of_order": 0,
        "lost": 4,
    }
    assert all(v == 0 for w in workers for v in w.as_dict().values())
    master.merge({"sent": 1, "lost": 99, "unknown": 5})
    assert master.sent == 10 and master.lost == 4


def test_memory_stays_bounded_with_many_senders_and_losses() -> None:
    tally = Tally()
    receiver = Receiver(tally)
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
    assert tally.delivered == 270_000 and tally.duplicated == 0 and tally.out_of_order == 0


def test_arrival_beyond_the_window_counts_as_late_delivery() -> None:
    tally = Tally()
    receiver = Receiver(tally)
    _receive_all(receiver, "a", [1, Receiver.WINDOW + 5])
    assert receiver.receive(_marker("a", 2), 1_010) == 10.0
    assert receiver.receive(_marker("a", 6), 1_010) == 10.0
    assert receiver.receive(_marker("a", 6), 1_010) is None
    assert (tally.delivered, tally.duplicated, tally.out_of_order) == (4, 1, 2)


class _Quiet(User):
    wait_time = constant(1)

    @task
    def idle(self) -> None:
        pass


def test_install_ships_deltas_and_merges_reports() -> None:
    env = Environment(user_classes=[_Quiet])
    tally = Tally(sent=2, expected=6, delivered=5)
    truth_locust.install(env, tally)
    truth_locust.install(env, tally)  # a second call must not double the listeners
    data: dict = {}
    env.events.report_to_master.fire(client_id="w", data=data)
    assert data[truth_locust.REPORT_KEY] == {
        "sent": 2,
        "expected": 6,
        "delivered": 5,
        "duplicated": 0,
        "out_of_order": 0,
    }
    assert tally.sent == 0
    for _ in range(2):
        env.events.worker_report.fire(client_id="w", data=data)
    env.events.worker_report.fire(client_id="w", data={"user_count": 0})
    assert truth_locust.summary(env)["expected"] == 12
    assert truth_locust.summary(env)["lost"] == 2


def test_local_run_logs_and_writes_json_at_test_stop(tmp_path, caplog) -> None:
    options = argparse.Namespace(csv_prefix=str(tmp_path / "out" / "run"))
    env = Environment(user_classes=[_Quiet], parsed_options=options)
    runner = env.create_local_runner()
    tally = Tally()
    truth_locust.install(env, tally)
    env.events.test_start.fire(environment=env)
    tally.merge({"sent": 3, "expected": 9, "delivered": 8, "duplicated": 1})
    with caplog.at_level("INFO", logger="xmpp_user.truth_locust"):
        env.events.test_stop.fire(environment=env)
        env.events.quitting.fire(environment=env)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Message truth")]
    assert lines == ["Message truth: sent=3 expected=9 delivered=8 duplicated=1 out_of_order=0 lost=1"]
    written = json.loads((tmp_path / "out" / "run_truth.json").read_text())
    assert written == truth_locust.summary(env)
    runner.quit()


def test_web_ui_serves_the_totals(monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["locust"])  # the web UI parses the command line for its extra options
    env = Environment(user_classes=[_Quiet])
    env.create_local_runner()
    web_ui = env.create_web_ui("127.0.0.1", 0, delayed_start=True)
    truth_locust.install(env, Tally(sent=1, expected=2, delivered=2))
    reply = web_ui.app.test_client().get(truth_locust.ROUTE)
    assert reply.status_code == 200
    assert reply.get_json() == {
        "sent": 1,
        "expected": 2,
        "delivered": 2,
        "duplicated": 0,
        "out_of_order": 0,
        "lost": 0,
    }
    env.runner.quit()


def test_sender_id_is_unique_and_safe() -> None:
    env = Environment(user_classes=[_Quiet])
    env.create_local_runner()
    ids = {truth_locust.sender_id(env) for _ in range(50)}
    assert len(ids) == 50
    for sender_id in ids:
        Sender(sender_id, Tally())
    env.runner.quit()
