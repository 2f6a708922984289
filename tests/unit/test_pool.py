"""Competing claims as a pool per user, kill-switch keeps near a deadline, and explain's
predictions (pure, on the sample policy)."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from gateway.core.decide import Context, HeldClaim, decide_arrival, decide_release
from gateway.core.explain import explain_arrival
from gateway.core.trace import render
from gateway.values.domain import Category, Channel, Outcome, Reason
from gateway.values.records import KillSwitch, ScopeKind
from gateway.values.state import Held, Hold, SentEntry, UserState
from tests.unit.test_decide import POLICY, apply, claim, ctx, local, user


def test_claims_arriving_in_an_open_window_are_decided_together_by_score() -> None:
    # Four marketing claims for one user while the 12:00-14:00 window is open, in the
    # worst order: the lowest score first. The first starts the user's collection
    # period; the others join it, whatever their arrival time.
    arrivals = [
        ("m_26", claim("double11.presale", bu="marketing", priority=15), local(12, 30)),  # 40 x 0.65 = 26
        ("m_30", claim("coupon.flash", bu="marketing", priority=25), local(12, 31)),  # 40 x 0.75 = 30
        ("m_50", claim("new.arrivals", bu="growth", priority=33), local(12, 33)),  # 60 x 0.83 = 49.8
        ("m_45", claim("new.arrivals", bu="growth", priority=25), local(12, 34)),  # 60 x 0.75 = 45
    ]
    state = UserState()
    held = []
    for message_id, item, at in arrivals:
        decision = decide_arrival(item, message_id, ctx(at, state=state))
        assert decision.outcome is Outcome.SCHEDULED
        assert decision.scheduled_at == local(12, 35), message_id  # all in the first claim's pool
        assert Hold(message_id, local(12, 35), pooled=True) in decision.mutations
        state = apply(state, decision, at)
        held.append(HeldClaim(message_id, item, at, pooled=True))
    verdicts = dict(decide_release(held, ctx(local(12, 35), state=state)))
    # A loyal user gets one marketing message a day: the best score wins it.
    assert [m for m, d in verdicts.items() if d.outcome is Outcome.ACCEPTED] == ["m_50"]
    for loser in ("m_26", "m_30", "m_45"):
        assert verdicts[loser].outcome is Outcome.SCHEDULED
        assert "lost to new.arrivals of growth (score 49.8 >" in verdicts[loser].detail


def test_a_claim_after_the_pool_was_decided_starts_the_next_pool() -> None:
    first = decide_arrival(claim("new.arrivals"), "m_1", ctx(local(12, 30)))
    state = apply(UserState(), first, local(12, 30))
    # Released at 12:35 (its hold gone, the winner's reservation taken):
    [(_, won)] = decide_release(
        [HeldClaim("m_1", claim("new.arrivals"), local(12, 30), True)], ctx(local(12, 35), state=state)
    )
    state = apply(state, won, local(12, 35))
    later = decide_arrival(claim("double11.presale", bu="marketing"), "m_2", ctx(local(12, 40), state=state))
    assert later.scheduled_at == local(12, 45)  # a new collection period, not the old pool


def test_claims_before_a_window_share_the_opening_time() -> None:
    one = decide_arrival(claim("new.arrivals"), "m_1", ctx(local(10)))
    state = apply(UserState(), one, local(10))
    two = decide_arrival(claim("double11.presale", bu="marketing"), "m_2", ctx(local(11, 50), state=state))
    assert one.scheduled_at == two.scheduled_at
    assert one.scheduled_at is not None and local(12) <= one.scheduled_at < local(12, 20)


def test_carried_claims_do_not_pull_new_claims_to_the_next_window() -> None:
    # A claim carried to the evening window is in the pool for 18:xx; a claim arriving
    # at 12:40 still competes in the open window.
    state = UserState(held=(Held("m_old", local(18, 5), True),))
    decision = decide_arrival(claim("new.arrivals"), "m_2", ctx(local(12, 40), state=state))
    assert decision.scheduled_at == local(12, 45)


def test_a_cap_that_blocks_several_channels_is_named_once() -> None:
    spent = UserState(sent=(SentEntry("m_0", local(9, 30), Category.MARKETING, Channel.APP_PUSH, "growth"),))
    held = HeldClaim("m_1", claim("new.arrivals", deadline=local(14)), local(11), True)
    [(_, decision)] = decide_release([held], ctx(local(12, 35), state=spent))
    assert (decision.outcome, decision.reason) == (Outcome.SUPPRESSED, Reason.FREQUENCY_CAP)
    assert decision.detail.count("marketing.daily") == 1


def test_a_kept_claim_with_little_time_left_is_looked_at_again_before_its_deadline() -> None:
    switch = KillSwitch("ks_1", ScopeKind.CATEGORY, "reminder", "bad copy", "sre", local(8))
    deadline = local(8) + timedelta(seconds=30)
    item = HeldClaim("m_1", claim("price.drop", deadline=deadline), local(7))
    [(_, kept)] = decide_release([item], Context(POLICY, user(), UserState(), (switch,), local(8)))
    # Thirty seconds left: not ended at once, but looked at again just before the deadline.
    assert kept.outcome is Outcome.SCHEDULED
    assert kept.scheduled_at == deadline - timedelta(seconds=1)
    cleared = ctx(deadline - timedelta(seconds=1))
    [(_, sent)] = decide_release([item], cleared)
    assert sent.outcome is Outcome.ACCEPTED


def test_explain_shows_caps_rivals_and_what_the_release_would_do() -> None:
    now = local(12, 40)
    spent = UserState(sent=(SentEntry("m_0", local(9, 30), Category.MARKETING, Channel.APP_PUSH, "growth"),))
    rival = HeldClaim("m_rival", claim("double11.presale", bu="marketing"), local(12, 39), True)
    state = msgspec.structs.replace(spent, held=(Held("m_rival", local(12, 44), True),))
    decision = explain_arrival(claim("new.arrivals", deadline=local(13)), ctx(now, state=state), [rival])
    lines = render(decision.trace)
    assert "user's RFM tier: loyal" in lines
    assert "cap marketing.daily (day): 1 of 1 used" in lines
    assert any(line.startswith("held for the user: m_rival double11.presale of marketing (score 40") for line in lines)
    # It would join the rival's pool at 12:44 and find the day's budget spent, with no
    # window left before its 13:00 deadline.
    assert decision.outcome is Outcome.SCHEDULED
    assert "when released: SUPPRESSED/FREQUENCY_CAP" in decision.detail
    assert any(line.startswith("predicted at 2026-11-11 12:44 Asia/Shanghai: SUPPRESSED") for line in lines)


def test_explain_of_an_immediate_decision_predicts_nothing() -> None:
    decision = explain_arrival(claim("price.drop"), ctx(local(10), user()), [])
    assert decision.outcome is Outcome.ACCEPTED
    assert not any(line.startswith("predicted") for line in render(decision.trace))
    assert POLICY.version
