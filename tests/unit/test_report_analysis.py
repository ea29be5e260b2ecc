"""The report's arithmetic on synthetic runs: per-phase figures and the conclusions, edge cases included."""

from __future__ import annotations

import math
import re

import pytest

from xmpp_user.observe import analysis
from xmpp_user.observe.analysis import (
    conclusions,
    cpu_seconds,
    difference,
    linear_fit,
    percentile,
    phase_rows,
    phase_windows,
)
from xmpp_user.observe.model import NameStats, PhaseSpan, Run, Sample, ServerSample, Snapshot, phases_from_log

T0 = 1_800_000_000.0
KIB, MIB = 1024, 2**20


# ---- building synthetic runs --------------------------------------------------------------------------


def spans(*plan: tuple[str, float, int]) -> list[PhaseSpan]:
    """Back-to-back phases from (name, seconds, users)."""
    out, t = [], T0
    for name, seconds, users in plan:
        out.append(PhaseSpan(name, t, t + seconds, users, users, users))
        t += seconds
    return out


def server_samples(phases: list[PhaseSpan], cpu: dict[str, float], rss: float = 20 * MIB) -> list[ServerSample]:
    """Five samples a second, each phase at a constant CPU %."""
    out = [ServerSample(T0, None, rss)]
    for p in phases:
        assert p.end is not None
        steps = round((p.end - p.start) / 0.2)
        out += [ServerSample(p.start + 0.2 * (k + 1), cpu.get(p.name, 0.0), rss) for k in range(steps)]
    return out


def snapshot(t: float, phase: str | None, counts: dict[str, int], times: dict[str, dict[float, int]] | None = None,
             lost: int = 0) -> Snapshot:  # fmt: skip
    times = times or {}
    return Snapshot(t, phase, {n: NameStats(c, 0, dict(times.get(n, {c and 10.0: c}))) for n, c in counts.items()},
                    {"lost": lost})  # fmt: skip


def livechat_run(cpu: dict[str, float], batches: int = 3, vcards_in: tuple[int, ...] = (1,),
                 mam_in: tuple[int, ...] = (1, 2)) -> Run:  # fmt: skip
    """Three join phases of 10 s each; vCard and MAM requests in the batches named."""
    phases = spans(*[(f"batch{b}-join", 10.0, 10) for b in range(1, batches + 1)])
    cumulative: dict[str, int] = {"connect": 0, "vcard_occupant": 0, "mam": 0}
    snaps = []
    for b, p in enumerate(phases, 1):
        snaps.append(snapshot(p.start, p.name, dict(cumulative)))
        cumulative["connect"] += 10
        cumulative["vcard_occupant"] += 90 if b in vcards_in else 0
        cumulative["mam"] += 10 if b in mam_in else 0
    snaps.append(snapshot(phases[-1].end or 0, None, dict(cumulative)))
    return Run(phases=phases, server=server_samples(phases, cpu), snapshots=snaps, server_name="Prosody (pid 1)")


def by_key(run: Run) -> dict[str, analysis.Conclusion]:
    return {c.key: c for c in conclusions(run)}


# ---- small arithmetic ---------------------------------------------------------------------------------


def test_percentile_is_the_nearest_rank() -> None:
    dist = {10.0: 50, 20.0: 45, 300.0: 5}
    assert percentile(dist, 0.5) == 10.0
    assert percentile(dist, 0.95) == 20.0
    assert percentile(dist, 0.96) == 300.0
    assert percentile(dist, 1.0) == 300.0
    assert percentile({}, 0.5) is None
    assert percentile({5.0: 0}, 0.5) is None
    assert percentile({7.0: 1}, 0.95) == 7.0


def test_percentile_of_histogram_buckets_with_an_open_last_bucket() -> None:
    assert percentile({100.0: 90, math.inf: 10}, 0.95) == math.inf


def test_difference_keeps_only_what_was_added() -> None:
    assert difference({10.0: 5, 20.0: 7, 30.0: 1}, {10.0: 5, 20.0: 2, 40.0: 3}) == {20.0: 5, 30.0: 1}


def test_cpu_seconds_integrates_each_sample_over_its_own_interval() -> None:
    phases = spans(("a", 10.0, 1), ("b", 10.0, 1))
    server = server_samples(phases, {"a": 50.0, "b": 100.0})
    assert cpu_seconds(server, T0, T0 + 10) == pytest.approx(5.0)
    assert cpu_seconds(server, T0 + 10, T0 + 20) == pytest.approx(10.0)
    # A window starting between two samples counts only its own part of the straddling interval.
    assert cpu_seconds(server, T0 + 0.1, T0 + 1.0) == pytest.approx(0.45)
    assert cpu_seconds([], T0, T0 + 10) == 0.0


def test_linear_fit() -> None:
    slope, intercept, r2 = linear_fit([0, 1, 2, 3], [1, 3, 5, 7])
    assert (slope, intercept, r2) == (pytest.approx(2.0), pytest.approx(1.0), pytest.approx(1.0))
    _, _, r2 = linear_fit([0, 1, 2, 3], [1, 1, 1, 1])
    assert r2 is None  # memory that never moved
    _, _, r2 = linear_fit([0, 1, 2, 3, 4, 5], [0, 5, 1, 4, 2, 3])
    assert r2 is not None and r2 < 0.2
    with pytest.raises(ValueError):
        linear_fit([2, 2, 2], [1, 2, 3])


