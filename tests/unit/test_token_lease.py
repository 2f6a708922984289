"""A provider's rate-limit tokens in one process: spent from the lease without a store
call, and when the lease is empty handed out in line by lane, basic first, so that a
campaign held back by a provider's rate never holds back an order notice."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.delivery.providers import TokenLease
from gateway.errors import StoreUnavailable
from gateway.values.domain import Category


class Store:
    """The shared bucket: each refill waits for the test to grant tokens."""

    def __init__(self) -> None:
        self.grants: asyncio.Queue[int | Exception] = asyncio.Queue()
        self.calls = 0

    async def refill(self) -> tuple[int, float]:
        self.calls += 1
        granted = await self.grants.get()
        if isinstance(granted, Exception):
            raise granted
        return granted, 0.001


async def test_tokens_of_the_lease_are_spent_without_the_store() -> None:
    lease, store = TokenLease(), Store()
    lease.keep(3, time.monotonic())
    assert [await lease.take(Category.MARKETING, store.refill) for _ in range(3)] == [False] * 3
    assert store.calls == 0


async def test_a_basic_send_gets_the_next_token_before_the_marketing_waiting() -> None:
    lease, store = TokenLease(), Store()
    order: list[str] = []

    async def send(name: str, lane: Category) -> None:
        assert await lease.take(lane, store.refill)  # waited
        order.append(name)

    sends = [asyncio.create_task(send(f"m{i}", Category.MARKETING)) for i in range(5)]
    await asyncio.sleep(0.01)  # the campaign's sends wait for the bucket
    sends.append(asyncio.create_task(send("b", Category.BASIC)))
    sends.append(asyncio.create_task(send("r", Category.REMINDER)))
    await asyncio.sleep(0.01)
    store.grants.put_nowait(2)
    await asyncio.sleep(0.01)
    assert order == ["b", "r"]
    for _ in range(5):
        store.grants.put_nowait(1)
    await asyncio.gather(*sends)
    assert order == ["b", "r", "m0", "m1", "m2", "m3", "m4"]
    assert store.calls == 6  # one refill at a time, not one a waiting send


async def test_a_cancelled_send_leaves_its_token_to_the_next() -> None:
    lease, store = TokenLease(), Store()
    first = asyncio.create_task(lease.take(Category.MARKETING, store.refill))
    second = asyncio.create_task(lease.take(Category.MARKETING, store.refill))
    await asyncio.sleep(0.01)
    first.cancel()
    store.grants.put_nowait(1)
    assert await asyncio.wait_for(second, 1) is True
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_store_error_reaches_every_waiting_send() -> None:
    lease, store = TokenLease(), Store()
    sends = [asyncio.create_task(lease.take(lane, store.refill)) for lane in (Category.BASIC, Category.MARKETING)]
    await asyncio.sleep(0.01)
    store.grants.put_nowait(StoreUnavailable("Redis does not answer"))
    for send in sends:
        with pytest.raises(StoreUnavailable):
            await send
    store.grants.put_nowait(1)  # the store is back: the next send refills again
    assert await asyncio.wait_for(lease.take(Category.BASIC, store.refill), 1) is True
