"""Pure rules: RFM tiers, the CS window, routing order, durations, the rate limiter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.profile_rules import compute_tier, cs_window
from gateway.core.ratelimit import RateLimiter
from gateway.core.route import Skip, route
from gateway.durations import format_duration, parse_duration
from gateway.policy.loader import load_policy
from gateway.values.domain import Category, Channel, InteractionKind, Platform, PushProvider
from gateway.values.profiles import DeviceToken, Interaction, Rfm, UserProfile, WeChat
from tests.conftest import POLICIES

POLICY = load_policy(POLICIES)
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rfm", "tier"),
    [
        (Rfm(), "new"),
        (Rfm(NOW - timedelta(days=3), 8, 400_000), "champion"),
        (Rfm(NOW - timedelta(days=3), 8, 100_000), "loyal"),  # not enough spend for champion
        (Rfm(NOW - timedelta(days=20), 1, 5_000), "potential"),
        (Rfm(NOW - timedelta(days=60), 3, 50_000), "at_risk"),
        (Rfm(NOW - timedelta(days=60), 1, 5_000), "hibernating"),
        (Rfm(NOW - timedelta(days=400), 0, 0), "hibernating"),
    ],
)
def test_rfm_tiers(rfm: Rfm, tier: str) -> None:
    assert compute_tier(rfm, POLICY.tiers, NOW) == tier


def test_cs_window_prefers_the_larger_quota_then_the_longer_window() -> None:
    windows = POLICY.channels[Channel.WECHAT_CS].cs_windows
    assert cs_window([], windows, NOW) is None
    click = Interaction(InteractionKind.MENU_CLICK, NOW - timedelta(seconds=30))
    state = cs_window([click], windows, NOW)
    assert state is not None and state.quota == 3 and state.open_until == click.at + timedelta(minutes=1)
    assert cs_window([click], windows, NOW + timedelta(minutes=1)) is None
    message = Interaction(InteractionKind.USER_MESSAGE, NOW - timedelta(hours=47))
    state = cs_window([click, message], windows, NOW)
    assert state is not None and state.quota == 5


def profile(**changes: object) -> UserProfile:
    return UserProfile(user_id="u", **changes)  # type: ignore[arg-type]


def test_route_puts_free_channels_first_and_explains_skips() -> None:
    user = profile(
        wechat=WeChat("oAbCdEfGhIjKlMnOpQrStUvWxYz1", following=True),
        phone="+8613800138000",
        device_tokens=(DeviceToken("t", Platform.ANDROID, PushProvider.FCM),),
    )
    plan = route("order.shipped", Category.BASIC, user, POLICY, [], NOW)
    assert plan.plan == (Channel.WECHAT_TEMPLATE, Channel.APP_PUSH, Channel.SMS)
    # account.security lists SMS first; free APP_PUSH moves ahead (keep_order is false).
    plan = route("account.security", Category.BASIC, user, POLICY, [], NOW)
    assert plan.plan == (Channel.APP_PUSH, Channel.SMS)
    assert plan.skipped == ((Channel.EMAIL, Skip.NO_CONTACT),)


def test_cs_channel_needs_an_open_window() -> None:
    user = profile(wechat=WeChat("oAbCdEfGhIjKlMnOpQrStUvWxYz1", following=True))
    plan = route("price.drop", Category.REMINDER, user, POLICY, [], NOW)
    assert (Channel.WECHAT_CS, Skip.WINDOW_CLOSED) in plan.skipped
    opened = profile(
        wechat=WeChat("oAbCdEfGhIjKlMnOpQrStUvWxYz1", following=True),
        interactions=(Interaction(InteractionKind.USER_MESSAGE, NOW - timedelta(hours=1)),),
    )
    assert route("price.drop", Category.REMINDER, opened, POLICY, [], NOW).plan == (Channel.WECHAT_CS,)


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("7d") == timedelta(days=7)
    # as policy files write them, never str(timedelta)'s "1 day, 0:00:00"
    assert format_duration(timedelta(hours=24)) == "24h"
    assert [format_duration(parse_duration(t)) for t in ("90s", "5m", "60m", "48h", "7d", "14d", "400d")] == [
        "90s",
        "5m",
        "1h",
        "2d",
        "1w",
        "2w",
        "400d",
    ]
    with pytest.raises(ValueError, match="unknown unit 'dya'"):
        parse_duration("1dya")
    with pytest.raises(ValueError, match="is zero"):
        parse_duration("0h")


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    assert all(limiter.allow("order", 3, 1.0) for _ in range(3))
    assert not limiter.allow("order", 3, 1.0)
    assert limiter.allow("growth", 3, 1.0)  # buckets are per key
    now[0] = 0.34
    assert limiter.allow("order", 3, 1.0)
    assert not limiter.allow("order", 3, 1.0)


def test_a_channel_whose_provider_is_down_goes_last() -> None:
    from datetime import UTC, datetime

    from gateway.core.route import route
    from gateway.policy.loader import load_policy
    from gateway.values.domain import Category, Channel
    from gateway.values.profiles import UserProfile, WeChat
    from tests.conftest import POLICIES

    policy = load_policy(POLICIES)
    profile = UserProfile("u-1", wechat=WeChat("oAbCdEfGhIjKlMnOpQrStUvWxYz1", following=True), phone="+8613800138000")
    now = datetime(2026, 11, 11, 2, tzinfo=UTC)
    plan = route("order.shipped", Category.BASIC, profile, policy, [], now).plan
    assert plan == (Channel.WECHAT_TEMPLATE, Channel.SMS)
    down = route("order.shipped", Category.BASIC, profile, policy, [], now, down=frozenset({Channel.WECHAT_TEMPLATE}))
    assert down.plan == (Channel.SMS, Channel.WECHAT_TEMPLATE)