# ---- per phase ----------------------------------------------------------------------------------------


def test_phase_rows_take_latency_messages_failures_and_losses_by_difference() -> None:
    phases = spans(("join", 10.0, 5), ("talk", 20.0, 5))
    before = Snapshot(T0, "join", {}, {"lost": 0})
    middle = Snapshot(T0 + 10, "talk", {"connect": NameStats(5, 1, {10.0: 4, 2000.0: 1})}, {"lost": 0})
    end = Snapshot(T0 + 30, None, {
        "connect": NameStats(5, 1, {10.0: 4, 2000.0: 1}),
        "message": NameStats(100, 2, {5.0: 60, 8.0: 35, 40.0: 5}),
    }, {"lost": 3})  # fmt: skip
    run = Run(phases=phases, snapshots=[before, middle, end],
              server=server_samples(phases, {"join": 40.0, "talk": 10.0}, rss=30 * MIB))  # fmt: skip
    join, talk = phase_rows(run)
    assert (join.failures, join.messages, join.lost, join.message_rate) == (1, 0, 0, 0.0)
    assert (join.latency["connect"].p50, join.latency["connect"].p95) == (10.0, 2000.0)
    assert "message" not in join.latency
    assert (talk.failures, talk.messages, talk.lost) == (2, 100, 3)
    assert talk.message_rate == pytest.approx(5.0)
    assert (talk.latency["message"].p50, talk.latency["message"].p95) == (5.0, 8.0)
    assert "connect" not in talk.latency  # nothing new in that phase
    assert (join.cpu_mean, join.cpu_max, talk.cpu_mean) == (pytest.approx(40.0), 40.0, pytest.approx(10.0))
    assert join.cpu_seconds == pytest.approx(4.0)
    assert (join.rss_mean, join.rss_max) == (30 * MIB, 30 * MIB)
    assert join.server_samples == 50


def test_phase_rows_tell_in_flight_from_lost_and_say_how_long_each_phase_waited() -> None:
    # Losses are judged once a receiver has left: the talk ends with deliveries in flight, the leave judges them.
    phases = spans(("join", 10.0, 5), ("talk", 20.0, 5), ("leave", 5.0, 0))
    phases[0].waited, phases[0].settled = 0.1, "quiet"
    phases[1].waited, phases[1].settled = 120.0, "12 replies outstanding"
    truths = [(T0, "join", 0, 0, 0), (T0 + 10, "talk", 0, 0, 0), (T0 + 30, "leave", 900, 100, 0),
              (T0 + 35, None, 960, 0, 40)]  # fmt: skip
    snaps = [Snapshot(t, name, {}, {"delivered": d, "in_flight": f, "lost": lost}) for t, name, d, f, lost in truths]
    join, talk, leave = phase_rows(Run(phases=phases, snapshots=snaps))
    assert [(r.deliveries, r.in_flight, r.lost) for r in (join, talk, leave)] == [(0, 0, 0), (900, 100, 0), (60, 0, 40)]
    assert talk.delivery_rate == pytest.approx(45.0)
    assert (join.waited, join.settled, join.gave_up) == (0.1, "quiet", False)
    assert (talk.waited, talk.settled, talk.gave_up) == (120.0, "12 replies outstanding", True)
    assert (leave.waited, leave.settled, leave.gave_up) == (None, None, False)  # a phase log without settle


def test_phases_from_the_log_carry_their_wait() -> None:
    entry = {"phase": "batch1-join", "start_unix": T0, "end_unix": T0 + 17.1, "users": 100, "settle": 120.0,
             "waited": 7.068, "settled": "quiet"}  # fmt: skip
    (span,) = phases_from_log([entry])
    assert (span.settle, span.waited, span.settled) == (120.0, 7.068, "quiet")
    (old,) = phases_from_log([{"phase": "p", "start_unix": T0, "end_unix": None}])  # before phases settled
    assert (old.settle, old.waited, old.settled) == (0.0, None, None)


def test_phase_rows_without_server_samples_or_snapshots_leave_blanks() -> None:
    run = Run(phases=spans(("only", 5.0, 1)))
    (row,) = phase_rows(run)
    assert (row.cpu_mean, row.rss_max, row.messages, row.failures, row.lost) == (None, None, None, None, None)
    assert row.seconds == 5.0


def test_a_skipped_phase_has_no_snapshots_and_later_phases_keep_theirs() -> None:
    phases = spans(("a", 5.0, 1), ("b", 0.0, 2), ("c", 5.0, 3))
    phases[1].skipped = True
    snaps = [snapshot(T0, "a", {"x": 1}), snapshot(T0 + 5, "c", {"x": 3}), snapshot(T0 + 10, None, {"x": 6})]
    windows = phase_windows(Run(phases=phases, snapshots=snaps))
    assert [(p.name, b and b.phase, e and e.phase) for p, b, e in windows] == [
        ("a", "a", "c"), ("b", None, None), ("c", "c", None),
    ]  # fmt: skip
    rows = phase_rows(Run(phases=phases, snapshots=snaps))
    assert [r.latency["x"].requests if "x" in r.latency else None for r in rows] == [2, None, 3]


