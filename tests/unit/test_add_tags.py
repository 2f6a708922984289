"""Users.add_tags: a set union under the profile's tag limit, never losing a tag that
another writer added between the read and the write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.clock import FixedClock
from gateway.core.users import Users
from gateway.errors import Unavailable
from gateway.metrics import fresh_metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.memory import MemoryStore
from gateway.values.profiles import MAX_TAGS, UserProfile
from tests.conftest import POLICIES

NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)


class Racing(MemoryStore):
    """A store where another writer sets the tags just before each of our writes."""

    def __init__(self, clock: FixedClock, rounds: int) -> None:
        super().__init__(clock)
        self.rounds = rounds

    async def replace_tags(
        self, user_id: str, expected: tuple[str, ...], tags: tuple[str, ...], now: datetime, ttl: timedelta
    ) -> tuple[bool, UserProfile | None]:
        if self.rounds:
            self.rounds -= 1
            await self.upsert_user(user_id, {"tags": (f"other{self.rounds}",)}, now, ttl)
        return await super().replace_tags(user_id, expected, tags, now, ttl)


async def users_on(store: MemoryStore, tags: tuple[str, ...] = ()) -> tuple[Users, UserProfile]:
    users = Users(store, PolicyHolder(POLICIES, fresh_metrics()), FixedClock(NOW))
    return users, await users.upsert("u-1", {"phone": "+8613800138000", "tags": tags})


async def test_tags_are_added_as_a_set() -> None:
    users, profile = await users_on(MemoryStore(FixedClock(NOW)), ("vip",))
    profile, added = await users.add_tags(profile, ["qr:store_1", "vip", "qr:store_1", "秒杀"])
    assert added == ("qr:store_1", "秒杀")
    assert profile.tags == ("qr:store_1", "vip", "秒杀")
    assert await users.add_tags(profile, ["vip"]) == (profile, ())


async def test_no_more_than_the_profile_limit() -> None:
    users, profile = await users_on(MemoryStore(FixedClock(NOW)), tuple(f"t{n:03d}" for n in range(MAX_TAGS - 1)))
    profile, added = await users.add_tags(profile, ["a", "b", "c"])
    assert added == ("a",) and len(profile.tags) == MAX_TAGS
    assert (await users.add_tags(profile, ["d"]))[1] == ()


async def test_a_concurrent_write_is_added_to_not_overwritten() -> None:
    users, profile = await users_on(Racing(FixedClock(NOW), rounds=2))
    profile, added = await users.add_tags(profile, ["qr:store_1"])
    assert added == ("qr:store_1",)
    assert profile.tags == ("other0", "qr:store_1")


async def test_gives_up_when_the_tags_keep_changing() -> None:
    users, profile = await users_on(Racing(FixedClock(NOW), rounds=100))
    with pytest.raises(Unavailable):
        await users.add_tags(profile, ["qr:store_1"])
