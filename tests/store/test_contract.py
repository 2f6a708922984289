"""One contract, two stores: every test runs against MemoryStore and a real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import redis

from gateway.clock import FixedClock
from gateway.core.state import Commit, Held, Hold, MarkDedup, Release, Reserve, SentEntry, UserState
from gateway.domain import Category, Channel, InteractionKind, Outcome, Platform, PushProvider, Reason
from gateway.profiles import DeviceToken, Interaction, OptOut, Rfm, WeChat
from gateway.store.base import IdemKey, IdemState, Store
from gateway.store.records import AuditEntry, Final, KillSwitch, MessageRecord, ScopeKind, TimelineEntry

DAY = timedelta(days=1)
FP_A = "a" * 64
FP_B = "b" * 64


def record(message_id: str, clock: FixedClock, **changes: object) -> MessageRecord:
    base = MessageRecord(
        message_id=message_id,
        request_id="r-1",
        user_id="u-1",
        business_unit="order",
        scenario="order.shipped",
        category=Category.BASIC,
        campaign_id="",
        outcome=Outcome.ACCEPTED,
        reason=None,
        detail="accepted",
        channel_plan=(Channel.WECHAT_TEMPLATE, Channel.SMS),
        scheduled_at=None,
        created_at=clock.now(),
        status="queued",
        policy_version="abc",
        params={"order_id": "O1"},
        timeline=(TimelineEntry(clock.now(), "decided", detail="accepted"),),
    )
    from dataclasses import replace

    return replace(base, **changes)  # type: ignore[arg-type]


async def test_idempotency_new_pending_same_conflict(store: Store) -> None:
    key = IdemKey("order", "r-1", FP_A)
    assert (await store.idem_begin(key, DAY)).state is IdemState.NEW
    assert (await store.idem_begin(key, DAY)).state is IdemState.PENDING
    assert (await store.idem_begin(IdemKey("order", "r-1", FP_B), DAY)).state is IdemState.CONFLICT


async def test_idempotency_answer_is_returned_byte_for_byte(store: Store, clock: FixedClock) -> None:
    key = IdemKey("order", "r-1", FP_A)
    await store.idem_begin(key, DAY)
    answer = b"\x00\x01binary answer\xff"
    await store.save_decision(record("m_1", clock), key, answer, DAY, DAY)
    seen = await store.idem_begin(key, DAY)
    assert seen.state is IdemState.SAME
    assert seen.answer == answer


async def test_idempotency_is_per_business_unit(store: Store) -> None:
    assert (await store.idem_begin(IdemKey("order", "r-1", FP_A), DAY)).state is IdemState.NEW
    assert (await store.idem_begin(IdemKey("growth", "r-1", FP_B), DAY)).state is IdemState.NEW


async def test_idempotency_abort_frees_only_a_pending_claim(store: Store, clock: FixedClock) -> None:
    key = IdemKey("order", "r-1", FP_A)
    await store.idem_begin(key, DAY)
    await store.idem_abort(key)
    assert (await store.idem_begin(key, DAY)).state is IdemState.NEW
    await store.save_decision(record("m_1", clock), key, b"done", DAY, DAY)
    await store.idem_abort(key)  # a finished answer is never given back
    assert (await store.idem_begin(key, DAY)).state is IdemState.SAME


async def test_concurrent_idem_begin_has_exactly_one_winner(store: Store) -> None:
    key = IdemKey("order", "race", FP_A)
    results = await asyncio.gather(*(store.idem_begin(key, DAY) for _ in range(50)))
    assert sum(r.state is IdemState.NEW for r in results) == 1


async def test_message_round_trip_with_timeline_and_status(store: Store, clock: FixedClock) -> None:
    original = record("m_1", clock, content={"title": "t"}, deadline=clock.now() + DAY)
    await store.save_decision(original, None, b"", DAY, DAY)
    later = TimelineEntry(clock.now() + timedelta(seconds=1), "sent", Channel.SMS, "OK", "sandbox")
    await store.add_events("m_1", [later], "sent", DAY)
    got = await store.get_message("m_1")
    assert got is not None
    assert got.status == "sent"
    assert got.timeline == (*original.timeline, later)
    assert got.params == {"order_id": "O1"}
    assert got.deadline == original.deadline
    assert got.channel_plan == original.channel_plan
    assert await store.get_message("m_unknown") is None


async def test_suppressed_message_keeps_its_reason(store: Store, clock: FixedClock) -> None:
    await store.save_decision(
        record("m_2", clock, outcome=Outcome.SUPPRESSED, reason=Reason.KILL_SWITCH, status="suppressed"),
        None,
        b"",
        DAY,
        DAY,
    )
    got = await store.get_message("m_2")
    assert got is not None and got.reason is Reason.KILL_SWITCH and got.status == "suppressed"


async def test_profile_sections_merge(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.upsert_user("u-1", {"phone": "+8613800138000", "timezone": "Asia/Shanghai"}, now, DAY)
    profile = await store.upsert_user(
        "u-1",
        {
            "wechat": WeChat("oAbc", "uXyz", True),
            "device_tokens": (DeviceToken("tok", Platform.IOS, PushProvider.APNS),),
            "rfm": Rfm(now - timedelta(days=3), 4, 123456),
        },
        now,
        DAY,
    )
    assert profile.phone == "+8613800138000"
    assert profile.wechat == WeChat("oAbc", "uXyz", True)
    assert profile.device_tokens[0].provider is PushProvider.APNS
    assert profile.rfm.spend_in_period_minor == 123456
    assert profile.updated_at == now
    assert await store.get_user("u-1") == profile
    assert await store.get_user("nobody") is None


async def test_clearing_a_section(store: Store, clock: FixedClock) -> None:
    await store.upsert_user("u-1", {"wechat": WeChat("oAbc", following=True)}, clock.now(), DAY)
    profile = await store.upsert_user("u-1", {"wechat": None, "email": ""}, clock.now(), DAY)
    assert profile.wechat is None


async def test_opt_out_and_back_in(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    assert await store.set_opt_out("ghost", OptOut(Category.MARKETING, None, now), True, DAY) is None
    await store.upsert_user("u-1", {"phone": "+8613800138000"}, now, DAY)
    entry = OptOut(Category.MARKETING, Channel.SMS, now, "sms-stop")
    profile = await store.set_opt_out("u-1", entry, True, DAY)
    assert profile is not None and profile.opt_outs == (entry,)
    profile = await store.set_opt_out("u-1", OptOut(None, Channel.EMAIL, now), True, DAY)
    assert profile is not None and len(profile.opt_outs) == 2
    profile = await store.set_opt_out("u-1", entry, False, DAY)
    assert profile is not None and [o.channel for o in profile.opt_outs] == [Channel.EMAIL]


async def test_interactions_keep_the_most_recent(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    ix = Interaction(InteractionKind.USER_MESSAGE, now)
    assert await store.record_interaction("ghost", ix, 3, DAY) is None
    await store.upsert_user("u-1", {"phone": "+8613800138000"}, now, DAY)
    for minute in range(5):
        profile = await store.record_interaction(
            "u-1", Interaction(InteractionKind.MENU_CLICK, now + timedelta(minutes=minute)), 3, DAY
        )
    assert profile is not None
    assert [i.at for i in profile.interactions] == [now + timedelta(minutes=m) for m in (4, 3, 2)]


async def test_kill_switches_and_audit(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    switch = KillSwitch("ks_1", ScopeKind.CAMPAIGN, "d11", "bad link", "alice", now, now + DAY)
    await store.put_kill_switch(switch, AuditEntry(now, "set", "alice", switch))
    assert await store.kill_switches() == [switch]
    cleared = await store.clear_kill_switch("ks_1", lambda s: AuditEntry(now, "clear", "bob", s, "fixed"))
    assert cleared == switch
    assert await store.kill_switches() == []
    assert await store.clear_kill_switch("ks_1", lambda s: AuditEntry(now, "clear", "bob", s)) is None
    audit = await store.kill_audit(10)
    assert [(a.action, a.actor) for a in audit] == [("clear", "bob"), ("set", "alice")]


def sent(message_id: str, at: datetime, channel: Channel = Channel.SMS, bu: str = "growth") -> SentEntry:
    return SentEntry(message_id, at, Category.REMINDER, channel, bu)


async def test_load_and_apply_arbitration_state(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.upsert_user("u-1", {"phone": "+8613800138000"}, now, DAY)
    profile, state = await store.load_user("u-1", ("growth", "k1"), now - DAY)
    assert profile is not None and state == UserState()
    ok = await store.apply(
        "u-1",
        0,
        [Reserve(sent("m_1", now)), MarkDedup("growth", "k1", DAY), Hold("m_2", now + timedelta(hours=1))],
        now,
        timedelta(days=32),
    )
    assert ok
    _, state = await store.load_user("u-1", ("growth", "k1"), now - DAY)
    assert state.version == 1 and state.dedup_seen
    assert state.sent == (sent("m_1", now),)
    assert state.held == (Held("m_2", now + timedelta(hours=1)),)
    _, other = await store.load_user("u-1", ("order", "k1"), now - DAY)
    assert not other.dedup_seen  # dedup is per business unit


async def test_apply_refuses_a_stale_version(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    assert await store.apply("u-1", 0, [Reserve(sent("m_1", now))], now, DAY)
    assert not await store.apply("u-1", 0, [Reserve(sent("m_2", now))], now, DAY)
    _, state = await store.load_user("u-1", None, now - DAY)
    assert [e.message_id for e in state.sent] == ["m_1"]


async def test_concurrent_applies_at_one_version_have_one_winner(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    results = await asyncio.gather(
        *(store.apply("u-1", 0, [Reserve(sent(f"m_{i}", now))], now, DAY) for i in range(20))
    )
    assert sum(results) == 1


async def test_commit_and_release(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.apply("u-1", None, [Reserve(sent("m_1", now)), Reserve(sent("m_2", now))], now, DAY)
    await store.apply(
        "u-1", None, [Commit("m_1", Channel.APP_PUSH), Release("m_2"), Commit("m_gone", Channel.SMS)], now, DAY
    )
    _, state = await store.load_user("u-1", None, now - DAY)
    assert state.sent == (SentEntry("m_1", now, Category.REMINDER, Channel.APP_PUSH, "growth", committed=True),)


async def test_old_reservations_are_trimmed(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.apply("u-1", None, [Reserve(sent("m_old", now - timedelta(days=40)))], now, timedelta(days=32))
    await store.apply("u-1", None, [Reserve(sent("m_new", now))], now, timedelta(days=32))
    _, state = await store.load_user("u-1", None, now - timedelta(days=60))
    assert [e.message_id for e in state.sent] == ["m_new"]


async def test_holds_put_the_user_in_the_due_index(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.apply("u-1", None, [Hold("m_1", now + timedelta(minutes=10))], now, DAY)
    await store.apply("u-2", None, [Hold("m_2", now + timedelta(minutes=1))], now, DAY)
    assert await store.due_count() == 2
    assert await store.take_due(now, 10, timedelta(seconds=60)) == []
    later = now + timedelta(minutes=5)
    taken = await asyncio.gather(*(store.take_due(later, 10, timedelta(seconds=60)) for _ in range(5)))
    flat = [user for batch in taken for user, _ in batch]
    assert flat == ["u-2"]  # each due user to exactly one caller


async def test_a_lease_that_runs_out_is_taken_again(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.apply("u-1", None, [Hold("m_1", now)], now, DAY)
    assert [u for u, _ in await store.take_due(now, 10, timedelta(seconds=60))] == ["u-1"]
    assert await store.take_due(now + timedelta(seconds=30), 10, timedelta(seconds=60)) == []
    again = await store.take_due(now + timedelta(seconds=61), 10, timedelta(seconds=60))
    assert [u for u, _ in again] == ["u-1"]


async def test_finish_due_moves_or_removes_the_user(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.apply("u-1", None, [Hold("m_1", now)], now, DAY)
    [(_, until)] = await store.take_due(now, 10, timedelta(seconds=60))
    await store.finish_due("u-1", until, now + timedelta(hours=1))
    assert await store.take_due(now + timedelta(minutes=59), 10, timedelta(seconds=60)) == []
    [(_, until)] = await store.take_due(now + timedelta(hours=1), 10, timedelta(seconds=60))
    await store.finish_due("u-1", until, None)
    assert await store.due_count() == 0


async def test_a_hold_added_during_a_lease_is_not_lost(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await store.apply("u-1", None, [Hold("m_1", now)], now, DAY)
    [(_, until)] = await store.take_due(now, 10, timedelta(seconds=60))
    # Meanwhile another replica holds a new claim due in 5 s.
    await store.apply("u-1", None, [Hold("m_2", now + timedelta(seconds=5))], now, DAY)
    await store.finish_due("u-1", until, None)  # the releaser saw no more due claims
    taken = await store.take_due(now + timedelta(seconds=5), 10, timedelta(seconds=60))
    assert [u for u, _ in taken] == ["u-1"]


async def test_final_outcome_overrides_the_first_decision(store: Store, clock: FixedClock) -> None:
    await store.save_decision(record("m_1", clock, outcome=Outcome.SCHEDULED, status="scheduled"), None, b"", DAY, DAY)
    final = Final(Outcome.SUPPRESSED, Reason.LOST_ARBITRATION, "lost to double11.presale")
    await store.add_events("m_1", [TimelineEntry(clock.now(), "suppressed")], "suppressed", DAY, final)
    [got, missing] = await store.get_messages(["m_1", "m_none"])
    assert missing is None
    assert got is not None and got.outcome is Outcome.SUPPRESSED and got.reason is Reason.LOST_ARBITRATION
    assert got.detail == "lost to double11.presale"


async def test_idempotency_expires(store: Store, clock: FixedClock) -> None:
    key = IdemKey("order", "r-exp", FP_A)
    short = timedelta(milliseconds=200)
    await store.idem_begin(key, short)
    if store.kind == "memory":
        clock.advance(1)
    else:
        await asyncio.sleep(0.3)
    assert (await store.idem_begin(key, DAY)).state is IdemState.NEW


@pytest.mark.redis
async def test_every_redis_key_has_a_ttl_or_a_reason(clean_redis: str, clock: FixedClock) -> None:
    """keys.py documents which keys live without a TTL; every other key must expire."""
    from gateway.store.redis import RedisStore

    store = RedisStore(clean_redis)
    now = clock.now()
    try:
        key = IdemKey("order", "r-1", FP_A)
        await store.idem_begin(key, DAY)
        await store.save_decision(record("m_1", clock), key, b"x", DAY, DAY)
        await store.add_events("m_1", [TimelineEntry(now, "sent")], "sent", DAY)
        await store.upsert_user("u-1", {"phone": "+8613800138000"}, now, DAY)
        await store.record_interaction("u-1", Interaction(InteractionKind.FOLLOW, now), 5, DAY)
        await store.set_opt_out("u-1", OptOut(Category.MARKETING, None, now), True, DAY)
        switch = KillSwitch("ks_1", ScopeKind.GLOBAL, "", "r", "a", now)
        await store.put_kill_switch(switch, AuditEntry(now, "set", "a", switch))
        await store.apply(
            "u-1", None, [Reserve(sent("m_9", now)), MarkDedup("order", "k", DAY), Hold("m_9", now + DAY)], now, DAY
        )
    finally:
        await store.close()
    client = redis.Redis.from_url(clean_redis)
    without_ttl = sorted(k.decode() for k in client.scan_iter() if client.pttl(k) < 0)
    assert without_ttl == ["herald:due", "herald:ks", "herald:ks:audit"]
    user_keys = sorted(k.decode().split("}:")[1] for k in client.scan_iter("*{u:u-1}*"))
    # Every per-user key shares the user's hash tag (one cluster slot, one script).
    assert user_keys == ["dd:order:k", "held", "ix", "profile", "sent", "sentinfo", "ver"]


async def test_unreachable_redis_raises_store_unavailable() -> None:
    from gateway.errors import StoreUnavailable
    from gateway.store.redis import RedisStore
    from tests.helpers import free_port

    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.get_user("u-1")
        assert "hunter2" not in str(info.value)
        assert "127.0.0.1" in str(info.value)
    finally:
        await store.close()


def test_clock_is_timezone_aware() -> None:
    with pytest.raises(ValueError):
        FixedClock(datetime(2026, 1, 1))
    assert FixedClock(datetime(2026, 1, 1, tzinfo=UTC)).now().tzinfo is not None


# --- shared small state -------------------------------------------------------------
async def test_shared_lock_is_taken_once_and_released_only_by_its_owner(store: Store) -> None:
    assert await store.shared_put("lock:x", "owner-a", timedelta(seconds=10), only_if_absent=True)
    assert not await store.shared_put("lock:x", "owner-b", timedelta(seconds=10), only_if_absent=True)
    assert not await store.shared_delete("lock:x", only_if="owner-b")
    assert await store.shared_get("lock:x") == "owner-a"
    assert await store.shared_delete("lock:x", only_if="owner-a")
    assert await store.shared_get("lock:x") is None
    assert await store.shared_put("lock:x", "owner-b", timedelta(seconds=10), only_if_absent=True)


async def test_shared_value_is_overwritten_and_deleted(store: Store) -> None:
    await store.shared_put("token", "one", timedelta(minutes=5))
    await store.shared_put("token", "two", timedelta(minutes=5))
    assert await store.shared_get("token") == "two"
    assert await store.shared_delete("token")
    assert not await store.shared_delete("token")


async def test_token_bucket_grants_burst_then_says_how_long_to_wait(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    granted = [await store.take_token("wechat", 10.0, 3, now) for _ in range(4)]
    assert granted[:3] == [0.0, 0.0, 0.0]
    assert granted[3] == pytest.approx(0.1, abs=0.002)
    # 0.25 s later two and a half tokens came back: two are granted, the third waits.
    later = now + timedelta(milliseconds=250)
    assert [await store.take_token("wechat", 10.0, 3, later) for _ in range(3)][:2] == [0.0, 0.0]
    assert await store.take_token("other", 10.0, 3, later) == 0.0