def test_a_phase_name_repeated_matches_its_own_snapshots_in_order() -> None:
    phases = spans(("talk", 5.0, 1), ("talk", 5.0, 1))
    snaps = [snapshot(T0, "talk", {"m": 0}), snapshot(T0 + 5, "talk", {"m": 10}), snapshot(T0 + 10, None, {"m": 30})]
    assert [r.messages for r in phase_rows(Run(phases=phases, snapshots=snaps))] == [0, 0]
    assert [r.latency["m"].requests for r in phase_rows(Run(phases=phases, snapshots=snaps))] == [10, 20]


# ---- the vCard and MAM shares -------------------------------------------------------------------------


def test_vcard_and_mam_shares_with_their_numbers() -> None:
    found = by_key(livechat_run({"batch1-join": 60.0, "batch2-join": 20.0, "batch3-join": 17.0}))
    vcards, mam = found["vcards"], found["mam"]
    assert vcards.drawn and mam.drawn
    assert vcards.values["share"] == pytest.approx(2 / 3)
    assert vcards.text.startswith("The vCard (avatar) emulation took 67% of the server's CPU while viewers joined")
    assert "6.00 CPU-seconds during batch1-join (mean 60 %, peak 60 %, 600 ms per viewer)" in vcards.text
    assert "2.00 during batch2-join without it" in vcards.text
    # MAM's share of the whole client's join (batch 1), so that the two shares compare; and of batch 2's.
    assert mam.values["share"] == pytest.approx(0.05) and mam.values["share_of_with"] == pytest.approx(0.15)
    assert mam.text.startswith("Reading the room archive (MAM) on joining took 5% of the server's CPU while viewers "
                               "joined with every feature (6.00 CPU-seconds during batch1-join), and 15% of "
                               "batch2-join's: Prosody (pid 1) used 2.00 CPU-seconds during batch2-join")  # fmt: skip
    assert "1.70 during batch3-join without it" in mam.text


def test_a_feature_that_cost_nothing_says_so() -> None:
    found = by_key(livechat_run({"batch1-join": 20.0, "batch2-join": 25.0, "batch3-join": 25.0}))
    assert found["vcards"].drawn and found["vcards"].values["share"] < 0
    assert "showed no CPU cost in this run" in found["vcards"].text
    assert found["mam"].values["share"] == pytest.approx(0.0)
    assert "showed no CPU cost" in found["mam"].text


def test_one_batch_only() -> None:
    found = by_key(livechat_run({"batch1-join": 60.0}, batches=1))
    assert not found["vcards"].drawn and not found["mam"].drawn
    assert "the run had 1 batch only, so no batch2-join to compare batch1-join with" in found["vcards"].text
    assert "--batches 2" in found["vcards"].text
    assert "the run has no phase batch2-join" in found["mam"].text


def test_two_batches_draw_the_vcard_share_but_not_the_mam_share() -> None:
    found = by_key(livechat_run({"batch1-join": 60.0, "batch2-join": 20.0}, batches=2))
    assert found["vcards"].drawn
    assert not found["mam"].drawn and "the run had 2 batches only" in found["mam"].text


def test_no_server_samples_says_why() -> None:
    run = livechat_run({"batch1-join": 60.0, "batch2-join": 20.0, "batch3-join": 17.0})
    run.server = []
    run.server_note = "the server was not observed: no --xmpp-server-pid"
    found = by_key(run)
    for key in ("vcards", "mam", "memory"):
        assert not found[key].drawn
        assert "the server was not observed: no --xmpp-server-pid" in found[key].text


def test_too_few_server_samples_in_a_phase() -> None:
    run = livechat_run({"batch1-join": 60.0, "batch2-join": 20.0, "batch3-join": 17.0})
    run.server = [s for s in run.server if not (T0 + 10 < s.t <= T0 + 19.7)]  # two samples left in batch2-join
    found = by_key(run)
    assert not found["vcards"].drawn
    assert "batch2-join has 2 server samples, fewer than 3" in found["vcards"].text


def test_a_batch_without_the_feature_requests_is_not_compared() -> None:
    found = by_key(livechat_run({"batch1-join": 60.0, "batch2-join": 20.0, "batch3-join": 17.0}, vcards_in=()))
    assert not found["vcards"].drawn and "batch1-join made no vcard/vcard_occupant requests" in found["vcards"].text
    found = by_key(livechat_run({"batch1-join": 60.0, "batch2-join": 20.0, "batch3-join": 17.0}, mam_in=(1, 2, 3)))
    assert not found["mam"].drawn and "batch3-join made 10 mam requests too" in found["mam"].text


def test_an_idle_server_in_the_first_batch() -> None:
    found = by_key(livechat_run({"batch2-join": 20.0, "batch3-join": 17.0}))
    assert not found["vcards"].drawn and "Prosody (pid 1) used no measurable CPU during batch1-join" in (
        found["vcards"].text
    )


def test_a_jitsi_run_gets_no_livechat_conclusions() -> None:
    run = Run(phases=spans(("batch1", 10.0, 100), ("batch2", 10.0, 200), ("hold", 30.0, 200), ("leave", 5.0, 0)))
    run.server = server_samples(run.phases, {"batch1": 5.0})
    found = conclusions(run)
    assert [c.key for c in found] == ["memory", "batch_cpu", "failures", "generator"]
    for c in found:
        assert not re.search(r"vCard|MAM|talk|viewer|batch\d-join", c.text), c.text


