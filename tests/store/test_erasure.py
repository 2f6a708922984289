"""Erasing a user (a privacy request), on memory, Redis and a Redis Cluster: every key of
the user goes, and nobody else's."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
import redis

from gateway.clock import FixedClock
from gateway.store import keys
from gateway.store.base import (
    Change,
    Committed,
    Erasure,
    IdemKey,
    IndexCursor,
    NewMessage,
    Store,
    UserRead,
    message_links,
)
from gateway.values.domain import Category, Channel, Outcome
from gateway.values.profiles import OptOut, WeChat
from gateway.values.records import Current, TimelineEntry
from gateway.values.state import Hold, UserState, apply_mutations
from tests.store.test_contract import DAY, FP_A, KEEP, LIFE, answer_of, mid_for, record, scan_all

USER = "alice-7"
OTHER = "bob-8"
OPENID = "oAlice00000000000000000000007"
PHONE = "+8613912345678"


async def held_by(store: Store, clock: FixedClock, user: str) -> list[str]:
    """A user with a profile, opt-out, tags, openid, two messages (one held, one delivered
    by WeChat and clicked), their answers and request marks: their message ids."""
    now = clock.now()
    openid = OPENID if user == USER else OPENID.replace("Alice", "Bob00")
    profile = {"phone": PHONE, "wechat": WeChat(openid, following=True), "tags": ("vip", "mom_baby")}
    await store.upsert_user(user, profile, now, DAY)
    await store.shared_put(keys.openid_index(openid), user, DAY)
    await store.set_opt_out(user, OptOut(Category.MARKETING, None, now), True, DAY)
    ids = []
    for n, outcome in enumerate((Outcome.ACCEPTED, Outcome.SCHEDULED)):
        mid = mid_for(store, user)
        ids.append(mid)
        rec = record(mid, clock, user_id=user, request_id=f"r-{user}-{n}", outcome=outcome)
        idem = IdemKey("order", rec.request_id, FP_A)
        [view] = await store.read_users([UserRead(user, idem)], DAY)  # marks the request id
        state: UserState | None = None
        due = None
        if outcome is Outcome.SCHEDULED:
            due = now + timedelta(hours=1)
            state = apply_mutations(view.state, [Hold(mid, due)], now, KEEP)
        change = Change(user, view.state.version, state, (NewMessage(rec, idem, answer_of(rec)),), due=due)
        assert await store.commit([change], LIFE) == [Committed.OK]
    delivered = TimelineEntry(now, "delivered", Channel.WECHAT_TEMPLATE, "0", f"sent (id 7788{user[-1]})")
    await store.add_events(ids[0], [delivered], Current("delivered", Outcome.ACCEPTED), DAY)
    [first] = await store.get_messages([ids[0]])
    assert first is not None
    for name, value in message_links(first):
        await store.shared_put(name, value or now.isoformat(), DAY)
    return ids


async def test_deleting_a_user_erases_their_keys_and_says_what_went(store: Store, clock: FixedClock) -> None:
    mine = await held_by(store, clock, USER)
    theirs = await held_by(store, clock, OTHER)
    erased = await store.delete_user(USER)
    assert erased == Erasure(
        profile=1,
        audience_indexes=3,  # all users, vip, mom_baby
        openid_index=1,
        message_index=1,
        messages=2,
        answers=4,  # two answers, two request-id marks
        due_index=1,
        message_links=2,  # the click, WeChat's msgid
    )
    assert erased.total() == 15
    assert all(type(count) is int for count in msgspec.structs.astuple(erased))  # counts, as the API sends them
    assert await store.get_user(USER) is None
    [view] = await store.read_users([UserRead(USER, IdemKey("order", f"r-{USER}-0", FP_A))], DAY)
    assert view.state == UserState() and view.answer is None
    assert await store.get_messages(mine) == [None, None]
    assert await store.user_messages(USER, IndexCursor(), None, 10) == []
    for label in (None, "vip", "mom_baby"):
        assert USER not in await scan_all(store, label) and OTHER in await scan_all(store, label)
    assert await store.shared_get(keys.openid_index(OPENID)) is None
    assert [u for u, _ in await store.take_due(clock.now() + DAY, 10, timedelta(seconds=5))] == [OTHER]
    # Nobody else's: the other user is whole.
    assert await store.get_user(OTHER) is not None
    assert None not in await store.get_messages(theirs)
    assert len(await store.user_messages(OTHER, IndexCursor(), None, 10)) == 2
    # Again: nothing left to remove.
    assert await store.delete_user(USER) == Erasure()


async def test_an_openid_that_moved_to_another_user_is_left_alone(store: Store, clock: FixedClock) -> None:
    await store.upsert_user(USER, {"wechat": WeChat(OPENID)}, clock.now(), DAY)
    await store.shared_put(keys.openid_index(OPENID), OTHER, DAY)  # rebound to someone else since
    assert (await store.delete_user(USER)).openid_index == 0
    assert await store.shared_get(keys.openid_index(OPENID)) == OTHER


async def test_messages_of_a_user_without_a_profile_are_erased_too(store: Store, clock: FixedClock) -> None:
    mid = mid_for(store, USER)
    rec = record(mid, clock, user_id=USER, outcome=Outcome.SUPPRESSED)
    await store.commit([Change(USER, 0, None, (NewMessage(rec, None, None),))], LIFE)
    erased = await store.delete_user(USER)
    assert (erased.profile, erased.messages, erased.message_index) == (0, 1, 1)
    assert await store.get_messages([mid]) == [None]


@pytest.mark.redis
async def test_an_erased_user_leaves_nothing_in_redis(clean_redis: str, clock: FixedClock) -> None:
    """Every key and every value Redis holds, read back: the user's id, openid and phone
    are in none of them (the other user's are, so the reading sees them)."""
    from gateway.store.redis import RedisStore

    store = RedisStore(clean_redis)
    try:
        await store.prepare()
        await held_by(store, clock, USER)
        await held_by(store, clock, OTHER)
        await store.delete_user(USER)
    finally:
        await store.close()
    dump = "\n".join(everything(redis.Redis.from_url(clean_redis)))
    assert OTHER in dump and "13912345678" in dump  # the other user's phone is the same
    for personal in (USER, OPENID):
        assert personal not in dump


def everything(client: redis.Redis) -> list[str]:
    out = []
    for raw in client.scan_iter():
        key = raw.decode()
        kind = client.type(raw).decode()
        if kind == "string":
            value: object = client.get(raw)
        elif kind == "hash":
            value = client.hgetall(raw)
        elif kind == "set":
            value = client.smembers(raw)
        elif kind == "zset":
            value = client.zrange(raw, 0, -1)
        elif kind == "stream":
            value = client.xrange(raw)
        else:
            value = client.lrange(raw, 0, -1)
        out.append(f"{key} {value!r}")
    return out


def test_a_wechat_msgid_is_read_back_as_delivery_writes_it(clock: FixedClock) -> None:
    """The erasure finds WeChat's msgid -> message link through the delivery's timeline."""
    from channels.base import SendResult, SendStatus
    from gateway.delivery.walk import _with_id

    detail = _with_id(SendResult(SendStatus.DELIVERED, "0", "ok", provider_id="2417852193"))
    rec = record(
        "m_1",
        clock,
        user_id=USER,
        timeline=(TimelineEntry(clock.now(), "delivered", Channel.WECHAT_TEMPLATE, "0", detail),),
    )
    assert message_links(rec) == [(keys.clicked("m_1"), None), (keys.wechat_message("2417852193"), f"m_1 {USER}")]
    sms = record("m_2", clock, timeline=(TimelineEntry(clock.now(), "delivered", Channel.SMS, "0", detail),))
    assert message_links(sms) == [(keys.clicked("m_2"), None)]
