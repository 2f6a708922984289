"""One contract, two stores: every test runs against MemoryStore and a real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import redis

from gateway.clock import FixedClock
from gateway.core.caps import keep_for
from gateway.ids import new_message_id
from gateway.policy.loader import load_policy
from gateway.store.base import (
    Change,
    Committed,
    IdemKey,
    IdemState,
    IndexCursor,
    Lifetimes,
    MessageUpdate,
    NewMessage,
    Store,
    UserRead,
)
from gateway.store.shards import shard_of
from gateway.values.decisions import PushAnswer
from gateway.values.domain import Category, Channel, InteractionKind, Outcome, Platform, PushProvider, Reason
from gateway.values.profiles import DeviceToken, Interaction, OptOut, Rfm, WeChat
from gateway.values.records import AuditEntry, Current, KillSwitch, MessageRecord, ScopeKind, TimelineEntry
from gateway.values.state import Held, Hold, MarkDedup, Reserve, SentEntry, UserState, apply_mutations
from tests.conftest import POLICIES

DAY = timedelta(days=1)
LIFE = Lifetimes(DAY, DAY)
FP_A = "a" * 32
FP_B = "b" * 32
KEEP = keep_for(load_policy(POLICIES))


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
    return msgspec.structs.replace(base, **changes)


def answer_of(rec: MessageRecord) -> PushAnswer:
    return PushAnswer(
        rec.message_id, rec.category, rec.outcome, rec.reason, rec.detail, rec.channel_plan, None, rec.policy_version
    )


async def decide(store: Store, user: str, rec: MessageRecord, idem: IdemKey | None = None) -> Committed:
    """Commit one suppressed-or-accepted decision that changes no state."""
    [result] = await store.commit([Change(user, 0, None, (NewMessage(rec, idem, answer_of(rec)),))], LIFE)
    return result


def mid_for(store: Store, user: str = "u-1") -> str:
    """A message id of the user's shard, as the pipeline makes them."""
    return new_message_id(shard_of(user, store.shards))


async def add_user(store: Store, clock: FixedClock, user: str = "u-1") -> None:
    await store.upsert_user(user, {"phone": "+8613800138000"}, clock.now(), DAY)


# --- idempotency ------------------------------------------------------------------------
async def test_a_request_is_new_then_answered_the_same_and_conflicts_with_another_body(
    store: Store, clock: FixedClock
) -> None:
    key = IdemKey("order", "r-1", FP_A)
    [view] = await store.read_users([UserRead("u-1", key)], DAY)
    assert view.idem is IdemState.NEW
    rec = record("m_1", clock)
    assert await decide(store, "u-1", rec, key) is Committed.OK
    [view] = await store.read_users([UserRead("u-1", key)], DAY)
    assert view.idem is IdemState.SAME and view.answer == answer_of(rec)
    [view] = await store.read_users([UserRead("u-1", IdemKey("order", "r-1", FP_B))], DAY)
    assert view.idem is IdemState.CONFLICT


async def test_a_request_read_again_before_it_is_decided_is_still_new(store: Store) -> None:
    # What a decision that lost a race to another replica does: read again, decide again.
    key = IdemKey("order", "r-1", FP_A)
    for _ in range(3):
        [view] = await store.read_users([UserRead("u-1", key)], DAY)
        assert view.idem is IdemState.NEW


async def test_a_request_id_reused_for_another_user_is_a_conflict(store: Store) -> None:
    await store.read_users([UserRead("u-1", IdemKey("order", "r-1", FP_A))], DAY)
    [view] = await store.read_users([UserRead("u-other", IdemKey("order", "r-1", FP_B))], DAY)
    assert view.idem is IdemState.CONFLICT


async def test_idempotency_is_per_business_unit(store: Store, clock: FixedClock) -> None:
    await decide(store, "u-1", record("m_1", clock), IdemKey("order", "r-1", FP_A))
    [view] = await store.read_users([UserRead("u-1", IdemKey("growth", "r-1", FP_B))], DAY)
    assert view.idem is IdemState.NEW