# ---- message flooding ---------------------------------------------------------------------------------

LIVECHAT = [f"batch{b}-{step}" for b in (1, 2, 3) for step in ("join", "talk", "leave")]


def flooding_run(cpu: dict[str, float], batches: int = 3, in_flight_at: dict[str, int] | None = None) -> Run:
    """The livechat test's phases, 10 s each, 10 viewers: each talk sends 100 messages that make 10,000
    deliveries; the server at a constant CPU % per phase (0 where not given), its RSS at 60 MiB."""
    names = LIVECHAT[: 3 * batches]
    phases = spans(*[(name, 10.0, 0 if name.endswith("-leave") else 10) for name in names])
    for p in phases:
        p.waited, p.settled = 0.1, "quiet"
    snaps, messages, delivered = [], 0, 0
    for p in phases:
        truth = {"delivered": delivered, "in_flight": (in_flight_at or {}).get(p.name, 0), "lost": 0}
        snaps.append(Snapshot(p.start, p.name, {"message": NameStats(messages, 0, {5.0: messages})}, truth))
        if p.name.endswith("-talk"):
            messages, delivered = messages + 100, delivered + 10_000
    snaps.append(Snapshot(phases[-1].end or 0, None, {"message": NameStats(messages, 0, {5.0: messages})},
                          {"delivered": delivered, "in_flight": 0, "lost": 0}))  # fmt: skip
    return Run(phases=phases, server=server_samples(phases, cpu, rss=60 * MIB), snapshots=snaps,
               server_name="Prosody (pid 1)")  # fmt: skip


def talk(cpu: float, name: str) -> str:
    return (f"{name} (10.0 messages/s sent, 1,000 deliveries/s over 10.0 s; CPU mean {cpu:.0f} %, peak {cpu:.0f} %, "
            f"{cpu / 10:.2f} CPU-seconds)")  # fmt: skip


def phase_named(run: Run, name: str) -> PhaseSpan:
    return next(p for p in run.phases if p.name == name)


def test_flooding_with_talks_that_match() -> None:
    found = by_key(flooding_run({"batch1-talk": 50.0, "batch2-talk": 40.0, "batch3-talk": 38.0}))["flooding"]
    assert found.drawn
    assert found.text == (
        f"While the viewers talked, Prosody (pid 1) spent 500 µs of CPU per delivered message in "
        f"{talk(50, 'batch1-talk')}, 400 µs in {talk(40, 'batch2-talk')} and 380 µs in {talk(38, 'batch3-talk')}. "
        "The talks of batch 2 and batch 3 match, as the field test found: 400 and 380 µs per delivery, 5% apart "
        "(within 10%)."
    )
    assert found.values["batch2-talk.cpu_us_per_delivery"] == pytest.approx(400)
    assert found.values["batch3-talk.deliveries_per_second"] == pytest.approx(1000)
    assert found.values["batch1-talk.messages_per_second"] == pytest.approx(10)
    assert found.values["difference"] == pytest.approx(40 / 38 - 1) and found.values["match"] == 1.0


def differ(run: Run) -> str:
    """What the flooding conclusion says tells the talks apart (talks costing 400 and 300 µs per delivery)."""
    text = by_key(run)["flooding"].text
    assert "The talks of batch 2 and batch 3 differ: batch2-talk cost 33% more CPU per delivery than batch3-talk " \
        "(400 against 300 µs); " in text, text  # fmt: skip
    return text.split("(400 against 300 µs); ", 1)[1]


TALKS = {"batch1-talk": 50.0, "batch2-talk": 40.0, "batch3-talk": 30.0}


def test_flooding_with_talks_that_differ_for_no_reason_in_the_run() -> None:
    run = flooding_run(TALKS)
    assert differ(run) == (
        "nothing in the run explains it: neither waited for the server or began with deliveries in flight, the "
        "server was back near its idle level (0 %) before both, no more sessions were open than users, and its RSS "
        "fell by no more than 5% during either."
    )
    assert by_key(run)["flooding"].values["match"] == 0.0


def test_flooding_differs_after_a_backlog() -> None:
    run = flooding_run(TALKS, in_flight_at={"batch3-talk": 2_500})
    phase_named(run, "batch2-talk").waited = 4.0
    assert differ(run) == (
        "in the run, batch2-talk waited 4.0 s for the server after its planned end (a backlog); batch3-talk began "
        "with 2,500 deliveries in flight (a backlog)."
    )
    phase_named(run, "batch2-talk").settled = "server CPU 80 % (idle 0 %)"
    assert "after its planned end, and gave up (server CPU 80 % (idle 0 %)) (a backlog)" in differ(run)
    phase_named(run, "batch2-talk").waited = 0.9  # the shape's tick, not a backlog
    assert "batch2-talk waited" not in differ(run)


