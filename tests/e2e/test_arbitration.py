"""Arbitration over gRPC, on both stores, with the gateway's clock in the test's hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.app import Gateway
from gateway.clock import FixedClock
from gateway.metrics import fresh_metrics
from gateway.values.records import ScopeKind
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.conftest import OPENID, Api, auth, open_api, settings_for
from tests.e2e.test_push import shipped, ts, wait_status

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(hour: int, minute: int = 0, day: int = 11, tz: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=tz).astimezone(UTC)


@dataclass
class Clocked:
    api: Api
    clock: FixedClock

    async def at(self, moment: datetime) -> None:
        """Move the gateway's clock and release whatever is due."""
        self.clock.set(moment)
        await self.api.gateway.scheduler.tick()

    async def message(self, message_id: str, bu: str) -> push_pb2.Message:
        return await self.api.push.GetMessage(push_pb2.GetMessageRequest(message_id=message_id), metadata=auth(bu))


@pytest.fixture(params=["memory", "redis"])
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Clocked]:
    redis_url = request.getfixturevalue("clean_redis") if request.param == "redis" else ""
    clock = FixedClock(local(10))
    gateway = Gateway(settings_for(tmp_path, redis_url), metrics=fresh_metrics(), clock=clock)
    await gateway.start()
    api = await open_api(gateway)
    try:
        yield Clocked(api, clock)
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)


async def add_user(api: Api, user_id: str, tz: str = "Asia/Shanghai", **fields: object) -> None:
    rfm = profile_pb2.RfmInputs(last_purchase_at=ts(local(10) - timedelta(days=10)), orders_in_period=4)
    user = profile_pb2.User(
        user_id=user_id,
        wechat=profile_pb2.WeChatIdentity(openid=OPENID, following=True),
        phone="+8613800138000",
        device_tokens=[profile_pb2.DeviceToken(token="tok-1", platform=profile_pb2.ANDROID, provider=profile_pb2.FCM)],
        timezone=tz,
        rfm=rfm,
        **fields,  # type: ignore[arg-type]
    )
    await api.profiles.UpsertUser(profile_pb2.UpsertUserRequest(user=user), metadata=auth("order"))


def price_drop(request_id: str, user_id: str = "u-1", **fields: object) -> push_pb2.PushRequest:
    return push_pb2.PushRequest(
        request_id=request_id,
        user_id=user_id,
        scenario="price.drop",
        params={"item_name": "kettle", "new_price": "99"},
        **fields,  # type: ignore[arg-type]
    )


def marketing(request_id: str, scenario: str, **fields: object) -> push_pb2.PushRequest:
    params = {
        "new.arrivals": {"category_name": "kitchen"},
        "double11.presale": {"deposit": "50", "discount": "150"},
        "coupon.flash": {"amount": "20", "expires": "11-12"},
    }[scenario]
    fields = {"user_id": "u-1", "campaign_id": f"c-{scenario}", **fields}
    return push_pb2.PushRequest(request_id=request_id, scenario=scenario, params=params, **fields)  # type: ignore[arg-type]


async def test_every_reason_code(clocked: Clocked) -> None:
    api = clocked.api
    await add_user(api, "u-1")
    await add_user(api, "u-optout")
    await api.profiles.SetOptOut(
        profile_pb2.SetOptOutRequest(user_id="u-optout", category=types_pb2.REMINDER, opted_out=True),
        metadata=auth("order"),
    )

    async def push(request: push_pb2.PushRequest, bu: str = "growth") -> push_pb2.PushResponse:
        return await api.push.Push(request, metadata=auth(bu))

    reasons: dict[str, int] = {}
    reasons["OPTED_OUT"] = (await push(price_drop("r-o", "u-optout"))).reason
    reasons["NO_REACHABLE_CHANNEL"] = (await push(price_drop("r-n", "ghost"))).reason
    first = await push(price_drop("r-1", dedup_key="kettle-99"))
    assert first.outcome == types_pb2.ACCEPTED
    reasons["DUPLICATE"] = (await push(price_drop("r-2", dedup_key="kettle-99"))).reason
    await push(price_drop("r-3"))
    capped = await push(price_drop("r-4"))
    reasons["FREQUENCY_CAP"] = capped.reason
    assert "cap reminder.daily (day): 2 of 2 used" in capped.detail
    reasons["EXPIRED"] = 0
    await clocked.at(local(22, 30))
    expired = await push(price_drop("r-5", "u-optout", deadline=ts(local(23))))
    assert expired.reason == types_pb2.OPTED_OUT  # opt-out comes before quiet hours
    await add_user(api, "u-2")
    reasons["EXPIRED"] = (await push(price_drop("r-6", "u-2", deadline=ts(local(23))))).reason
    reasons["QUIET_HOURS"] = (await push(marketing("r-7", "new.arrivals"), "growth")).reason
    for i in range(60):
        await push(shipped(f"s-{i}"), "order")
    reasons["SAFETY_CAP"] = (await push(shipped("s-60"), "order")).reason
    await api.gateway.switches.set(ScopeKind.BU, "growth", "bad campaign", "sre")
    reasons["KILL_SWITCH"] = (await push(price_drop("r-8", "u-2"))).reason
    expected = {name: types_pb2.Reason.Value(name) for name in reasons}
    assert reasons == expected


