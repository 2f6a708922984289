"""Runs started campaigns: scans each shard's user index, turns every user of the
audience into a claim through the normal arbitration, and keeps where it stands.

Every gateway process runs a runner. A shard's scan is leased (one process a shard at
a time; a process that dies loses its lease and another one goes on), and its cursor
is saved after each chunk together with the chunk's counters. A chunk interrupted at
any instant is scanned again: its users' claims carry the request id
``cmp:<campaign>:<user hash>``, so each user gets one decision whatever happens, and
the counters were not saved, so they count once too.

An audience that requires one of a few tags is read from those tags' indexes only
(one step of the scan a tag: a user carrying two of them is decided under the first);
otherwise every user of the shard is read. An index entry whose user lost the tag or
is gone is taken out as it is met.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from datetime import timedelta

import msgspec

from gateway.clock import Clock
from gateway.core.audience import Audience
from gateway.core.campaigns import Campaigns, audience_of
from gateway.core.pipeline import PushPipeline
from gateway.core.profile_rules import compute_tier
from gateway.errors import HeraldError
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Store
from gateway.values.campaigns import HOLDOUT, Campaign, CampaignState, ShardProgress, request_id_of
from gateway.values.claims import PushInput
from gateway.values.profiles import UserProfile

log = get_logger(__name__)
LEASE = timedelta(seconds=30)
CHUNK = 500
# A chunk that fails this many times in a row (not for an unreachable store) is
# skipped, its users counted as errors: one poisoned user must not stop a campaign.
MAX_CHUNK_FAILURES = 5


def _step(cursor: str) -> tuple[int, str]:
    step, _, scan = cursor.partition(":")
    return (int(step), scan or "0") if cursor != "0" else (0, "0")


class CampaignRunner:
    def __init__(
        self,
        store: Store,
        pipeline: PushPipeline,
        campaigns: Campaigns,
        policies: PolicyHolder,
        clock: Clock,
        metrics: Metrics,
        *,
        interval: float = 0.5,
        chunk: int = CHUNK,
        concurrency: int = 2,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._campaigns = campaigns
        self._policies = policies
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._chunk_size = chunk
        self._concurrency = concurrency
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._busy: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()  # a scan finished its shard
        self._ticking = asyncio.Lock()

    async def tick(self) -> None:
        """Start a scan task for each shard of a running campaign nobody scans. One tick
        at a time: two at once could both lease a shard (the lease is this process's)
        before either marks it busy, and scan it twice."""
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        now = self._clock.now()
        for campaign in await self._store.running_campaigns():
            if campaign.start_at is not None and campaign.start_at > now:
                continue
            progress = await self._store.campaign_progress(campaign.campaign_id)
            if all(p.done for p in progress):
                if await self._campaigns.complete(campaign) is not None:
                    log.info("campaign_completed", campaign_id=campaign.campaign_id)
                continue
            for shard in random.sample(range(self._store.shards), self._store.shards):
                if len(self._tasks) >= self._concurrency:
                    return
                if progress[shard].done or (campaign.campaign_id, shard) in self._busy:
                    continue
                leased = await self._store.lease_campaign_shard(
                    campaign.campaign_id, shard, self.owner, LEASE, self._clock.now()
                )
                if leased is None:
                    continue  # another process scans it
                self._start(campaign, leased)

    def _start(self, campaign: Campaign, progress: ShardProgress) -> None:
        key = (campaign.campaign_id, progress.shard)
        self._busy.add(key)
        task = asyncio.create_task(self._scan(campaign, progress), name=f"campaign:{key[0]}:{key[1]}")
        self._tasks.add(task)

        def ended(_: asyncio.Task[bool]) -> None:
            self._tasks.discard(task)
            self._busy.discard(key)
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                log.error("campaign_scan_crashed", campaign_id=key[0], shard=key[1], error=repr(error))
            elif task.result():
                self._freed.set()  # the shard is done: the next tick need not wait

        task.add_done_callback(ended)

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick every ``interval``, and at once when a scan has finished its shard: its
        slot goes to the next shard without waiting out the interval."""
        self._stopping = stopping
        while not stopping.is_set():
            self._freed.clear()
            try:
                await self.tick()
            except HeraldError as exc:
                log.warning("loop_step_failed", loop="campaigns", error=exc.message)
            waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._freed.wait())]
            _, pending = await asyncio.wait(waits, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED)
            for wait in pending:
                wait.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def drain(self) -> None:
        """Wait for the scans under way (tests, and a quiet shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # --- one shard ---------------------------------------------------------------------
    async def _scan(self, campaign: Campaign, progress: ShardProgress) -> bool:
        """Scan the shard chunk by chunk while the lease holds; whether it is done."""
        cid = campaign.campaign_id
        policy = self._policies.current
        try:
            audience = audience_of(campaign.audience, policy)
        except HeraldError as exc:
            log.error("campaign_audience_invalid", campaign_id=cid, error=exc.message)
            return False
        plan = audience.index_tags()
        steps: Sequence[str | None] = plan if plan else (None,)
        failures = 0
        while not progress.done and not self._stopping.is_set():
            try:
                [current] = await self._store.get_campaigns([cid])
                if current is None or current.state is not CampaignState.RUNNING:
                    log.info("campaign_scan_stopped", campaign_id=cid, shard=progress.shard)
                    return False
                progress = await self._chunk(current, audience, steps, progress)
                failures = 0
            except _LeaseLost:
                log.warning("campaign_lease_lost", campaign_id=cid, shard=progress.shard)
                return False
            except HeraldError as exc:
                failures += 1
                log.warning("campaign_chunk_failed", campaign_id=cid, shard=progress.shard, error=exc.message)
                if failures >= MAX_CHUNK_FAILURES:
                    return False  # the lease runs out; this or another process tries again
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))
                try:
                    if not await self._renew(cid, progress):
                        return False
                except HeraldError:
                    continue
        return progress.done

    async def _renew(self, campaign_id: str, progress: ShardProgress) -> bool:
        return await self._store.save_campaign_shard(campaign_id, self.owner, progress, LEASE, self._clock.now())

    async def _chunk(
        self, campaign: Campaign, audience: Audience, steps: Sequence[str | None], progress: ShardProgress
    ) -> ShardProgress:
        step, scan = _step(progress.cursor)
        label = steps[step]
        after, users = await self._store.scan_users(progress.shard, scan, self._chunk_size, label)
        now = self._clock.now()
        policy = self._policies.current
        earlier = frozenset(t for t in steps[:step] if t is not None)
        stale: list[str] = []

        def admit(user_id: str, profile: UserProfile | None) -> bool:
            if profile is None:
                stale.append(user_id)
                return False
            if label is not None and label not in profile.tags:
                stale.append(user_id)
                return False
            if earlier and not earlier.isdisjoint(profile.tags):
                return False  # decided under an earlier tag's step
            return audience.matches(profile, compute_tier(profile.rfm, policy.tiers, now), now)

        requests = [self._request(campaign, user_id) for user_id in dict.fromkeys(users)]
        results = await self._pipeline.push_audience(campaign.bu, requests, admit) if requests else []
        failed = [r for r in results if isinstance(r, HeraldError)]
        if failed:
            raise failed[0]
        matched = [r for r in results if r is not None]
        holdout = sum(1 for q, r in zip(requests, results, strict=True) if r is not None and q.variant == HOLDOUT)
        if stale:
            await self._store.forget_users(progress.shard, stale, label)
        if after == "0":
            step, after = step + 1, "0"
        done = step >= len(steps)
        moved = msgspec.structs.replace(
            progress,
            cursor="0" if done else f"{step}:{after}",
            done=done,
            scanned=progress.scanned + len(users),
            matched=progress.matched + len(matched),
            holdout=progress.holdout + holdout,
        )
        if not await self._renew(campaign.campaign_id, moved):
            raise _LeaseLost
        self._metrics.campaign_users.labels("scanned").inc(len(users))
        self._metrics.campaign_users.labels("targeted").inc(len(matched))
        return moved

    @staticmethod
    def _request(campaign: Campaign, user_id: str) -> PushInput:
        share = campaign.share_of(user_id)
        variant = campaign.variant(share) or campaign.variants[0]
        return PushInput(
            request_id=request_id_of(campaign.campaign_id, user_id),
            user_id=user_id,
            scenario=campaign.scenario,
            params=dict(variant.params),
            content=variant.content,
            campaign_id=campaign.campaign_id,
            dedup_key=f"campaign:{campaign.campaign_id}",
            deadline=campaign.deadline,
            priority=campaign.priority,
            variant=share,
        )


class _LeaseLost(Exception):
    pass