def test_flooding_differs_after_leftovers() -> None:
    run = flooding_run({**TALKS, "batch2-join": 50.0})
    assert differ(run) == (
        "in the run, Prosody (pid 1) was at 50 % CPU in the 2 s before batch2-talk began, above its idle level of 0 % "
        "(leftovers)."
    )
    run = flooding_run(TALKS)
    phase_named(run, "batch3-talk").connected_max = 14
    assert differ(run) == "in the run, up to 14 sessions were open during batch3-talk for 10 users (leftovers)."


def test_flooding_differs_after_a_garbage_collection() -> None:
    run = flooding_run(TALKS)
    talk3 = phase_named(run, "batch3-talk")
    for s in run.server:
        if talk3.start + 5 < s.t <= (talk3.end or 0):
            s.rss_bytes = 54 * MIB
    assert differ(run) == (
        "in the run, Prosody (pid 1)'s RSS fell by 10% during batch3-talk (from 60.0 to 54.0 MiB) and not during "
        "batch2-talk (a garbage collection)."
    )
    talk2 = phase_named(run, "batch2-talk")
    for s in run.server:
        if talk2.start + 5 < s.t <= (talk2.end or 0):
            s.rss_bytes = 54 * MIB
    # Both talks collected: nothing tells them apart.
    assert differ(run).endswith("and its RSS fell by more than 5% during both.")


def test_flooding_with_fewer_than_three_batches_gives_the_figures_only() -> None:
    found = by_key(flooding_run({"batch1-talk": 50.0}, batches=1))["flooding"]
    assert found.drawn and found.text.startswith(
        f"While the viewers talked, Prosody (pid 1) spent 500 µs of CPU per delivered message in "
        f"{talk(50, 'batch1-talk')}. "
    )
    assert found.text.endswith("Whether the talks of batch 2 and batch 3 match cannot be drawn, as the run had 1 batch "
                               "only (run the livechat test with --batches 3).")  # fmt: skip
    assert "match" not in found.values


def test_flooding_cannot_be_drawn_without_talks_server_or_truth() -> None:
    found = by_key(livechat_run({"batch1-join": 60.0}))["flooding"]
    assert not found.drawn and found.text == (
        "The server's CPU per delivered message cannot be drawn, as the run has no batchN-talk phase."
    )
    run = flooding_run(TALKS)
    run.server, run.server_note = [], "the server was not observed: no --xmpp-server-pid"
    assert by_key(run)["flooding"].text.endswith("as the server was not observed: no --xmpp-server-pid.")
    run = flooding_run(TALKS)
    for snap in run.snapshots:
        snap.truth = {}
    assert by_key(run)["flooding"].text == (
        "The server's CPU per delivered message cannot be drawn, as the run has no message truth for batch1-talk; "
        "the run has no message truth for batch2-talk; the run has no message truth for batch3-talk."
    )


def test_a_talk_the_server_did_not_work_for_is_not_compared() -> None:
    found = by_key(flooding_run({"batch1-talk": 50.0, "batch2-talk": 40.0}))["flooding"]
    assert found.text.endswith("Whether the talks of batch 2 and batch 3 match cannot be drawn, as Prosody (pid 1) "
                               "used no measurable CPU during batch3-talk.")  # fmt: skip
    assert "match" not in found.values


def test_a_talk_without_figures_is_said_and_not_compared() -> None:
    run = flooding_run(TALKS)
    talk3 = phase_named(run, "batch3-talk")
    run.server = [s for s in run.server if not talk3.start < s.t <= (talk3.end or 0) - 0.3]
    text = by_key(run)["flooding"].text
    assert " batch3-talk cannot be measured, as batch3-talk has 2 server samples, fewer than 3. " in text
    assert text.endswith("Whether the talks of batch 2 and batch 3 match cannot be drawn, as batch3-talk has 2 server "
                         "samples, fewer than 3.")  # fmt: skip


# ---- the Jitsi test -----------------------------------------------------------------------------------


def jitsi_run(busy: list[float], rss_noise: list[float] | None = None) -> Run:
    """Batches of 25 participants, 10 s each, then a 20 s hold and a 10 s leave. The server at 120 % CPU for the
    first ``busy[k]`` seconds of batch k, at 1 % otherwise; its RSS 20 MiB + 100 KiB per participant (plus
    ``rss_noise[k]`` MiB during batch k)."""
    plan = [(f"batch{k + 1}", 10.0, 25 * (k + 1)) for k in range(len(busy))]
    top = 25 * len(busy)
    phases = spans(*plan, ("hold", 20.0, top), ("leave", 10.0, 0))

    def at(t: float) -> tuple[int, float, float]:
        """(participants, CPU %, RSS) of the sample at ``t``: it covers the 0.2 s before it."""
        offset = round(t - T0, 3)
        k = math.ceil(offset / 10) - 1
        if 0 <= k < len(busy):
            cpu = 120.0 if offset - 10 * k <= busy[k] else 1.0
            users, noise = 25 * (k + 1), (rss_noise or [0.0] * len(busy))[k]
        else:
            cpu, users, noise = 1.0, top if offset <= 10 * len(busy) + 20 else 0, 0.0
        return users, cpu, 20 * MIB + users * 100 * KIB + noise * MIB

    seconds = 10 * len(busy) + 30
    server = [ServerSample(T0, None, 20 * MIB)]
    server += [ServerSample(T0 + 0.2 * k, *at(T0 + 0.2 * k)[1:]) for k in range(1, 5 * seconds + 1)]
    timeline = [Sample(t, None, at(t)[0], at(t)[0]) for t in (T0 + i + 0.5 for i in range(seconds))]
    return Run(phases=phases, server=server, timeline=timeline, server_name="Prosody (pid 1)")


