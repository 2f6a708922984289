"""Arbitration rules, one at a time, on the sample policy (pure: no store, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from gateway.core.caps import keep_for
from gateway.core.decide import Context, HeldClaim, decide_arrival, decide_release
from gateway.core.trace import render
from gateway.policy.loader import load_policy
from gateway.values.claims import Claim
from gateway.values.decisions import Decision
from gateway.values.domain import Category, Channel, Outcome, Platform, PushProvider, Reason
from gateway.values.profiles import DeviceToken, Rfm, UserProfile, WeChat
from gateway.values.state import Hold, MarkDedup, Reserve, SentEntry, Unhold, UserState, apply_mutations
from tests.conftest import POLICIES

POLICY = load_policy(POLICIES)
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def local(hour: int, minute: int = 0, day: int = 11, tz: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=tz).astimezone(UTC)


def user(tz: str = "Asia/Shanghai", tier: str = "loyal", **changes: object) -> UserProfile:
    now = local(10)
    rfm = {
        "loyal": Rfm(now - timedelta(days=10), 4, 50_000),
        "champion": Rfm(now - timedelta(days=3), 8, 500_000),
        "at_risk": Rfm(now - timedelta(days=60), 3, 50_000),
        "new": Rfm(),
    }[tier]
    base = UserProfile(
        user_id="u-1",
        wechat=WeChat("oAbCdEfGhIjKlMnOpQrStUvWxYz1", following=True),
        phone="+8613800138000",
        device_tokens=(DeviceToken("tok", Platform.ANDROID, PushProvider.FCM),),
        timezone=tz,
        rfm=rfm,
    )
    return msgspec.structs.replace(base, **changes)


def claim(scenario: str, bu: str = "growth", **changes: object) -> Claim:
    category = POLICY.scenarios[scenario].category
    base = Claim(
        bu=bu,
        request_id="r",
        user_id="u-1",
        scenario=scenario,
        category=category,
        params={},
        content=None,
        campaign_id="c-1" if category is Category.MARKETING else "",
        dedup_key="",
        not_before=None,
        deadline=None,
        priority=50,
    )
    return msgspec.structs.replace(base, **changes)


def ctx(now: datetime, profile: UserProfile | None = None, state: UserState | None = None) -> Context:
    return Context(POLICY, profile if profile is not None else user(), state or UserState(), (), now)


def apply(state: UserState, decision: Decision, now: datetime) -> UserState:
    return apply_mutations(state, decision.mutations, now, keep_for(POLICY))


def sent(
    n: int, at: datetime, category: Category = Category.REMINDER, channel: Channel = Channel.APP_PUSH
) -> tuple[SentEntry, ...]:
    return tuple(SentEntry(f"m_old{i}", at, category, channel, "growth") for i in range(n))


def test_a_reminder_by_day_is_accepted_and_reserves_its_channel() -> None:
    now = local(10)
    decision = decide_arrival(claim("price.drop"), "m_1", ctx(now))
    assert decision.outcome is Outcome.ACCEPTED
    assert decision.plan == (Channel.APP_PUSH,)  # WECHAT_CS needs an open window
    [reserve] = [m for m in decision.mutations if isinstance(m, Reserve)]
    assert reserve.entry == SentEntry("m_1", now, Category.REMINDER, Channel.APP_PUSH, "growth")
    assert any("cap reminder.daily (day): 0 of 2 used" in line for line in render(decision.trace))


def test_a_reminder_at_night_is_deferred_to_the_morning_with_spread() -> None:
    decision = decide_arrival(claim("price.drop"), "m_1", ctx(local(23)))
    assert decision.outcome is Outcome.SCHEDULED
    assert decision.scheduled_at is not None
    morning = local(8, day=12)
    assert morning <= decision.scheduled_at < morning + timedelta(minutes=20)
    assert Hold("m_1", decision.scheduled_at) in decision.mutations


def test_the_spread_is_stable_per_user_and_differs_between_users() -> None:
    first = decide_arrival(claim("price.drop"), "m_1", ctx(local(23)))
    again = decide_arrival(claim("price.drop"), "m_2", ctx(local(23, 30)))
    other = decide_arrival(claim("price.drop", user_id="u-other"), "m_3", ctx(local(23)))
    assert first.scheduled_at == again.scheduled_at
    assert first.scheduled_at != other.scheduled_at


def test_a_deferral_past_the_deadline_expires() -> None:
    decision = decide_arrival(claim("price.drop", deadline=local(7, day=12)), "m_1", ctx(local(23)))
    assert (decision.outcome, decision.reason) == (Outcome.SUPPRESSED, Reason.EXPIRED)


def test_quiet_hours_follow_the_users_time_zone() -> None:
    # 23:00 in Shanghai is 16:00 in Berlin: not quiet there.
    decision = decide_arrival(claim("price.drop"), "m_1", ctx(local(23), user(tz="Europe/Berlin")))
    assert decision.outcome is Outcome.ACCEPTED


def test_marketing_at_night_is_dropped() -> None:
    decision = decide_arrival(claim("new.arrivals", params={"category_name": "x"}), "m_1", ctx(local(22)))
    assert (decision.outcome, decision.reason) == (Outcome.SUPPRESSED, Reason.QUIET_HOURS)


def test_marketing_waits_for_the_next_window() -> None:
    decision = decide_arrival(claim("new.arrivals"), "m_1", ctx(local(10)))
    assert decision.outcome is Outcome.SCHEDULED
    assert decision.scheduled_at is not None
    assert local(12) <= decision.scheduled_at < local(12, 20)


def test_inside_an_open_window_marketing_waits_the_collection_delay() -> None:
    decision = decide_arrival(claim("new.arrivals"), "m_1", ctx(local(12, 30)))
    assert decision.scheduled_at == local(12, 35)


def test_a_window_is_clipped_by_quiet_hours() -> None:
    # Marketing's quiet hours (21:30-09:00) cut 18:00-22:00 to 21:30 and 07:30-09:30
    # to 09:00-09:30: at 21:28 the collection delay would outlast the window.
    decision = decide_arrival(claim("new.arrivals"), "m_1", ctx(local(21, 28)))
    assert decision.scheduled_at is not None
    assert local(9, day=12) <= decision.scheduled_at < local(9, 15, day=12)


def test_daily_cap_by_tier() -> None:
    now = local(10)
    state = UserState(sent=sent(2, local(8)))
    capped = decide_arrival(claim("price.drop"), "m_1", ctx(now, state=state))
    assert (capped.outcome, capped.reason) == (Outcome.SUPPRESSED, Reason.FREQUENCY_CAP)
    assert capped.detail == "cap reminder.daily (day): 2 of 2 used"
    champion = decide_arrival(claim("price.drop"), "m_1", ctx(now, user(tier="champion"), state))
    assert champion.outcome is Outcome.ACCEPTED


def test_calendar_day_is_the_users_day() -> None:
    # Two reminders at 00:30 today in Shanghai: today's budget is spent there...
    state = UserState(sent=sent(2, local(0, 30)))
    now = local(18)  # 11:00 in Berlin
    assert decide_arrival(claim("price.drop"), "m_1", ctx(now, state=state)).reason is Reason.FREQUENCY_CAP
    # ...but 00:30 in Shanghai was 17:30 yesterday in Berlin.
    berlin = decide_arrival(claim("price.drop"), "m_1", ctx(now, user(tz="Europe/Berlin"), state))
    assert berlin.outcome is Outcome.ACCEPTED


def test_rolling_window_counts_the_last_seven_days() -> None:
    state = UserState(sent=sent(6, local(10, day=5)))
    assert decide_arrival(claim("price.drop"), "m_1", ctx(local(9, day=12), state=state)).reason is Reason.FREQUENCY_CAP
    assert decide_arrival(claim("price.drop"), "m_1", ctx(local(11, day=12), state=state)).outcome is Outcome.ACCEPTED


def test_a_spent_channel_cap_moves_to_the_next_channel() -> None:
    # coupon.flash for an SMS-only user: marketing allows 2 SMS a month.
    sms_only = user(wechat=None, device_tokens=())
    state = UserState(sent=sent(2, local(10, day=2), Category.MARKETING, Channel.SMS))
    held = HeldClaim("m_1", claim("coupon.flash", bu="marketing"), local(11))
    [(_, decision)] = decide_release([held], ctx(local(12, 30), sms_only, state))
    assert decision.outcome is Outcome.SCHEDULED  # carried: its deadline allows more windows
    assert "marketing.monthly-sms (month): 2 of 2 used" in decision.detail
    short = HeldClaim("m_1", claim("coupon.flash", bu="marketing", deadline=local(17)), local(11))
    [(_, decision)] = decide_release([short], ctx(local(12, 30), sms_only, state))
    assert decision.reason is Reason.FREQUENCY_CAP  # no competitor took it: the cap did
    with_push = user(wechat=None)  # SMS spent, but app push is free and first anyway
    [(_, decision)] = decide_release([held], ctx(local(12, 30), with_push, state))
    assert decision.outcome is Outcome.ACCEPTED and decision.plan[0] is Channel.APP_PUSH


def test_dedup() -> None:
    decision = decide_arrival(claim("price.drop", dedup_key="item-9"), "m_1", ctx(local(10)))
    assert MarkDedup("growth", "item-9", timedelta(hours=24)) in decision.mutations
    again = decide_arrival(
        claim("price.drop", dedup_key="item-9"), "m_2", ctx(local(10), state=apply(UserState(), decision, local(10)))
    )
    assert (again.outcome, again.reason) == (Outcome.SUPPRESSED, Reason.DUPLICATE)
    # the window as policy files write it, not timedelta's "1 day, 0:00:00"
    assert again.detail == "dedup_key 'item-9' of growth was seen within 24h"


def test_basic_ignores_quiet_hours_and_caps_but_not_the_safety_cap() -> None:
    night = decide_arrival(claim("order.shipped", bu="order"), "m_1", ctx(local(3)))
    assert night.outcome is Outcome.ACCEPTED
    busy = UserState(sent=sent(10, local(2, 50), Category.REMINDER))
    assert (
        decide_arrival(claim("order.shipped", bu="order"), "m_1", ctx(local(3), state=busy)).outcome is Outcome.ACCEPTED
    )
    loop = UserState(sent=sent(60, local(2, 30), Category.BASIC, Channel.WECHAT_TEMPLATE))
    capped = decide_arrival(claim("order.shipped", bu="order"), "m_1", ctx(local(3), state=loop))
    assert (capped.outcome, capped.reason) == (Outcome.SUPPRESSED, Reason.SAFETY_CAP)


def test_three_units_compete_and_tier_fit_decides() -> None:
    now = local(12, 35)
    held = [
        HeldClaim("m_order", claim("coupon.flash", bu="order"), local(11)),  # weight 100, fit 0.5 for loyal
        HeldClaim("m_growth", claim("new.arrivals", bu="growth"), local(11, 1)),  # weight 60, fit 1
        HeldClaim("m_mkt", claim("double11.presale", bu="marketing"), local(11, 2)),  # weight 40, fit 1
    ]
    verdicts = dict(decide_release(held, ctx(now)))
    assert verdicts["m_growth"].outcome is Outcome.ACCEPTED
    for loser in ("m_order", "m_mkt"):
        assert verdicts[loser].outcome is Outcome.SCHEDULED  # carried to the evening window
        assert verdicts[loser].scheduled_at is not None and local(18) <= verdicts[loser].scheduled_at < local(18, 20)
        assert "lost to new.arrivals of growth (score 60 >" in verdicts[loser].detail


def test_a_loser_without_time_left_loses_for_good() -> None:
    held = [
        HeldClaim("m_growth", claim("new.arrivals"), local(11)),
        HeldClaim("m_mkt", claim("double11.presale", bu="marketing", deadline=local(15)), local(11)),
    ]
    verdicts = dict(decide_release(held, ctx(local(12, 35))))
    loser = verdicts["m_mkt"]
    assert (loser.outcome, loser.reason) == (Outcome.SUPPRESSED, Reason.LOST_ARBITRATION)
    assert "new.arrivals" in loser.detail
    assert Unhold("m_mkt") in loser.mutations


def test_priority_breaks_a_tie_between_equal_units() -> None:
    held = [
        HeldClaim("m_low", claim("double11.presale", bu="marketing", priority=10), local(11)),
        HeldClaim("m_high", claim("new.arrivals", bu="marketing", priority=90), local(11, 5)),
    ]
    verdicts = dict(decide_release(held, ctx(local(12, 35))))
    assert verdicts["m_high"].outcome is Outcome.ACCEPTED


def test_a_champion_gets_two_marketing_messages_a_day() -> None:
    held = [
        HeldClaim("m_a", claim("new.arrivals"), local(11)),
        HeldClaim("m_b", claim("double11.presale", bu="marketing"), local(11)),
        HeldClaim("m_c", claim("coupon.flash", bu="marketing"), local(11)),
    ]
    verdicts = dict(decide_release(held, ctx(local(12, 35), user(tier="champion"))))
    assert sorted(m for m, d in verdicts.items() if d.outcome is Outcome.ACCEPTED) == ["m_a", "m_b"]


def test_the_same_inputs_give_the_same_decision() -> None:
    c, context = claim("price.drop", dedup_key="k"), ctx(local(23))
    assert decide_arrival(c, "m_1", context) == decide_arrival(c, "m_1", context)


def test_release_rechecks_kill_switch_and_opt_out() -> None:
    from gateway.values.profiles import OptOut

    opted = user(opt_outs=(OptOut(Category.REMINDER, None, local(1)),))
    [(_, decision)] = decide_release([HeldClaim("m_1", claim("price.drop"), local(1))], ctx(local(8, 30), opted))
    assert decision.reason is Reason.OPTED_OUT and Unhold("m_1") in decision.mutations


@pytest.mark.parametrize("hour", [0, 3, 7, 22, 23])
def test_deferred_releases_never_land_in_quiet_hours(hour: int) -> None:
    decision = decide_arrival(claim("price.drop"), "m_1", ctx(local(hour)))
    assert decision.scheduled_at is not None
    release_local = decision.scheduled_at.astimezone(SHANGHAI)
    assert 8 <= release_local.hour < 22