async def test_a_request_answered_meanwhile_makes_the_commit_a_duplicate(store: Store, clock: FixedClock) -> None:
    key = IdemKey("order", "r-1", FP_A)
    results = await asyncio.gather(*(decide(store, "u-1", record(f"m_{i}", clock), key) for i in range(10)))
    assert sorted(results) == sorted([Committed.OK] + [Committed.DUPLICATE] * 9)


async def test_idempotency_expires(store: Store, clock: FixedClock) -> None:
    key = IdemKey("order", "r-exp", FP_A)
    short = Lifetimes(timedelta(milliseconds=200), DAY)
    await store.commit(
        [Change("u-1", 0, None, (NewMessage(record("m_1", clock), key, answer_of(record("m_1", clock))),))], short
    )
    if store.kind == "memory":
        clock.advance(1)
    else:
        await asyncio.sleep(0.3)
    [view] = await store.read_users([UserRead("u-1", key)], timedelta(milliseconds=200))
    assert view.idem is IdemState.NEW


# --- arbitration state --------------------------------------------------------------------
def sent(message_id: str, at: datetime, channel: Channel = Channel.SMS, bu: str = "growth") -> SentEntry:
    return SentEntry(message_id, at, Category.REMINDER, channel, bu)


async def test_state_round_trips_and_moves_its_version(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock)
    [view] = await store.read_users([UserRead("u-1")], DAY)
    assert view.profile is not None and view.state == UserState()
    changes = [Reserve(sent("m_1", now)), MarkDedup("growth", "k1", DAY), Hold("m_2", now + timedelta(hours=1), True)]
    state = apply_mutations(view.state, changes, now, KEEP)
    [result] = await store.commit([Change("u-1", 0, state, due=now + timedelta(hours=1))], LIFE)
    assert result is Committed.OK
    [view] = await store.read_users([UserRead("u-1")], DAY)
    assert view.state.version == 1
    assert view.state.sent == (sent("m_1", now),)
    assert view.state.held == (Held("m_2", now + timedelta(hours=1), True),)
    assert view.state.seen("growth", "k1", now) and not view.state.seen("order", "k1", now)


async def test_a_stale_version_is_refused_and_nothing_written(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock)
    one = UserState(sent=(sent("m_1", now),))
    assert (await store.commit([Change("u-1", 0, one)], LIFE)) == [Committed.OK]
    two = UserState(sent=(sent("m_2", now),))
    rec = record("m_2", clock)
    stale = Change("u-1", 0, two, (NewMessage(rec, IdemKey("order", "r-2", FP_A), answer_of(rec)),))
    assert (await store.commit([stale], LIFE)) == [Committed.CONFLICT]
    [view] = await store.read_users([UserRead("u-1", IdemKey("order", "r-2", FP_A))], DAY)
    assert [e.message_id for e in view.state.sent] == ["m_1"]
    assert view.idem is IdemState.NEW  # the stale change wrote no answer
    assert await store.get_messages(["m_2"]) == [None]


async def test_concurrent_commits_at_one_version_have_one_winner(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock)
    changes = [Change("u-1", 0, UserState(sent=(sent(f"m_{i}", now),))) for i in range(20)]
    results = await asyncio.gather(*(store.commit([c], LIFE) for c in changes))
    assert [r for [r] in results].count(Committed.OK) == 1


async def test_state_of_a_user_without_profile_is_not_written(store: Store, clock: FixedClock) -> None:
    result = await store.commit([Change("ghost", 0, UserState(sent=(sent("m_1", clock.now()),)))], LIFE)
    assert result == [Committed.CONFLICT]
    [view] = await store.read_users([UserRead("ghost")], DAY)
    assert view.profile is None and view.state == UserState()