def test_jitsi_cpu_per_batch_and_how_long_each_kept_the_server_busy() -> None:
    found = by_key(jitsi_run([1.0, 2.0, 3.0]))
    assert [c.key for c in conclusions(jitsi_run([1.0]))] == ["memory", "batch_cpu", "failures", "generator"]
    cpu = found["batch_cpu"]
    assert cpu.drawn
    assert cpu.text == (
        "Each batch of participants cost Prosody (pid 1) 1.29 to 3.67 CPU-seconds and kept it busy for 1.0 s to "
        "3.0 s from the batch's start (busy: its CPU, averaged over 2 s, more than 10 points above its idle level "
        "of 1 %): batch1 (to 25 participants) 1.29 CPU-seconds, busy 1.0 s; batch2 (to 50 participants) 2.48 "
        "CPU-seconds, busy 2.0 s; batch3 (to 75 participants) 3.67 CPU-seconds, busy 3.0 s."
    )
    assert cpu.values["idle_percent"] == pytest.approx(1.0)
    assert cpu.values["batch2.busy_seconds"] == pytest.approx(2.0) and cpu.values["batch2.busy_through"] == 0.0
    assert cpu.values["busy_seconds_max"] == pytest.approx(3.0)
    assert cpu.values["batch3.cpu_seconds"] == pytest.approx(3 * 1.2 + 7 * 0.01)


def test_a_batch_that_kept_the_server_busy_through_its_phase() -> None:
    cpu = by_key(jitsi_run([1.0, 10.0]))["batch_cpu"]
    assert "kept it busy for 1.0 s to the whole phase from the batch's start" in cpu.text
    assert cpu.text.endswith("batch2 (to 50 participants) 12.00 CPU-seconds, busy through the whole phase (10.0 s).")
    assert cpu.values["batch2.busy_through"] == 1.0 and cpu.values["batch2.busy_seconds"] == pytest.approx(10.0)
    every = by_key(jitsi_run([10.0, 10.0]))["batch_cpu"]
    assert "kept it busy through every batch phase from the batch's start" in every.text


def test_jitsi_ram_per_participant_linear_or_not() -> None:
    found = by_key(jitsi_run([1.0, 1.0, 1.0, 1.0]))["memory"]
    assert found.drawn and found.title == "Memory per participant"
    assert found.text == (
        "The memory of Prosody (pid 1) grows linearly with the participants, by 100.0 KiB per participant: RSS = "
        "20.0 MiB + 100.0 KiB × participants, R² 1.00, fitted to 60 samples from 25 to 100 participants on the way "
        "to the first peak."
    )
    assert found.values["bytes_per_participant"] == pytest.approx(100 * KIB) and found.values["linear"] == 1.0
    found = by_key(jitsi_run([1.0, 1.0, 1.0, 1.0], rss_noise=[0.0, 6.0, 0.0, 3.0]))["memory"]
    assert found.values["linear"] == 0.0 and found.values["r2"] < 0.9
    pattern = (r"The memory of Prosody \(pid 1\) grows by \d+\.\d KiB per participant, but not linearly in this run "
               r"\(R² under 0\.9\): RSS = .*, R² 0\.\d\d, fitted to 60 samples")  # fmt: skip
    assert re.match(pattern, found.text), found.text


def test_jitsi_failures_are_counted_in_participants() -> None:
    run = jitsi_run([1.0, 1.0])
    for s in run.timeline[15:]:
        s.failures = {"connect": 2}
    assert by_key(run)["failures"].text == (
        "Requests began to fail 16 s into the run, with 50 participants and 50 sessions open: the first failures were "
        "connect 2."
    )


def test_the_scenario_is_told_by_the_phase_names() -> None:
    def kind(*names: str) -> str:
        return analysis.scenario(Run(phases=spans(*[(n, 1.0, 1) for n in names])))

    assert kind("seed", "seed-leave", "batch1-join", "batch1-talk", "batch1-leave") == analysis.LIVECHAT
    assert kind("batch1", "batch2", "hold", "leave") == analysis.JITSI
    assert kind("batch1", "batch2") == analysis.JITSI  # stopped during its batches
    assert kind("warmup", "batch1", "hold") == analysis.GENERIC
    assert kind("ramp", "steady") == kind() == analysis.GENERIC
    assert [c.key for c in conclusions(Run(phases=spans(("ramp", 5.0, 1))))] == ["memory", "failures", "generator"]


def test_cpu_windows_idle_level_and_busy_time() -> None:
    phases = spans(("a", 4.0, 1), ("b", 4.0, 1))
    windows = analysis.CpuWindows(server_samples(phases, {"a": 50.0, "b": 4.0}))
    assert windows.idle == pytest.approx(4.0)
    assert windows.mean(T0) == pytest.approx(50.0) and windows.mean(T0 + 3.0) == pytest.approx(27.0)
    assert windows.mean(T0 + 6.5) is None  # past the last sample
    # Back within 10 points of idle (14 %) with the window from 3.6 s: two samples at 50 %, eight at 4 %.
    assert windows.busy_for(T0, T0 + 8) == pytest.approx(3.6)
    assert windows.busy_for(T0, T0 + 5) is None
    assert analysis.CpuWindows([]).idle is None