async def test_deferred_claims_release_at_eight_in_each_users_time_zone(clocked: Clocked) -> None:
    api = clocked.api
    berlin = ZoneInfo("Europe/Berlin")
    await add_user(api, "u-sh")
    await add_user(api, "u-be", tz="Europe/Berlin")
    await clocked.at(local(23))  # 23:00 Shanghai, 16:00 Berlin
    sh = await api.push.Push(price_drop("r-sh", "u-sh"), metadata=auth("growth"))
    assert sh.outcome == types_pb2.SCHEDULED
    await clocked.at(local(23, day=11, tz=berlin))  # 23:00 Berlin, 06:00 Shanghai next day
    be = await api.push.Push(price_drop("r-be", "u-be"), metadata=auth("growth"))
    assert be.outcome == types_pb2.SCHEDULED

    released: dict[str, datetime] = {}
    moment = local(23, day=11, tz=berlin)
    while len(released) < 2 and moment < local(12, day=13):
        moment += timedelta(minutes=5)
        await clocked.at(moment)
        for name, answer in (("sh", sh), ("be", be)):
            message = await clocked.message(answer.message_id, "growth")
            if name not in released and message.status != "scheduled":
                released[name] = moment
    sh_local = released["sh"].astimezone(SHANGHAI)
    be_local = released["be"].astimezone(berlin)
    assert (sh_local.day, be_local.day) == (12, 12)
    assert sh_local.hour >= 8 and sh_local < sh_local.replace(hour=8, minute=25)
    assert be_local.hour >= 8 and be_local < be_local.replace(hour=8, minute=25)
    for answer in (sh, be):
        message = await wait_status(api, answer.message_id, "delivered", bu="growth")
        assert [e.kind for e in message.timeline] == ["scheduled", "released", "delivered"]


async def test_three_units_compete_for_one_user(clocked: Clocked) -> None:
    api = clocked.api
    await add_user(api, "u-1")  # tier loyal: one marketing message a day
    claims = {
        "order": await api.push.Push(marketing("m-1", "coupon.flash", deadline=ts(local(17))), metadata=auth("order")),
        "growth": await api.push.Push(marketing("m-2", "new.arrivals"), metadata=auth("growth")),
        "marketing": await api.push.Push(
            marketing("m-3", "double11.presale", deadline=ts(local(17))), metadata=auth("marketing")
        ),
    }
    for answer in claims.values():
        assert answer.outcome == types_pb2.SCHEDULED
        at = answer.scheduled_at.ToDatetime(tzinfo=UTC)
        assert local(12) <= at < local(12, 20)
    await clocked.at(local(12, 25))
    winner = await wait_status(api, claims["growth"].message_id, "delivered", bu="growth")
    assert winner.outcome == types_pb2.ACCEPTED
    for bu in ("order", "marketing"):
        loser = await clocked.message(claims[bu].message_id, bu)
        assert loser.outcome == types_pb2.SUPPRESSED and loser.reason == types_pb2.LOST_ARBITRATION
        assert "lost to new.arrivals of growth" in loser.detail
        assert loser.status == "suppressed"


async def test_explain_shows_the_trace_without_sending(clocked: Clocked) -> None:
    api = clocked.api
    await add_user(api, "u-1")
    request = push_pb2.ExplainRequest(request=price_drop("x-1"), at=ts(local(23)))
    answer = await api.push.Explain(request, metadata=auth("growth"))
    assert answer.decision.outcome == types_pb2.SCHEDULED
    assert any("quiet hours" in line for line in answer.trace)
    again = await api.push.Push(price_drop("x-1"), metadata=auth("growth"))  # the id was not used
    assert again.outcome == types_pb2.ACCEPTED