async def test_changes_for_many_users_commit_each_on_its_own(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    for user in ("u-1", "u-2", "u-3"):
        await add_user(store, clock, user)
    await store.commit([Change("u-2", 0, UserState(sent=(sent("m_0", now),)))], LIFE)
    results = await store.commit(
        [Change(u, 0, UserState(sent=(sent(f"m_{u}", now),))) for u in ("u-1", "u-2", "u-3")], LIFE
    )
    assert results == [Committed.OK, Committed.CONFLICT, Committed.OK]


# --- messages ---------------------------------------------------------------------------
async def test_message_round_trip_with_timeline_and_current(store: Store, clock: FixedClock) -> None:
    mid = mid_for(store)
    original = record(mid, clock, content={"title": "t"}, deadline=clock.now() + DAY, outcome=Outcome.SCHEDULED)
    await decide(store, "u-1", original)
    later = TimelineEntry(clock.now() + timedelta(seconds=1), "carried", Channel.SMS, "", "to 18:05")
    current = Current("scheduled", Outcome.SCHEDULED, None, "carried to 18:05", clock.now() + DAY)
    await store.add_events(mid, [later], current, DAY)
    [got, missing] = await store.get_messages([mid, "m_unknown"])
    assert missing is None
    assert got is not None
    assert got.status == "scheduled" and got.detail == "carried to 18:05" and got.scheduled_at == current.scheduled_at
    assert got.timeline == (*original.timeline, later)
    assert got.params == {"order_id": "O1"} and got.content == {"title": "t"}
    assert got.deadline == original.deadline
    assert got.channel_plan == original.channel_plan


async def test_a_release_update_lands_with_its_state(store: Store, clock: FixedClock) -> None:
    mid = mid_for(store)
    await add_user(store, clock)
    await decide(store, "u-1", record(mid, clock, outcome=Outcome.SCHEDULED, status="scheduled"))
    ended = Current("suppressed", Outcome.SUPPRESSED, Reason.LOST_ARBITRATION, "lost to double11.presale")
    update = MessageUpdate(mid, (TimelineEntry(clock.now(), "suppressed"),), ended)
    assert await store.commit([Change("u-1", 0, UserState(), updates=(update,))], LIFE) == [Committed.OK]
    [got] = await store.get_messages([mid])
    assert got is not None and got.outcome is Outcome.SUPPRESSED and got.reason is Reason.LOST_ARBITRATION
    assert got.detail == "lost to double11.presale" and got.timeline[-1].kind == "suppressed"


# --- a user's message index ------------------------------------------------------------
async def walk(
    store: Store, user: str, count: int, since: datetime | None = None, start: IndexCursor | None = None
) -> list[str]:
    """Every id of the user's index from ``start``, ``count`` a call, as ListMessages pages."""
    cursor, seen = start or IndexCursor(), []
    while True:
        page = await store.user_messages(user, cursor, since, count)
        for message_id, at in page:
            seen.append(message_id)
            cursor = cursor.past(at)
        if len(page) < count:
            return seen


async def test_a_users_messages_are_listed_newest_first_page_by_page(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    ages = [0, 5, 5, 5, 60, 3600, 7200]  # seconds ago; three in one millisecond
    ids = []
    for n, age in enumerate(ages):
        mid = mid_for(store)
        ids.append((now - timedelta(seconds=age), mid))
        await decide(store, "u-1", record(mid, clock, request_id=f"r-{n}", created_at=now - timedelta(seconds=age)))
    await decide(store, "u-2", record(mid_for(store, "u-2"), clock, user_id="u-2"))
    newest_first = [mid for _, mid in sorted(ids, reverse=True)]
    for count in (1, 2, 3, 100):
        assert await walk(store, "u-1", count) == newest_first
    # A page names each id with its creation time, in epoch ms.
    [(first, at)] = await store.user_messages("u-1", IndexCursor(), None, 1)
    assert first == newest_first[0] and at == int(now.timestamp() * 1000)
    # Down to a time; from a time.
    assert await walk(store, "u-1", 2, since=now - timedelta(minutes=1)) == newest_first[:5]
    before = IndexCursor(int((now - timedelta(seconds=5)).timestamp() * 1000))
    assert await walk(store, "u-1", 2, start=before) == newest_first[1:]
    assert await walk(store, "nobody", 10) == []
    # What the ids lead to: the user's messages.
    records = await store.get_messages(newest_first)
    assert all(r is not None and r.user_id == "u-1" for r in records)


async def test_the_message_index_keeps_the_retention_and_the_most_recent(
    store: Store, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import keys

    now = clock.now()
    old = mid_for(store)
    await decide(store, "u-1", record(old, clock, request_id="r-old", created_at=now - timedelta(days=2)))
    assert await walk(store, "u-1", 10) == [old]
    fresh = mid_for(store)
    await decide(store, "u-1", record(fresh, clock, request_id="r-new"))
    assert await walk(store, "u-1", 10) == [fresh]  # two days older than the newest: gone
    monkeypatch.setattr(keys, "USER_MESSAGES_KEEP", 3)
    later = []
    for n in range(4):
        mid = mid_for(store)
        later.append(mid)
        await decide(store, "u-1", record(mid, clock, request_id=f"r-{n}", created_at=now + timedelta(seconds=n + 1)))
    assert await walk(store, "u-1", 10) == later[::-1][:3]


async def test_a_commit_of_many_messages_indexes_each(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    recs = [record(mid_for(store), clock, request_id=f"r-{n}") for n in range(5)]
    change = Change("u-1", 0, None, tuple(NewMessage(r, None, None) for r in recs))
    assert await store.commit([change], LIFE) == [Committed.OK]
    listed = await store.user_messages("u-1", IndexCursor(), now, 10)
    assert sorted(listed) == sorted((r.message_id, int(now.timestamp() * 1000)) for r in recs)


async def test_a_commit_of_more_messages_than_the_index_keeps_keeps_the_newest(
    store: Store, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import keys

    monkeypatch.setattr(keys, "USER_MESSAGES_KEEP", 3)
    now = clock.now()
    first = record(mid_for(store), clock, request_id="r-first", created_at=now - timedelta(seconds=1))
    await decide(store, "u-1", first)
    recs = [record(mid_for(store), clock, request_id=f"r-{n}") for n in range(5)]
    change = Change("u-1", 0, None, tuple(NewMessage(r, None, None) for r in recs))
    assert await store.commit([change], LIFE) == [Committed.OK]
    # One millisecond's ids newest first as ZREVRANGEBYSCORE lists them: by id, descending.
    assert await walk(store, "u-1", 10) == sorted((r.message_id for r in recs), reverse=True)[:3]


# --- profiles ---------------------------------------------------------------------------
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


async def test_a_profile_write_keeps_the_arbitration_state(store: Store, clock: FixedClock) -> None:
    await add_user(store, clock)
    await store.commit([Change("u-1", 0, UserState(sent=(sent("m_1", clock.now()),)))], LIFE)
    await store.upsert_user("u-1", {"email": "a@example.com"}, clock.now(), DAY)
    [view] = await store.read_users([UserRead("u-1")], DAY)
    assert view.state.version == 1 and [e.message_id for e in view.state.sent] == ["m_1"]


async def test_opt_out_and_back_in(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    assert await store.set_opt_out("ghost", OptOut(Category.MARKETING, None, now), True, DAY) is None
    await add_user(store, clock)
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
    await add_user(store, clock)
    for minute in range(5):
        profile = await store.record_interaction(
            "u-1", Interaction(InteractionKind.MENU_CLICK, now + timedelta(minutes=minute)), 3, DAY
        )
    assert profile is not None
    assert [i.at for i in profile.interactions] == [now + timedelta(minutes=m) for m in (4, 3, 2)]


# --- kill switches ------------------------------------------------------------------------
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


# --- due index ---------------------------------------------------------------------------
async def hold(store: Store, clock: FixedClock, user: str, due: datetime) -> None:
    [view] = await store.read_users([UserRead(user)], DAY)
    state = apply_mutations(view.state, [Hold(f"m_{user}_{due.timestamp()}", due)], clock.now(), KEEP)
    assert await store.commit([Change(user, view.state.version, state, due=due)], LIFE) == [Committed.OK]


async def test_a_scan_of_the_held_finds_every_user_with_a_held_claim(store: Store, clock: FixedClock) -> None:
    """However far off their claims are due, and whatever the chunk size: each user
    with a held claim once at least, nobody else."""
    now = clock.now()
    users = [f"u-{n}" for n in range(25)]
    for n, user in enumerate(users):
        await add_user(store, clock, user)
        if n % 5:  # every 5th holds nothing
            await hold(store, clock, user, now + timedelta(minutes=n, days=n % 3))
    found: set[str] = set()
    for shard in range(store.shards):
        cursor, rounds = "0", 0
        while True:
            cursor, chunk = await store.scan_held(shard, cursor, 3)
            found.update(chunk)
            rounds += 1
            if cursor == "0":
                break
            assert rounds < 100
    assert found == {u for n, u in enumerate(users) if n % 5}


async def test_holds_put_the_user_in_the_due_index(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock, "u-1")
    await add_user(store, clock, "u-2")
    await hold(store, clock, "u-1", now + timedelta(minutes=10))
    await hold(store, clock, "u-2", now + timedelta(minutes=1))
    assert await store.due_count() == 2
    assert await store.take_due(now, 10, timedelta(seconds=60)) == []
    later = now + timedelta(minutes=5)
    taken = await asyncio.gather(*(store.take_due(later, 10, timedelta(seconds=60)) for _ in range(5)))
    flat = [user for batch in taken for user, _ in batch]
    assert flat == ["u-2"]  # each due user to exactly one caller


async def test_a_lease_that_runs_out_is_taken_again(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock)
    await hold(store, clock, "u-1", now)
    assert [u for u, _ in await store.take_due(now, 10, timedelta(seconds=60))] == ["u-1"]
    assert await store.take_due(now + timedelta(seconds=30), 10, timedelta(seconds=60)) == []
    again = await store.take_due(now + timedelta(seconds=61), 10, timedelta(seconds=60))
    assert [u for u, _ in again] == ["u-1"]


async def test_finish_due_moves_or_removes_the_user(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock)
    await hold(store, clock, "u-1", now)
    [(_, until)] = await store.take_due(now, 10, timedelta(seconds=60))
    await store.finish_due([("u-1", until, now + timedelta(hours=1))])
    assert await store.take_due(now + timedelta(minutes=59), 10, timedelta(seconds=60)) == []
    [(_, until)] = await store.take_due(now + timedelta(hours=1), 10, timedelta(seconds=60))
    await store.finish_due([("u-1", until, None)])
    assert await store.due_count() == 0


async def test_a_hold_added_during_a_lease_is_not_lost(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    await add_user(store, clock)
    await hold(store, clock, "u-1", now)
    [(_, until)] = await store.take_due(now, 10, timedelta(seconds=60))
    # Meanwhile another replica holds a new claim due in 5 s.
    await hold(store, clock, "u-1", now + timedelta(seconds=5))
    await store.finish_due([("u-1", until, None)])  # the releaser saw no more due claims
    taken = await store.take_due(now + timedelta(seconds=5), 10, timedelta(seconds=60))
    assert [u for u, _ in taken] == ["u-1"]


# --- Redis only ----------------------------------------------------------------------------
@pytest.mark.redis
async def test_every_redis_key_has_a_ttl_or_a_reason(clean_redis: str, clock: FixedClock) -> None:
    """keys.py documents which keys live without a TTL; every other key must expire."""
    from gateway.store.redis import RedisStore

    store = RedisStore(clean_redis)
    now = clock.now()
    try:
        await store.prepare()
        await store.upsert_user("u-1", {"phone": "+8613800138000", "tags": ("vip",)}, now, DAY)
        mid = mid_for(store)
        await decide(store, "u-1", record(mid, clock), IdemKey("order", "r-1", FP_A))
        await store.read_users([UserRead("u-1", IdemKey("order", "r-1", FP_A))], DAY)
        await store.add_events(mid, [TimelineEntry(now, "sent")], Current("sent", Outcome.ACCEPTED), DAY)
        await store.record_interaction("u-1", Interaction(InteractionKind.FOLLOW, now), 5, DAY)
        await store.set_opt_out("u-1", OptOut(Category.MARKETING, None, now), True, DAY)
        switch = KillSwitch("ks_1", ScopeKind.GLOBAL, "", "r", "a", now)
        await store.put_kill_switch(switch, AuditEntry(now, "set", "a", switch))
        await hold(store, clock, "u-1", now + DAY)
    finally:
        await store.close()
    client = redis.Redis.from_url(clean_redis)
    without_ttl = sorted(k.decode().replace(store.tag_of("u-1"), "T") for k in client.scan_iter() if client.pttl(k) < 0)
    assert without_ttl == [
        "herald:ks", "herald:ks:audit", "herald:meta", "herald:{T}:due", "herald:{T}:tg:vip", "herald:{T}:users"
    ]  # fmt: skip
    tag = store.tag_of("u-1")
    shard_keys = sorted(k.decode().split("}:")[1] for k in client.scan_iter(f"*{{{tag}}}*"))
    # Everything of the user and their messages shares the user's shard tag (one slot).
    assert shard_keys == sorted(
        ["due", "idem:order:r-1", f"m:{mid}", f"m:{mid}:ev", f"m:{mid}:st", "tg:vip", "u:u-1", "um:u-1", "users"]
    )


@pytest.mark.redis
async def test_a_store_laid_out_in_other_shards_refuses_to_start(clean_redis: str) -> None:
    from gateway.errors import FailedPrecondition
    from gateway.store.redis import RedisStore

    first, second = RedisStore(clean_redis, shards=16), RedisStore(clean_redis, shards=32)
    try:
        await first.prepare()
        with pytest.raises(FailedPrecondition) as info:
            await second.prepare()
        assert "HERALD_REDIS_SHARDS=16" in str(info.value)
    finally:
        await first.close()
        await second.close()


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
    granted = [await store.take_tokens("wechat", 10.0, 3, 1, now) for _ in range(4)]
    assert granted[:3] == [(1, 0.0)] * 3
    assert granted[3][0] == 0 and granted[3][1] == pytest.approx(0.1, abs=0.002)
    # 0.25 s later two and a half tokens came back: two are granted, the third waits.
    later = now + timedelta(milliseconds=250)
    assert [(await store.take_tokens("wechat", 10.0, 3, 1, later))[0] for _ in range(3)] == [1, 1, 0]
    assert await store.take_tokens("other", 10.0, 3, 1, later) == (1, 0.0)


async def test_token_bucket_grants_several_at_once_up_to_what_is_there(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    assert await store.take_tokens("sms", 100.0, 10, 4, now) == (4, 0.0)
    assert await store.take_tokens("sms", 100.0, 10, 8, now) == (6, 0.0)  # what was left
    granted, wait = await store.take_tokens("sms", 100.0, 10, 8, now)
    assert granted == 0 and wait == pytest.approx(0.01, abs=0.002)
    # 55 ms later 5.5 tokens came back: 5 whole ones.
    assert await store.take_tokens("sms", 100.0, 10, 8, now + timedelta(milliseconds=55)) == (5, 0.0)


async def test_outcome_window_counts_the_last_sends(store: Store) -> None:
    """Auto-stop's window: the last ``last`` outcomes of a campaign, and how many bad."""
    day = timedelta(days=7)
    seen = [await store.record_outcome("campaign:d11{x}", bad, 4, day) for bad in (True, False, True, False)]
    assert seen == [(1, 1), (2, 1), (3, 2), (4, 2)]
    # Full: each new outcome pushes the oldest out.
    assert await store.record_outcome("campaign:d11{x}", False, 4, day) == (4, 1)  # a bad one left
    assert await store.record_outcome("campaign:d11{x}", False, 4, day) == (4, 1)  # a good one left
    assert await store.record_outcome("campaign:d11{x}", True, 4, day) == (4, 1)  # a bad one left, one came
    assert await store.record_outcome("other", True, 4, day) == (1, 1)  # windows are apart
    # A window whose size changed in policy starts again.
    assert await store.record_outcome("campaign:d11{x}", True, 10, day) == (1, 1)


async def test_tags_and_attributes_round_trip(store: Store, clock: FixedClock) -> None:
    now = clock.now()
    patch = {"tags": ("mom_baby", "store_hz_xihu", "秒杀"), "attributes": {"province": "浙江", "vip_level": "gold"}}
    profile = await store.upsert_user("u-t", patch, now, timedelta(days=30))
    assert profile.tags == ("mom_baby", "store_hz_xihu", "秒杀")
    assert profile.attributes == {"province": "浙江", "vip_level": "gold"}
    # Other sections leave them alone; naming them replaces them.
    await store.upsert_user("u-t", {"phone": "+8613900001111"}, now, timedelta(days=30))
    again = await store.upsert_user("u-t", {"tags": ("mom_baby",), "attributes": {}}, now, timedelta(days=30))
    assert again.tags == ("mom_baby",) and again.attributes == {} and again.phone == "+8613900001111"


async def scan_all(store: Store, label: str | None = None, count: int = 7) -> list[str]:
    seen: list[str] = []
    for shard in range(store.shards):
        cursor = "0"
        while True:
            cursor, found = await store.scan_users(shard, cursor, count, label)
            seen += found
            if cursor == "0":
                break
    return seen


async def test_the_audience_index_lists_users_and_each_tags_users(store: Store, clock: FixedClock) -> None:
    now, life = clock.now(), timedelta(days=30)
    for n in range(40):
        tags = ("mom_baby",) if n % 4 == 0 else ()
        await store.upsert_user(f"u-{n}", {"phone": "+8613900001111", "tags": tags}, now, life)
    assert sorted(set(await scan_all(store))) == sorted(f"u-{n}" for n in range(40))
    assert sorted(set(await scan_all(store, "mom_baby"))) == sorted(f"u-{n}" for n in range(0, 40, 4))
    assert await scan_all(store, "nobody-has-this") == []
    assert await store.index_size() == 40 and await store.index_size("mom_baby") == 10
    # A tag taken away stays indexed until a scan's reader forgets it.
    await store.upsert_user("u-0", {"tags": ()}, now, life)
    assert "u-0" in await scan_all(store, "mom_baby")
    await store.forget_users(shard_of("u-0", store.shards), ["u-0"], "mom_baby")
    assert "u-0" not in await scan_all(store, "mom_baby")
    assert await store.index_size("mom_baby") == 9


async def test_replace_tags_is_a_compare_and_set(store: Store, clock: FixedClock) -> None:
    now, life = clock.now(), timedelta(days=30)
    assert await store.replace_tags("ghost", (), ("vip",), now, life) == (False, None)
    await add_user(store, clock)  # no tags section written at all: expected ()
    done, profile = await store.replace_tags("u-1", (), ("qr:store_hz_01", "秒杀"), now, life)
    assert done and profile is not None and profile.tags == ("qr:store_hz_01", "秒杀")
    assert "u-1" in await scan_all(store, "qr:store_hz_01") and "u-1" in await scan_all(store, "秒杀")
    # Someone else wrote the tags since they were read: nothing written, the tags as they are.
    done, profile = await store.replace_tags("u-1", (), ("other",), now, life)
    assert not done and profile is not None and profile.tags == ("qr:store_hz_01", "秒杀")
    assert await scan_all(store, "other") == []
    done, profile = await store.replace_tags("u-1", profile.tags, (*profile.tags, "vip"), now, life)
    assert done and profile is not None and profile.tags == ("qr:store_hz_01", "秒杀", "vip")
    assert profile.phone == "+8613800138000"
    # An explicitly empty section is expected as ().
    await store.upsert_user("u-1", {"tags": ()}, now, life)
    assert (await store.replace_tags("u-1", (), ("vip",), now, life))[0]