# ---- memory per session -------------------------------------------------------------------------------


def ramp_run(rss_of: object, sessions: list[int]) -> Run:
    """One timeline sample a second with the sessions given; RSS from ``rss_of(sessions, i)``."""
    timeline = [Sample(T0 + i, "p", n, n) for i, n in enumerate(sessions)]
    server = []
    for i, n in enumerate(sessions):
        server += [ServerSample(T0 + i + 0.2 * k, 1.0, rss_of(n, i)) for k in range(5)]  # type: ignore[operator]
    return Run(phases=spans(("p", float(len(sessions)), max(sessions))), timeline=timeline, server=server,
               server_name="Prosody (pid 1)")  # fmt: skip


def test_memory_per_session_from_the_ramp_only() -> None:
    # 10 MiB + 50 KiB per session on the way up; the memory stays when the sessions leave.
    up = [0, 0, 10, 20, 30, 40, 50, 50, 50]
    sessions = up + [25, 0, 0]
    peak_rss = 10 * MIB + 50 * 50 * KIB
    run = ramp_run(lambda n, i: 10 * MIB + n * 50 * KIB if i < len(up) else peak_rss, sessions)
    found = by_key(run)["memory"]
    assert found.drawn
    assert found.values["bytes_per_session"] == pytest.approx(50 * KIB)
    assert found.values["r2"] == pytest.approx(1.0)
    assert found.values["points"] == len(up)
    assert found.text == (
        "The memory of Prosody (pid 1) grows by 50.0 KiB per connected session: RSS = 10.0 MiB + 50.0 KiB × "
        "sessions, R² 1.00, fitted to 9 samples from 0 to 50 sessions on the way to the first peak."
    )