async def test_the_pool_survives_a_gateway_restart(clean_redis: str, tmp_path: Path) -> None:
    clock = FixedClock(local(10))
    first = Gateway(settings_for(tmp_path, clean_redis), metrics=fresh_metrics(), clock=clock)
    await first.start()
    api = await open_api(first)
    await add_user(api, "u-1")
    held = await api.push.Push(marketing("m-1", "new.arrivals"), metadata=auth("growth"))
    assert held.outcome == types_pb2.SCHEDULED
    await api.channel.close()
    await first.stop(grace=1.0)

    clock.set(local(12, 25))  # the window opened while no gateway ran
    second = Gateway(settings_for(tmp_path, clean_redis), metrics=fresh_metrics(), clock=clock)
    await second.start()
    api = await open_api(second)
    try:
        await second.scheduler.tick()
        message = await wait_status(api, held.message_id, "delivered", bu="growth")
        assert message.status == "delivered"
        assert [e.kind for e in message.timeline] == ["scheduled", "released", "delivered"]
    finally:
        await api.channel.close()
        await second.stop(grace=1.0)


async def test_claims_inside_an_open_window_compete_as_a_pool(clocked: Clocked) -> None:
    # Four marketing claims for one user while the noon window is open, the weakest
    # first: all are decided together when the first one's collection period ends.
    api = clocked.api
    await add_user(api, "u-1")  # loyal: one marketing message a day
    await clocked.at(local(12, 30))
    arrivals = [
        ("marketing", marketing("p-26", "double11.presale", priority=15)),  # score 26
        ("marketing", marketing("p-30", "coupon.flash", priority=25)),  # score 30
        ("growth", marketing("p-50", "new.arrivals", priority=33)),  # score 49.8
        ("growth", marketing("p-45", "new.arrivals", priority=25)),  # score 45
    ]
    answers = {}
    for minute, (bu, request) in enumerate(arrivals):
        await clocked.at(local(12, 30 + minute))
        answers[request.request_id] = (bu, await api.push.Push(request, metadata=auth(bu)))
    times = {a.scheduled_at.ToDatetime(tzinfo=UTC) for _, a in answers.values()}
    assert times == {local(12, 35)}
    await clocked.at(local(12, 35))
    bu, best = answers["p-50"]
    assert (await wait_status(api, best.message_id, "delivered", bu=bu)).outcome == types_pb2.ACCEPTED
    for request_id in ("p-26", "p-30", "p-45"):
        bu, answer = answers[request_id]
        carried = await clocked.message(answer.message_id, bu)
        # GetMessage tells where a carried claim stands now: scheduled, for the evening.
        assert carried.status == "scheduled" and carried.outcome == types_pb2.SCHEDULED
        at = carried.scheduled_at.ToDatetime(tzinfo=UTC)
        assert local(18) <= at < local(18, 20), at
        assert "carried to 2026-11-11 18:" in carried.detail and "released" not in carried.detail
        assert carried.detail.count("marketing.daily") == 1
        assert carried.timeline[-1].kind == "carried"


async def test_explain_shows_caps_rivals_and_the_release(clocked: Clocked) -> None:
    api = clocked.api
    await add_user(api, "u-1")
    held = await api.push.Push(marketing("m-1", "double11.presale"), metadata=auth("marketing"))
    assert held.outcome == types_pb2.SCHEDULED
    request = push_pb2.ExplainRequest(request=marketing("x-1", "new.arrivals", priority=10), at=ts(local(10, 5)))
    answer = await api.push.Explain(request, metadata=auth("growth"))
    assert answer.decision.outcome == types_pb2.SCHEDULED
    assert "user's RFM tier: loyal" in answer.trace
    assert "cap marketing.daily (day): 0 of 1 used" in answer.trace
    assert any(line.startswith(f"held for the user: {held.message_id} double11.presale") for line in answer.trace)
    # Its pool at noon holds the stronger presale (score 40 x 1.0 > 60 x 0.6 x 1 = 36).
    assert "when released: SCHEDULED: lost to double11.presale of marketing" in answer.decision.detail
