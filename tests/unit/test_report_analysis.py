"""The report's arithmetic on synthetic runs: per-phase figures and the conclusions, edge cases included."""

from __future__ import annotations

import math

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
from xmpp_user.observe.model import NameStats, PhaseSpan, Run, Sample, ServerSample, Snapshot

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


def test_a_jitsi_run_has_no_join_batches_to_compare() -> None:
    run = Run(phases=spans(("batch1", 10.0, 100), ("batch2", 10.0, 200), ("hold", 30.0, 200), ("leave", 5.0, 0)))
    run.server = server_samples(run.phases, {"batch1": 5.0})
    found = by_key(run)
    assert not found["vcards"].drawn and "the run has no phase batch1-join" in found["vcards"].text


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
    assert found.text == (
        "Requests began to fail 14 s into the run in phase batch5, with 560 users and 532 sessions open: the first "
        "failures were connect 3, stream 1."
    )


def test_no_failure_gives_the_load_reached_and_the_losses() -> None:
    timeline = [Sample(T0 + i, None, min(i, 6), min(i, 5), {"message": i}, {}, {"lost": 0}) for i in range(10)]
    found = by_key(Run(timeline=timeline))["failures"]
    assert found.drawn
    assert found.text == ("No request failed: the server answered everything at up to 6 users and 5 sessions open, "
                          "so the failure point lies beyond.")  # fmt: skip
    timeline[-1].truth["lost"] = 4
    assert by_key(Run(timeline=timeline))["failures"].text.endswith("Yet 4 message deliveries were lost.")


def test_no_timeline() -> None:
    found = by_key(Run())
    assert not any(c.drawn for c in found.values())
    assert found["failures"].text == "Where failures began cannot be drawn, as the run has no timeline samples."
    assert "the server was not observed" in found["memory"].text