def test_memory_loosely_following_the_sessions_is_called_rough() -> None:
    noise = [0, 3, 1, 4, 0, 2, 5, 1, 3, 0]
    run = ramp_run(lambda n, i: 10 * MIB + noise[i] * MIB + n * KIB, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    found = by_key(run)["memory"]
    assert found.drawn and found.values["r2"] < 0.5
    assert "take the figure as a rough one" in found.text


def test_memory_that_never_moved() -> None:
    found = by_key(ramp_run(lambda n, i: 12 * MIB, [0, 2, 4, 6, 8, 10]))["memory"]
    assert found.drawn and "did not change with the sessions open" in found.text and "12.0 MiB" in found.text


def test_memory_needs_enough_points_and_session_counts() -> None:
    found = by_key(ramp_run(lambda n, i: 10 * MIB + n * KIB, [0, 5, 5, 5, 5, 5]))["memory"]
    assert not found.drawn
    assert found.text == (
        "The memory per connected session cannot be drawn, as the ramp to the peak has 6 samples over 2 distinct "
        "session counts, fewer than the 5 samples over 3 counts a line needs."
    )
    found = by_key(ramp_run(lambda n, i: 10 * MIB + n * KIB, [0, 1, 2]))["memory"]
    assert not found.drawn and "has 3 samples over 3 distinct session counts" in found.text


def test_memory_pairs_only_samples_near_in_time() -> None:
    run = ramp_run(lambda n, i: 10 * MIB + n * KIB, [0, 1, 2, 3, 4, 5, 6])
    run.server = [s for s in run.server if s.t < T0 + 2]  # the server stopped being sampled
    assert analysis.pair_rss(run.timeline, run.server) == [(0, 10 * MIB), (1, 10 * MIB + KIB), (2, 10 * MIB + KIB),
                                                           (3, 10 * MIB + KIB)]  # fmt: skip
    assert not by_key(run)["memory"].drawn


def test_memory_of_a_server_that_was_not_fresh_says_so() -> None:
    up = [0, 10, 20, 30, 40, 50]
    run = ramp_run(lambda n, i: 60 * MIB + n * 5 * KIB, up)
    for k, s in enumerate(run.server):
        s.cpu_seconds = 250.0 + 0.002 * k  # an earlier run's 250 CPU-seconds
    found = by_key(run)["memory"]
    assert found.drawn and found.text == (
        "The memory of Prosody (pid 1) grows by 5.0 KiB per connected session: RSS = 60.0 MiB + 5.0 KiB × sessions, "
        "R² 1.00, fitted to 6 samples from 0 to 50 sessions on the way to the first peak. Prosody (pid 1) was not "
        "fresh: it had used 250.0 CPU-seconds before the run and its RSS was 60.0 MiB at the start; memory freed by "
        "that earlier work is reused before RSS grows, so the figure per session is low. Start the server afresh "
        "before measuring it (the lab: locust-xmpp lab down; locust-xmpp lab up)."
    )
    assert found.values["fresh"] == 0.0 and found.values["cpu_seconds_before"] == pytest.approx(250.0)
    assert found.values["rss_at_start_bytes"] == 60 * MIB
    # Said even when the line cannot be drawn, and per participant in the Jitsi test.
    run.timeline = run.timeline[:2]
    not_drawn = by_key(run)["memory"]
    assert not not_drawn.drawn and not_drawn.text.endswith(
        "so the figure per session is low. Start the server afresh before measuring it (the lab: locust-xmpp lab "
        "down; locust-xmpp lab up)."
    )
    jitsi = jitsi_run([1.0, 1.0, 1.0])
    for s in jitsi.server:
        s.cpu_seconds = 30.0
    assert "so the figure per participant is low" in by_key(jitsi)["memory"].text


def test_a_fresh_server_is_not_remarked_on() -> None:
    run = ramp_run(lambda n, i: 17 * MIB + n * 5 * KIB, [0, 10, 20, 30, 40, 50])
    for s in run.server:
        s.cpu_seconds = 3.0  # a lab ejabberd just started
    found = by_key(run)["memory"]
    assert "fresh" not in found.text and found.values["fresh"] == 1.0
    for s in run.server:
        s.cpu_seconds = None  # not known (older files): nothing said, no figure
    assert "fresh" not in by_key(run)["memory"].values


# ---- where failures began -----------------------------------------------------------------------------


def test_where_failures_began() -> None:
    phases = spans(("batch1", 10.0, 100), ("batch5", 10.0, 500))
    timeline = []
    for i in range(20):
        failures = {} if i < 14 else {"connect": 3 * (i - 13), "stream": i - 13}
        timeline.append(Sample(T0 + i, "batch1" if i < 10 else "batch5", 40 * i, 38 * i, {}, failures))
    found = by_key(Run(phases=phases, timeline=timeline))["failures"]
    assert found.drawn
    assert found.values == {"t": 14.0, "users": 560.0, "sessions": 532.0, "failures": 4.0}
    # batchN phases: the Jitsi test, whose users are participants (the field saw HTTP 500s in its fifth batch).
    assert found.text == (
        "Requests began to fail 14 s into the run in phase batch5, with 560 participants and 532 sessions open: the "
        "first failures were connect 3, stream 1."
    )


def test_no_failure_gives_the_load_reached_and_the_losses() -> None:
    timeline = [Sample(T0 + i, None, min(i, 6), min(i, 5), {"message": i}, {}, {"lost": 0}) for i in range(10)]
    found = by_key(Run(timeline=timeline))["failures"]
    assert found.drawn
    assert found.text == ("No request failed: the server answered everything at up to 6 users and 5 sessions open, "
                          "so the failure point lies beyond.")  # fmt: skip
    timeline[-1].truth["lost"] = 4
    assert by_key(Run(timeline=timeline))["failures"].text.endswith("Yet 4 message deliveries were lost.")
    # Only the deliveries judged lost: those still in flight (a run that ended before judging them) apart.
    timeline[-1].truth.update(lost=0, in_flight=7)
    found = by_key(Run(timeline=timeline))["failures"]
    assert found.text.endswith("so the failure point lies beyond. 7 more were still in flight at the last sample, "
                               "neither delivered nor judged lost.")  # fmt: skip
    timeline[-1].truth.update(lost=4, in_flight=7)
    found = by_key(Run(timeline=timeline))["failures"]
    assert found.text.endswith(" Yet 4 message deliveries were lost. 7 more were still in flight at the last sample, "
                               "neither delivered nor judged lost.")  # fmt: skip
    assert (found.values["lost"], found.values["in_flight"]) == (4, 7)


def test_no_timeline() -> None:
    found = by_key(Run())
    assert not any(c.drawn for c in found.values())
    assert found["failures"].text == "Where failures began cannot be drawn, as the run has no timeline samples."
    assert "the server was not observed" in found["memory"].text


def test_the_generator_s_own_delay_phase_by_phase() -> None:
    phases = spans(("batch1", 5.0, 10), ("batch2", 5.0, 20))
    lags = [0.01, 0.02, 0.03, 0.05, 0.01, 0.02, 0.7, 1.2, 0.04, 0.01]
    timeline = [Sample(T0 + i + 0.5, "batch1" if i < 5 else "batch2", 10, 10, lag=lag) for i, lag in enumerate(lags)]
    run = Run(phases=phases, timeline=timeline)
    assert [r.generator_lag for r in phase_rows(run)] == [0.05, 1.2]
    found = by_key(run)["generator"]
    assert found.drawn and found.values == {"largest": 1.2, "phases_behind": 1.0}
    assert found.text == (
        "The generator ran behind its schedule: its event loop was up to 1.2 s late, in batch2 (1.2 s). The "
        "latencies measured there include up to that much of its own delay, not the server's; more workers, or "
        "fewer users per worker, remove it."
    )
    for s in timeline:
        s.lag = min(s.lag or 0.0, 0.05)
    found = by_key(run)["generator"]
    assert found.text == (
        "The generator kept to its schedule: its event loop was never more than 0.05 s late, so no latency "
        "measured includes more of its own delay than that."
    )
    for s in timeline:
        s.lag = None  # files of an older run, or Prometheus
    found = by_key(run)["generator"]
    assert not found.drawn and found.text.startswith("The generator's own delay cannot be drawn, as the run recorded")


def test_the_report_counts_the_generator_behind_where_the_run_said_so() -> None:
    from xmpp_user.run.lag import LIMIT

    assert analysis.GENERATOR_BEHIND == LIMIT
